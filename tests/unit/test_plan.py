"""The planner as a table of machines and models: recorded readings (or `--assume`
specs) and real model configs with their safetensors headers (tests/fixtures/models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl import config
from llmctl.errors import PlanError
from llmctl.gpu import GIB, Gpu, GpuProcess, Readings, assumed
from llmctl.hub import facts
from llmctl.plan import (
    BLOCK,
    CUDA_CONTEXT,
    CUDA_GRAPHS_BASE,
    CUDA_GRAPHS_PER_LAYER,
    NON_TORCH,
    plan,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
DEEPSEEK = facts(FIXTURES / "deepseek-coder-33B-instruct-AWQ")
MISTRAL = facts(FIXTURES / "Mistral-7B-Instruct-v0.2-AWQ")
SMOL = facts(FIXTURES / "SmolLM2-135M-Instruct")
COMPOSE = {"coder": DEEPSEEK, "general": MISTRAL}


def cpu(ram_gib=24, avail_gib=22, cores=(0, 1)):
    return Readings((), ram_gib * GIB, avail_gib * GIB, cores)


def compose(**memory) -> config.Config:
    """The old docker-compose stack's two models, as llmctl's GPU defaults are."""
    models = {
        "coder": {"name": "deepseek-coder-33b-instruct", "port": 8000, "max_model_len": 4096,
                  "max_num_seqs": 64, "source": "TheBloke/deepseek-coder-33B-instruct-AWQ"},
        "general": {"name": "mistral-7b-instruct", "port": 8001, "max_model_len": 4096,
                    "max_num_seqs": 128, "source": "TheBloke/Mistral-7B-Instruct-v0.2-AWQ"}}
    for k, v in memory.items():
        models[k]["memory"] = v
    return config.parse({"engine": {"device": "cuda"}, "models": models})


# ── facts ──

def test_facts_come_from_config_json_and_the_safetensors_headers():
    # The published file sizes: 18.01 GB and 4.15 GB (AWQ), 269 MB (the bf16 demo).
    assert round(DEEPSEEK.weight_bytes / 1e9, 2) == 18.01
    assert round(MISTRAL.weight_bytes / 1e9, 2) == 4.15
    assert round(SMOL.weight_bytes / 1e6) == 269
    assert (DEEPSEEK.layers, DEEPSEEK.kv_heads, DEEPSEEK.head_dim) == (62, 8, 128)
    assert DEEPSEEK.quant_text == "awq 4-bit g128" and SMOL.quant_text == "bfloat16"
    # 2 × layers × KV heads × head_dim × 2 bytes; the demo's is what vLLM CPU divides by.
    assert DEEPSEEK.kv_bytes_per_token() == 253_952
    assert SMOL.kv_bytes_per_token() == 23_040
    assert DEEPSEEK.kv_bytes_per_token(tp=2) == 126_976
    assert SMOL.kv_bytes_per_token(tp=4) == 2 * 30 * 1 * 64 * 2  # KV heads replicated, not 0


# ── the old compose stack on one 96 GB card ──

def test_the_compose_stack_fits_one_96_gib_card_with_more_kv_than_the_hand_split():
    card = assumed("1x96GiB")
    auto = plan(compose(), card, COMPOSE)
    # The old hand-tuned split, through the same arithmetic (fractions set by hand).
    old = plan(compose(coder=0.45, general=0.40), card, COMPOSE)
    print(f"\ncompose stack, 1x96GiB: old 0.45/0.40 → coder {old['coder'].kv_tokens:,} / "
          f"general {old['general'].kv_tokens:,} KV tokens; llmctl "
          f"{auto['coder'].gpu_memory_utilization}/{auto['general'].gpu_memory_utilization} → "
          f"{auto['coder'].kv_tokens:,} / {auto['general'].kv_tokens:,}")
    for k in ("coder", "general"):
        assert auto[k].kv_tokens >= old[k].kv_tokens, k
        assert auto[k].devices == (0,) and auto[k].tensor_parallel == 1
        assert auto[k].kv_tokens % BLOCK == 0
    assert old["coder"].gpu_memory_utilization == 0.45
    # Both budgets, their CUDA contexts and the headroom fit in the card.
    c = auto.cards[0]
    assert c.planned + c.headroom <= c.gpu.free_bytes
    # The rule: the KV pool is shared in proportion to each model's KV demand.
    demand = {k: m.max_num_seqs * m.max_model_len * COMPOSE[k].kv_bytes_per_token()
              for k, m in ((m.key, m) for m in compose().models)}
    got = {k: auto[k].terms["kv_cache"] for k in demand}
    assert got["coder"] / got["general"] == pytest.approx(demand["coder"] / demand["general"],
                                                          rel=0.01)


def test_the_arithmetic_is_shown():
    p = plan(compose(), assumed("1x96GiB"), COMPOSE)["coder"]
    text = "\n".join(p.why)
    for needle in ("weights 16.77 GiB", "activations", "CUDA graphs", "usable",
                   "--gpu-memory-utilization", "tokens"):
        assert needle in text, needle
    assert p.terms["budget"] == pytest.approx(p.gpu_memory_utilization * 96 * GIB, abs=1)
    assert sum(v for k, v in p.terms.items() if k != "budget") <= p.terms["budget"]


# ── other machines ──

def test_24_gib_is_a_clear_error_saying_by_how_much_and_what_would_fit():
    with pytest.raises(PlanError) as e:
        plan(compose(), assumed("1x24GiB"), COMPOSE)
    msg, hint = e.value.message, e.value.hint
    assert msg.startswith("general does not fit") and "short by" in msg and "beside coder" in msg
    assert "--assume 2x24GiB" in hint


def test_24_gib_with_one_model_fits_with_a_smaller_kv_cache():
    cfg = config.parse({"engine": {"device": "cuda"}, "models": {"coder": {
        "name": "c", "source": "x/y", "port": 9000, "max_model_len": 4096, "max_num_seqs": 64}}})
    p = plan(cfg, assumed("1x24GiB"), {"coder": DEEPSEEK})["coder"]
    assert 4096 <= p.kv_tokens < 64 * 4096  # at least one full sequence, not all 64
    assert p.gpu_memory_utilization <= 0.98


def test_a_model_too_big_for_its_max_model_len_names_one_that_fits():
    cfg = config.parse({"engine": {"device": "cuda"}, "models": {"coder": {
        "name": "c", "source": "x/y", "port": 9000, "max_model_len": 65536, "max_num_seqs": 1}}})
    with pytest.raises(PlanError) as e:
        plan(cfg, assumed("1x24GiB"), {"coder": DEEPSEEK})
    assert "max_model_len = " in e.value.hint


def test_two_cards_one_model_each():
    p = plan(compose(), assumed("2x24GiB"), COMPOSE)
    assert p["coder"].devices != p["general"].devices
    assert {p["coder"].devices, p["general"].devices} == {(0,), (1,)}
    assert p["coder"].kv_tokens >= 4096 and p["general"].kv_tokens >= 4096


def test_a_model_too_big_for_one_card_gets_tensor_parallelism():
    cfg = config.parse({"engine": {"device": "cuda"}, "models": {"coder": {
        "name": "c", "source": "x/y", "port": 9000, "max_model_len": 4096, "max_num_seqs": 64}}})
    p = plan(cfg, assumed("2x16GiB"), {"coder": DEEPSEEK})["coder"]
    assert p.tensor_parallel == 2 and p.devices == (0, 1)
    assert p.kv_bytes_per_token == DEEPSEEK.kv_bytes_per_token(2)
    assert p.terms["weights"] == -(-DEEPSEEK.weight_bytes // 2)


def test_another_process_on_the_card_is_shown_and_accounted_for():
    busy = plan(compose(), assumed("80GiB:used=10GiB"), COMPOSE)
    idle = plan(compose(), assumed("80GiB"), COMPOSE)
    assert any("other processes hold 10.00 GiB" in n for n in busy.notes)
    assert busy.cards[0].others == 10 * GIB
    assert busy.cards[0].planned + busy.cards[0].headroom <= 70 * GIB
    for k in ("coder", "general"):
        assert busy[k].kv_tokens < idle[k].kv_tokens


def test_recorded_nvml_readings_of_a_busy_h100():
    g = Gpu(0, "NVIDIA H100 80GB HBM3", 85_520_809_984, 72_000_000_000, uuid="GPU-1",
            used_bytes=13_520_809_984, compute_capability="9.0",
            processes=(GpuProcess(4242, "python3", 13_000_000_000),))
    p = plan(compose(), Readings((g,), 0, 0, tuple(range(16)), "550.54.15", "12.4"), COMPOSE)
    assert p["coder"].max_num_batched_tokens == 8192  # vLLM's default on an H100
    assert p.cards[0].planned + p.cards[0].headroom <= g.free_bytes
    assert "python3 (pid 4242)" in p.notes[0]


def test_fractions_set_by_hand_are_kept_and_checked():
    p = plan(compose(coder=0.45), assumed("1x96GiB"), COMPOSE)
    assert p["coder"].gpu_memory_utilization == 0.45
    assert p["general"].gpu_memory_utilization <= 1 - 0.45
    with pytest.raises(PlanError, match="less than one 4096-token sequence"):
        plan(compose(coder=0.18), assumed("1x96GiB"), COMPOSE)  # 17.3 GiB: weights barely
    with pytest.raises(PlanError, match="does not fit"):
        plan(compose(coder=0.6, general=0.5), assumed("1x96GiB"), COMPOSE)


def test_unknown_facts_fall_back_to_an_even_split_and_say_so():
    p = plan(compose(), assumed("1x96GiB"), {"coder": None, "general": MISTRAL})
    assert p["coder"].gpu_memory_utilization == p["general"].gpu_memory_utilization
    assert p["coder"].kv_tokens is None and "facts unknown" in p.notes[0]


def test_cuda_without_a_gpu_is_an_error():
    with pytest.raises(PlanError, match="NVML sees no GPU"):
        plan(compose(), cpu(), COMPOSE)


# ── CPU ──

def test_cpu_demo_gets_one_core_each_and_1_gib_kv():
    cfg = config.parse({}, device="cpu")
    p = plan(cfg, cpu(), {"coder": SMOL, "general": SMOL})
    assert p["coder"].cores == (0,) and p["general"].cores == (1,)
    assert p["coder"].kv_cache_gib == 1 and p["general"].kv_cache_gib == 1
    assert p["coder"].device == "cpu"
    # What vLLM CPU logs for 1 GiB: "CPU KV cache size: 46,592 tokens" (VLLM-CPU-NOTES.md).
    assert p["coder"].kv_tokens == 46_592
    assert p["coder"].concurrency == 22.75


@pytest.mark.parametrize("cores, want", [
    ((0,), [(0,), (0,)]),
    ((0, 1, 2, 3), [(0, 1), (2, 3)]),
    ((0, 1, 2), [(0,), (1,)]),
])
def test_cpu_core_split(cores, want):
    cfg = config.parse({}, device="cpu")
    p = plan(cfg, cpu(cores=cores), {})
    assert [p["coder"].cores, p["general"].cores] == want


def test_cpu_kv_is_capped_by_free_ram_and_at_least_1():
    cfg = config.parse({"models": {"a": {"name": "a", "source": "x", "port": 9000,
                                         "max_model_len": 32768, "max_num_seqs": 256}}})
    p = plan(cfg, cpu(avail_gib=8), {"a": SMOL})
    # 8 GiB free − 2 reserve − 2 server − weights → 3 GiB cap, though it would want ~169 GiB
    assert p["a"].kv_cache_gib == 3
    p = plan(cfg, cpu(avail_gib=3), {"a": SMOL})
    assert p["a"].kv_cache_gib == 1


def test_cpu_fraction_is_of_total_ram_and_assumed_cpu_readings():
    cfg = config.parse({"models": {"a": {"name": "a", "source": "x", "port": 9000,
                                         "memory": 0.25}}})
    assert plan(cfg, cpu(ram_gib=24), {})["a"].kv_cache_gib == 6
    p = plan(config.parse({}, device="cpu"), assumed("cpu:32GiB:16"), {"coder": SMOL})
    assert len(p["coder"].cores) == 8 and p.device == "cpu"


def test_remote_models_are_not_planned():
    cfg = config.parse({"models": {"r": {"name": "r", "url": "http://127.0.0.1:1"}}})
    assert plan(cfg, cpu(), {}).backends == {}


def test_tensor_parallel_is_sized_by_the_fullest_of_its_cards():
    cfg = config.parse({"engine": {"device": "cuda"}, "models": {"coder": {
        "name": "c", "source": "x/y", "port": 9000, "max_model_len": 4096, "max_num_seqs": 64}}})
    p = plan(cfg, assumed("16GiB,16GiB:used=3GiB"), {"coder": DEEPSEEK})["coder"]
    assert p.tensor_parallel == 2
    # One utilisation for both cards: it must fit the one another process holds 3 GiB of
    # (13 GiB free, less the 0.5 GiB headroom and the 0.5 GiB CUDA context).
    assert p.gpu_memory_utilization * 16 * GIB <= 12 * GIB


def test_models_that_cannot_fit_in_ram_or_on_a_full_card_are_one_error():
    big = facts(FIXTURES / "deepseek-coder-33B-instruct-AWQ")
    with pytest.raises(PlanError, match="cannot fit in RAM"):
        plan(config.parse({}, device="cpu"), assumed("cpu:8GiB:8"), {"coder": big, "general": big})
    with pytest.raises(PlanError, match="nothing left to share"):
        plan(compose(), assumed("24GiB:used=23GiB"), {"coder": None, "general": None})


# ── groups: one member runs at a time, in the place of the largest ──

def grouped(swap: str = "restart", **extra) -> config.Config:
    raw = compose()
    models = {m.key: {"name": m.name, "source": m.source, "port": m.port,
                      "max_model_len": m.max_model_len, "max_num_seqs": m.max_num_seqs}
              for m in raw.models}
    models["coder"] |= {"group": "big", "swap": swap}
    models["general"] |= {"group": "big", "start": "on-demand", "swap": swap}
    models.update(extra)
    return config.parse({"engine": {"device": "cuda"}, "models": models})


def test_a_group_fits_where_its_members_together_do_not():
    # Both at once do not fit on 24 GiB (the test above); one at a time, they do.
    p = plan(grouped(), assumed("1x24GiB"), COMPOSE)
    coder, general = p["coder"], p["general"]
    # Sized once, by the largest member: the same budget and card for both.
    assert coder.gpu_memory_utilization == general.gpu_memory_utilization
    assert coder.devices == general.devices == (0,)
    # Mistral's smaller weights leave it more KV cache in the same budget.
    assert general.kv_tokens > coder.kv_tokens >= 4096
    c = p.cards[0]
    assert c.models == ("coder", "general")
    assert c.planned + c.headroom <= c.gpu.free_bytes  # one budget + one context, not two
    assert any("group big" in n and "the largest" in n for n in p.notes)


def test_sleeping_members_keep_their_context_and_graphs_on_the_card():
    restart = plan(grouped(), assumed("1x24GiB"), COMPOSE)
    sleep = plan(grouped("sleep"), assumed("1x24GiB"), COMPOSE)
    kept = restart["coder"].planned_bytes - sleep["coder"].planned_bytes
    # Mistral asleep keeps a CUDA context, its non-torch buffers and its CUDA graphs
    # (the budget is floored to 0.001 of the card, 24 MiB here).
    asleep = CUDA_CONTEXT + NON_TORCH + CUDA_GRAPHS_BASE + CUDA_GRAPHS_PER_LAYER * MISTRAL.layers
    assert kept == pytest.approx(asleep, abs=0.001 * 24 * GIB)
    assert sleep.cards[0].planned + sleep.cards[0].headroom <= sleep.cards[0].gpu.free_bytes
    assert "sleeping group members" in "\n".join(sleep["coder"].why)


def test_sleep_needs_cuda():
    cfg = config.parse({"engine": {"device": "cpu"}, "models": {
        "a": {"name": "a", "source": "x", "port": 9000, "group": "g", "swap": "sleep"},
        "b": {"name": "b", "source": "x", "port": 9001, "group": "g", "start": "on-demand"}}})
    with pytest.raises(PlanError, match="CPU build has no sleep mode"):
        plan(cfg, cpu(), {"a": SMOL, "b": SMOL})


def test_on_demand_models_outside_a_group_count_in_full():
    # An on-demand model may run beside the others, so it must fit beside them.
    cfg = grouped(extra={"name": "x", "source": "y/z", "port": 9002, "start": "on-demand"})
    with pytest.raises(PlanError, match="extra does not fit"):
        plan(cfg, assumed("1x24GiB"), {**COMPOSE, "extra": MISTRAL})


def test_more_places_than_cores_take_one_core_each_in_turn():
    cfg = config.parse({"engine": {"device": "cpu"}, "models": {
        k: {"name": k, "source": "x", "port": 9000 + i} for i, k in enumerate("abc")}})
    p = plan(cfg, cpu(cores=(0, 1)), {})
    assert [p[k].cores for k in "abc"] == [(0,), (1,), (0,)]


def test_cpu_group_members_share_the_cores_and_kv_of_one_place():
    cfg = config.parse({"engine": {"device": "cpu"}, "models": {
        "coder": {"name": "c", "source": "x", "port": 9000},
        "a": {"name": "a", "source": "x", "port": 9001, "group": "g", "start": "on-demand"},
        "b": {"name": "b", "source": "x", "port": 9002, "group": "g", "start": "on-demand"}}})
    p = plan(cfg, cpu(cores=(0, 1, 2, 3)), {"coder": SMOL, "a": SMOL, "b": SMOL})
    assert p["coder"].cores == (0, 1) and p["a"].cores == p["b"].cores == (2, 3)
    assert p["a"].kv_cache_gib == p["b"].kv_cache_gib and p["b"].kv_tokens == p["a"].kv_tokens
    assert list(p.backends) == ["coder", "a", "b"]  # config order
