import pytest

from llmctl import config
from llmctl.gpu import GIB, Gpu, Readings
from llmctl.hub import ModelFacts
from llmctl.plan import plan

SMOL = ModelFacts(weight_bytes=270_000_000, kv_bytes_per_token=2 * 30 * 3 * 64 * 2)


def cpu(ram_gib=24, avail_gib=22, cores=(0, 1)):
    return Readings((), ram_gib * GIB, avail_gib * GIB, cores)


def gpu(total_gib=96, free_gib=95):
    return Readings((Gpu(0, "H", total_gib * GIB, free_gib * GIB),), 64 * GIB, 60 * GIB,
                    tuple(range(16)))


def test_cpu_demo_gets_one_core_each_and_1_gib_kv():
    cfg = config.parse({}, device="cpu")
    p = plan(cfg, cpu(), {"coder": SMOL, "general": SMOL})
    assert p["coder"].cores == (0,) and p["general"].cores == (1,)
    assert p["coder"].kv_cache_gib == 1 and p["general"].kv_cache_gib == 1
    assert p["coder"].device == "cpu"


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


def test_cpu_fraction_is_of_total_ram():
    cfg = config.parse({"models": {"a": {"name": "a", "source": "x", "port": 9000,
                                         "memory": 0.25}}})
    assert plan(cfg, cpu(ram_gib=24), {})["a"].kv_cache_gib == 6


def test_gpu_auto_split_follows_model_size_and_stays_under_the_card():
    cfg = config.parse({}, device="cuda")
    big = ModelFacts(18 * GIB, 2 * 62 * 8 * 128 * 2)
    small = ModelFacts(4 * GIB, 2 * 32 * 8 * 128 * 2)
    p = plan(cfg, gpu(), {"coder": big, "general": small})
    c, g = p["coder"].gpu_memory_utilization, p["general"].gpu_memory_utilization
    assert c > g > 0.1
    assert c + g <= 95 / 96 - 0.08 + 1e-9


def test_gpu_fixed_fractions_are_kept_and_the_rest_split():
    cfg = config.parse({"models": {
        "a": {"name": "a", "source": "x", "port": 9000, "memory": 0.45},
        "b": {"name": "b", "source": "y", "port": 9001}}})
    p = plan(cfg, gpu(free_gib=96), {})
    assert p["a"].gpu_memory_utilization == 0.45
    assert p["b"].gpu_memory_utilization == pytest.approx(0.47, abs=0.011)


def test_remote_models_are_not_planned():
    cfg = config.parse({"models": {"r": {"name": "r", "url": "http://127.0.0.1:1"}}})
    assert plan(cfg, cpu(), {}) == {}
