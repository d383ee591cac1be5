"""The memory split, as a pure function: (config, readings, model facts) → a `Plan`.

May import: config, errors, gpu and hub (for their dataclasses only). No I/O:
survey.py reads the machine (gpu.Readings) and the model folders (hub.ModelFacts)
and calls `plan`, so every case is a table row in the unit tests. docs/planner.md
explains each term and where its figure comes from.

On CUDA the plan is vLLM's own arithmetic run ahead of time (vllm/v1/worker/
gpu_worker.py `determine_available_memory`, utils.py `request_memory`, in 0.32):

    budget   = gpu_memory_utilization × total                 (vLLM: requested_memory)
    KV cache = budget − weights − activation peak − non-torch memory − CUDA graphs
    KV bytes per token = 2 × layers × KV heads ÷ TP × head_dim × 2 bytes

and vLLM refuses to start when the card's free memory is below the budget, so the
budgets of the models sharing a card, plus each process's CUDA context, must fit in
its free memory less a headroom. What is left after every model's fixed costs is
the KV pool, shared in proportion to each model's KV demand (max_num_seqs ×
max_model_len × KV bytes per token), each capped at its demand.

On CPU the plan is a KV cache size (`VLLM_CPU_KVCACHE_SPACE`, whole GiB) and a set of
cores (`VLLM_CPU_OMP_THREADS_BIND`) per backend, so two servers never fight for a core.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config, ModelConfig
from .errors import PlanError
from .gpu import GIB, Gpu, Readings
from .hub import ModelFacts

MIB = 1024**2
BLOCK = 16  # tokens per KV block (vLLM's default block size on CUDA and CPU)

# ── CPU ──
# Measured on the CPU build (VLLM-CPU-NOTES.md): API server + EngineCore + Worker
# without the KV cache take about 2 GiB for a 135M model; weights come on top.
CPU_SERVER_OVERHEAD = 2 * GIB
CPU_RESERVE = 2 * GIB  # left to the OS, the daemon and the user's other programs

# ── CUDA: estimates of the terms vLLM measures at start (docs/planner.md) ──
HEADROOM_FRACTION = 0.02  # of each card, never planned: drivers, fragmentation, a desktop
HEADROOM_MIN = 512 * MIB
CUDA_CONTEXT = 512 * MIB  # per process per card, created before vLLM's memory snapshot
NON_TORCH = 400 * MIB  # cuBLAS workspaces, attention-backend buffers (vLLM: non_torch_increase)
NON_TORCH_TP = 1024 * MIB  # the same with NCCL's buffers, under tensor parallelism
CUDA_GRAPHS_BASE = 512 * MIB  # vLLM's cudagraph_memory_estimate, subtracted since v0.21 …
CUDA_GRAPHS_PER_LAYER = 8 * MIB  # … grows with the layers captured
TP_SIZES = (2, 4, 8)


def cores_spec(cores: tuple[int, ...] | list[int]) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` syntax: "0-3" when contiguous, else "0,2"."""
    c = list(cores)
    if c and c == list(range(c[0], c[-1] + 1)):
        return str(c[0]) if len(c) == 1 else f"{c[0]}-{c[-1]}"
    return ",".join(map(str, c))


@dataclass(frozen=True)
class BackendPlan:
    key: str
    device: str
    gpu_memory_utilization: float | None = None
    kv_cache_gib: int | None = None  # CPU: VLLM_CPU_KVCACHE_SPACE
    cores: tuple[int, ...] = ()  # CPU: VLLM_CPU_OMP_THREADS_BIND
    devices: tuple[int, ...] = ()  # CUDA: the cards (CUDA_VISIBLE_DEVICES)
    tensor_parallel: int = 1
    max_model_len: int = 0
    max_num_seqs: int = 0
    max_num_batched_tokens: int = 0  # CUDA: passed to vLLM, so plan and profile agree
    kv_tokens: int | None = None  # what vLLM should report as its KV cache size
    kv_bytes_per_token: int | None = None
    planned_bytes: int = 0  # the memory this backend is expected to hold (per card on CUDA)
    terms: dict[str, int] = field(default_factory=dict)  # the arithmetic, in bytes
    why: tuple[str, ...] = ()

    @property
    def cores_spec(self) -> str:
        return cores_spec(self.cores)

    @property
    def concurrency(self) -> float | None:
        """Sequences of max_model_len tokens the KV cache holds at once (vLLM's
        "Maximum concurrency for N tokens per request")."""
        if self.kv_tokens is None or not self.max_model_len:
            return None
        return round(self.kv_tokens / self.max_model_len, 2)


@dataclass(frozen=True)
class CardPlan:
    """One GPU as the plan sees it."""

    gpu: Gpu
    headroom: int
    models: tuple[str, ...]
    planned: int  # budgets + CUDA contexts of the models placed here

    @property
    def others(self) -> int:
        """Memory held by processes that are not this plan's (NVML: total − free)."""
        return self.gpu.total_bytes - self.gpu.free_bytes


@dataclass(frozen=True)
class Plan:
    device: str
    backends: dict[str, BackendPlan]
    cards: tuple[CardPlan, ...] = ()
    notes: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> BackendPlan:
        return self.backends[key]


KV_TOLERANCE = 0.10  # a reported KV cache further than this from the plan is flagged


def kv_difference(planned: int | None, reported: int | None) -> float | None:
    """(reported − planned) / planned, when both are known."""
    if not planned or reported is None:
        return None
    return (reported - planned) / planned


def device_for(cfg: Config, readings: Readings) -> str:
    """The configured device, or what the readings show when it is `auto`."""
    return cfg.engine.device if cfg.engine.device != "auto" else readings.device


def kv_need(model: ModelConfig, facts: ModelFacts | None, tp: int = 1) -> int | None:
    """Bytes of KV cache for max_num_seqs sequences of max_model_len tokens."""
    if facts is None:
        return None
    return facts.kv_bytes_per_token(tp) * model.max_model_len * model.max_num_seqs


def plan(cfg: Config, readings: Readings, facts: dict[str, ModelFacts | None] | None = None,
         device: str | None = None) -> Plan:
    facts = facts or {}
    device = device or device_for(cfg, readings)
    models = [m for m in cfg.models if m.managed]
    if not models:
        return Plan(device, {})
    sleepers = [m.key for m in models if m.group and m.swap == "sleep"]
    if device == "cuda" and not readings.gpus:
        raise PlanError("engine.device is cuda, but NVML sees no GPU",
                        'set `device = "auto"` or "cpu", or check the driver (`nvidia-smi`)')
    if device != "cuda" and sleepers:
        raise PlanError(f"swap = \"sleep\" ({', '.join(sleepers)}) needs CUDA: vLLM's CPU "
                        "build has no sleep mode", 'set `swap = "restart"` on them')

    def size(m: ModelConfig) -> int:
        """How much room a model needs, to find each group's largest member."""
        f = facts.get(m.key)
        if f is None:
            return 0
        if device == "cuda":
            return _need(m, f, 1, readings.gpus[0]).minimum(readings.gpus[0].total_bytes)
        return f.weight_bytes + (kv_need(m, f) or 0)

    slots, groups = group_slots(models, size)
    if device == "cuda":
        residual = {rep.key: sum(_asleep(m, facts.get(m.key), readings.gpus[0])
                                 for m in groups[rep.key] if m.swap == "sleep")
                    for rep in slots if rep.key in groups}
        return _with_members(_plan_gpu(slots, readings, facts, residual), groups, facts,
                             readings)
    return _with_members(_plan_cpu(slots, readings, facts), groups, facts, readings)


def group_slots(models: list[ModelConfig], size: Callable[[ModelConfig], int]
                ) -> tuple[list[ModelConfig], dict[str, list[ModelConfig]]]:
    """The models that may run at once: every model outside a group, and for each group
    its largest member (by `size`; the first in the config on a tie), which holds the
    group's place. Also: each such member's key → the other members of its group."""
    slots: list[ModelConfig] = []
    groups: dict[str, list[ModelConfig]] = {}
    seen: set[str] = set()
    for m in models:
        if not m.group:
            slots.append(m)
        elif m.group not in seen:
            seen.add(m.group)
            members = [x for x in models if x.group == m.group]
            rep = max(members, key=size)  # max() keeps the first of equals
            slots.append(rep)
            groups[rep.key] = [x for x in members if x is not rep]
    return slots, groups


def _asleep(m: ModelConfig, f: ModelFacts | None, g: Gpu) -> int:
    """What a member asleep in vLLM's sleep mode keeps on its card: level 1 moves the
    weights to host RAM and drops the KV cache; the CUDA context, the CUDA graphs and
    the non-torch buffers stay."""
    if f is None:
        return CUDA_CONTEXT + NON_TORCH + CUDA_GRAPHS_BASE
    n = _need(m, f, 1, g)
    return CUDA_CONTEXT + n.terms["non_torch"] + n.terms["cuda_graphs"]


def _with_members(p: Plan, groups: dict[str, list[ModelConfig]],
                  facts: dict[str, ModelFacts | None], r: Readings) -> Plan:
    """Each group member runs in the place planned for its group's largest member: the
    same cores or cards, the same KV cache size (CPU) or memory budget (CUDA); its own
    weights, and so its own KV tokens."""
    if not groups:
        return p
    out = dict(p.backends)
    for rep_key, members in groups.items():
        rep = p.backends[rep_key]
        for m in members:
            out[m.key] = _member_plan(rep, m, facts.get(m.key), r)
    cards = tuple(dataclasses.replace(c, models=tuple(
        k for key in c.models for k in (key, *(m.key for m in groups.get(key, ())))))
        for c in p.cards)
    order = {k: i for i, k in enumerate(out)}
    notes = tuple(f"group {members[0].group}: {', '.join([rep_key, *(m.key for m in members)])}"
                  f" run one at a time, in the place planned for {rep_key}, the largest "
                  f"({_gib(p.backends[rep_key].planned_bytes)})"
                  for rep_key, members in groups.items())
    return Plan(p.device, dict(sorted(out.items(), key=lambda kv: order[kv[0]])), cards,
                p.notes + notes)


def _member_plan(rep: BackendPlan, m: ModelConfig, f: ModelFacts | None,
                 r: Readings) -> BackendPlan:
    lead = f"group {m.group}: in the place planned for {rep.key}, its largest member"
    base = dataclasses.replace(rep, key=m.key, max_model_len=m.max_model_len,
                               max_num_seqs=m.max_num_seqs, kv_tokens=None,
                               kv_bytes_per_token=None, terms={}, why=(lead,))
    if f is None:
        return base
    if rep.device == "cpu":
        kv = (rep.kv_cache_gib or 0) * GIB
        per = f.kv_bytes_per_token()
        budget = kv + CPU_SERVER_OVERHEAD + f.weight_bytes
        terms = {"weights": f.weight_bytes, "server": CPU_SERVER_OVERHEAD, "kv_cache": kv}
    else:
        if f.heads % rep.tensor_parallel:
            raise PlanError(f"{m.key}: group {m.group} runs on {rep.tensor_parallel} cards "
                            f"(tensor parallel, for {rep.key}), and {m.key}'s {f.heads} "
                            "attention heads do not split that way",
                            "put it in a group of its own, or in none")
        g = next(g for g in r.gpus if g.index == rep.devices[0])
        n = _need(m, f, rep.tensor_parallel, g)
        budget = rep.planned_bytes
        kv = budget - n.fixed
        per = n.per_token
        terms = {**n.terms, "kv_cache": int(kv), "budget": budget}
    tokens = _tokens(kv, per)
    if tokens < m.max_model_len:
        raise PlanError(f"{m.key}: in group {m.group}'s place (sized for {rep.key}) its KV "
                        f"cache holds {tokens:,} tokens, less than one {m.max_model_len}-token "
                        "sequence", f"lower {m.key}'s max_model_len to {max(tokens, BLOCK)}, "
                        "or take it out of the group")
    return dataclasses.replace(
        base, kv_tokens=tokens, kv_bytes_per_token=per, terms=terms,
        planned_bytes=budget if rep.device == "cuda" else int(budget),
        why=(lead, f"kv: {kv / GIB:.2f} GiB ÷ {per:,} B/token = {tokens:,} tokens "
                   f"({tokens / m.max_model_len:.2f} × {m.max_model_len} tokens)"))


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _tokens(kv_bytes: float, per_token: int) -> int:
    return max(0, int(kv_bytes // per_token) // BLOCK * BLOCK)


# ── CPU ──────────────────────────────────────────────────────────────────────


def _plan_cpu(models: list[ModelConfig], r: Readings,
              facts: dict[str, ModelFacts | None]) -> Plan:
    n = len(models)
    cores = r.cores or (0,)
    per = len(cores) // n
    budget = r.ram_available_bytes - CPU_RESERVE
    fixed = sum(CPU_SERVER_OVERHEAD + (facts[m.key].weight_bytes if facts.get(m.key) else 0)
                for m in models)
    share = max(budget - fixed, 0) // n
    if fixed + n * GIB > r.ram_total_bytes - CPU_RESERVE:
        raise PlanError(
            f"the models cannot fit in RAM: {n} server(s) need {_gib(fixed + n * GIB)} "
            f"(weights, ~2 GiB per server, 1 GiB of KV cache each) and the machine has "
            f"{_gib(r.ram_total_bytes)}, {_gib(CPU_RESERVE)} of which is left to the system",
            "serve fewer or smaller models here, or a model from another machine (`url =`)")
    out = {}
    for i, m in enumerate(models):
        why = []
        f = facts.get(m.key)
        if per >= 1:
            mine = tuple(cores[i * per:(i + 1) * per])
            why.append(f"cores: {len(cores)} available / {n} backends → {len(mine)} each")
        else:
            # One core each, taken in turn: two servers on one core contend only when both
            # are busy, where every server on every core would contend always.
            mine = (cores[i % len(cores)],)
            why.append(f"cores: only {len(cores)} for {n} backends → one each, in turn "
                       f"(core {mine[0]} is shared)")
        need = kv_need(m, f)
        if isinstance(m.memory, float):
            kv = max(1, int(m.memory * r.ram_total_bytes // GIB))
            why.append(f"kv: memory = {m.memory} × {r.ram_total_bytes / GIB:.1f} GiB RAM → {kv} GiB")
        else:
            cap = max(1, share // GIB)
            if need is None:
                kv = min(4, cap)
                why.append(f"kv: model facts unknown → min(4, {cap}) = {kv} GiB")
            else:
                kv = min(max(1, math.ceil(need / GIB)), cap)
                why.append(
                    f"kv: {m.max_num_seqs} seqs × {m.max_model_len} tokens × "
                    f"{f.kv_bytes_per_token()} B = {need / GIB:.2f} GiB → {kv} GiB "
                    f"(share of free RAM {cap} GiB)")
        if budget - fixed < n * GIB:
            why.append(f"kv: free RAM is short ({_gib(max(budget, 0))} free after the reserve, "
                       f"{_gib(fixed + n * GIB)} wanted): the minimum, 1 GiB, may not fit")
        weights = f.weight_bytes if f else 0
        per_token = f.kv_bytes_per_token() if f else None
        tokens = _tokens(kv * GIB, per_token) if per_token else None
        if tokens is not None and tokens < m.max_model_len:
            raise PlanError(
                f"{m.key}: a {kv} GiB KV cache holds {tokens:,} tokens, less than one "
                f"{m.max_model_len}-token sequence", f"lower max_model_len to {tokens}, or "
                "raise `memory` (a fraction of the RAM)")
        if tokens is not None:
            why.append(f"kv tokens: {kv} GiB ÷ {per_token} B = {tokens:,} "
                       f"({tokens / m.max_model_len:.2f} × {m.max_model_len} tokens)")
        out[m.key] = BackendPlan(
            m.key, "cpu", kv_cache_gib=kv, cores=mine, max_model_len=m.max_model_len,
            max_num_seqs=m.max_num_seqs, kv_tokens=tokens, kv_bytes_per_token=per_token,
            planned_bytes=kv * GIB + CPU_SERVER_OVERHEAD + weights,
            terms={"weights": weights, "server": CPU_SERVER_OVERHEAD, "kv_cache": kv * GIB},
            why=tuple(why))
    return Plan("cpu", out)


# ── CUDA ─────────────────────────────────────────────────────────────────────


def batched_tokens(g: Gpu) -> int:
    """vLLM's default max_num_batched_tokens for its OpenAI server on this card
    (engine/arg_utils.py `get_batch_defaults`, 0.32)."""
    if g.total_bytes >= 160 * GIB:
        return 16384
    if g.total_bytes >= 70 * GIB and "a100" not in g.name.lower():
        return 8192
    return 2048


def activation_peak(f: ModelFacts, tokens: int, seqs: int, tp: int) -> int:
    """The profiling pass's transient peak beyond the weights: one layer's widest
    activations for `tokens` tokens in 16-bit (MLP gate+up, attention q/k/v, residual
    copies), split by TP, and the sampler's fp32 logits, probabilities and sort buffers
    for min(seqs, tokens) sequences."""
    width = (2 * f.intermediate_size + 4 * f.hidden_size
             + (f.heads + 2 * f.kv_heads) * f.head_dim)
    return tokens * width * 2 // tp + min(seqs, tokens) * f.vocab_size * 4 * 3


@dataclass
class _Need:
    """One model's costs on each card it uses, for a tensor-parallel size."""

    model: ModelConfig
    facts: ModelFacts
    tp: int
    batched: int
    terms: dict[str, int]

    @property
    def fixed(self) -> int:
        return sum(self.terms.values())

    @property
    def per_token(self) -> int:
        return self.facts.kv_bytes_per_token(self.tp)

    @property
    def one_sequence(self) -> int:
        return self.per_token * self.model.max_model_len

    @property
    def demand(self) -> int:
        return self.one_sequence * self.model.max_num_seqs

    def minimum(self, total: int) -> int:
        """Budget it needs on a card: its fixed share, or its `memory` fraction."""
        if isinstance(self.model.memory, float):
            return int(self.model.memory * total)
        return self.fixed + self.one_sequence


def _need(m: ModelConfig, f: ModelFacts, tp: int, g: Gpu) -> _Need:
    batched = batched_tokens(g)
    return _Need(m, f, tp, batched, {
        "weights": math.ceil(f.weight_bytes / tp),
        "activation": activation_peak(f, batched, m.max_num_seqs, tp),
        "non_torch": NON_TORCH_TP if tp > 1 else NON_TORCH,
        "cuda_graphs": CUDA_GRAPHS_BASE + CUDA_GRAPHS_PER_LAYER * f.layers,
    })


def _headroom(g: Gpu) -> int:
    return max(HEADROOM_MIN, int(g.total_bytes * HEADROOM_FRACTION))


@dataclass
class _Card:
    gpu: Gpu
    room: int  # free − headroom − what is placed here already
    models: list[str] = field(default_factory=list)
    exclusive: bool = False  # a tensor-parallel model took it whole


def _plan_gpu(models: list[ModelConfig], r: Readings,
              facts: dict[str, ModelFacts | None], residual: dict[str, int] | None = None
              ) -> Plan:
    """`residual`: per model, what the members of its group asleep beside it keep on its
    card(s), outside its budget."""
    residual = residual or {}
    unknown = [m for m in models if facts.get(m.key) is None]
    if unknown:
        return _plan_gpu_blind(models, r, unknown, residual)
    cards = [_Card(g, g.free_bytes - _headroom(g)) for g in r.gpus]
    placed: dict[str, tuple[list[_Card], _Need]] = {}
    # Largest first: the hardest to place chooses its card(s) first.
    order = sorted(models, key=lambda m: _need(m, facts[m.key], 1, r.gpus[0]).minimum(
        r.gpus[0].total_bytes), reverse=True)
    for i, m in enumerate(order):
        placed[m.key] = _place(m, facts[m.key], cards, left=len(order) - i,
                               beside=residual.get(m.key, 0))
    out: dict[str, BackendPlan] = {}
    for c in cards:
        _share(c, [k for k in c.models if placed[k][0][0] is c], placed, out, residual)
    plans = {m.key: out[m.key] for m in models}  # config order
    card_plans = tuple(
        CardPlan(c.gpu, _headroom(c.gpu), tuple(c.models),
                 sum(plans[k].planned_bytes + CUDA_CONTEXT + residual.get(k, 0)
                     for k in c.models))
        for c in cards)
    notes = tuple(f"GPU {c.gpu.index}: {p.name} (pid {p.pid}) holds {_gib(p.used_bytes)}"
                  if p.pid else f"GPU {c.gpu.index}: other processes hold {_gib(p.used_bytes)}"
                  for c in cards for p in c.gpu.processes)
    return Plan("cuda", plans, card_plans, notes)


def _place(m: ModelConfig, f: ModelFacts, cards: list[_Card], left: int, beside: int = 0
           ) -> tuple[list[_Card], _Need]:
    """Choose the card(s) for one model: a card of its own while there are enough for
    the models still to place, else the card with the most room; tensor parallelism
    over empty cards when no single card holds it. `beside`: memory its sleeping group
    members keep on the same card(s)."""
    open_cards = [c for c in cards if not c.exclusive]
    empty = [c for c in open_cards if not c.models]
    pool = empty if len(empty) >= left else open_cards
    for c in sorted(pool, key=lambda c: c.room, reverse=True):
        n = _need(m, f, 1, c.gpu)
        if n.minimum(c.gpu.total_bytes) + CUDA_CONTEXT + beside <= c.room:
            c.room -= n.minimum(c.gpu.total_bytes) + CUDA_CONTEXT + beside
            c.models.append(m.key)
            return [c], n
    for tp in TP_SIZES:
        group = sorted(empty, key=lambda c: c.room, reverse=True)[:tp]
        if len(group) < tp or f.heads % tp:
            continue
        n = _need(m, f, tp, group[0].gpu)
        if all(n.minimum(c.gpu.total_bytes) + CUDA_CONTEXT + beside <= c.room for c in group):
            for c in group:
                c.room -= n.minimum(c.gpu.total_bytes) + CUDA_CONTEXT + beside
                c.models.append(m.key)
                c.exclusive = True
            return group, n
    raise _does_not_fit(m, f, cards, beside)


def _does_not_fit(m: ModelConfig, f: ModelFacts, cards: list[_Card], asleep: int = 0
                  ) -> PlanError:
    best = max(cards, key=lambda c: c.room)
    n = _need(m, f, 1, best.gpu)
    need = n.minimum(best.gpu.total_bytes) + CUDA_CONTEXT + asleep
    beside = f" beside {', '.join(best.models)}" if best.models else ""
    overhead = n.terms["cuda_graphs"] + n.terms["non_torch"] + CUDA_CONTEXT
    what = (f"memory = {m.memory}" if isinstance(m.memory, float) else
            f"weights {_gib(n.terms['weights'])} + activations {_gib(n.terms['activation'])}"
            f" + CUDA graphs, buffers and context {_gib(overhead)}"
            f" + one {m.max_model_len}-token sequence {_gib(n.one_sequence)}"
            + (f" + its group's sleeping members {_gib(asleep)}" if asleep else ""))
    ideas = []
    room_for_kv = best.room - CUDA_CONTEXT - n.fixed
    if not isinstance(m.memory, float) and room_for_kv >= BLOCK * n.per_token:
        ideas.append(f"max_model_len = {_tokens(room_for_kv, n.per_token)} fits there")
    if best.models:
        ideas.append(f"serve {m.key} from another machine (`url =`) or another card "
                     f"(`llmctl plan --assume {len(cards) + 1}x{best.gpu.total_bytes // GIB}GiB`"
                     " shows that plan)")
    else:
        ideas.append(f"a bigger card or several (`llmctl plan --assume 2x{best.gpu.total_bytes // GIB}GiB`)")
    spare = best.room - CUDA_CONTEXT - (need - CUDA_CONTEXT - n.terms["weights"])
    if f.quantization == "" or f.bits > 4:
        ideas.append("a 4-bit (AWQ) build of the model")
    elif spare > 0:
        ideas.append(f"a smaller model: weights up to {_gib(spare)} fit")
    return PlanError(
        f"{m.key} does not fit: it needs {_gib(need)} on one card ({what}); "
        f"GPU {best.gpu.index} has {_gib(max(best.room, 0))} left{beside} "
        f"(short by {_gib(need - best.room)})",
        "; ".join(ideas))


def _share(card: _Card, keys: list[str], placed: dict[str, tuple[list[_Card], _Need]],
           out: dict[str, BackendPlan], residual: dict[str, int]) -> None:
    """Budgets for the models whose first card this is: fixed fractions as set, the KV
    pool shared by the others in proportion to their KV demand, each capped at it.

    A tensor-parallel model has its cards to itself, and vLLM applies one
    --gpu-memory-utilization to each of them: its budget is sized by the smallest."""
    group = placed[keys[0]][0] if keys else [card]
    total = min(c.gpu.total_bytes for c in group)
    usable = min(c.gpu.free_bytes - _headroom(c.gpu) for c in group) \
        - sum(CUDA_CONTEXT + residual.get(k, 0) for k in card.models)
    needs = {k: placed[k][1] for k in card.models}
    fixed_budget = {k: int(n.model.memory * total) for k, n in needs.items()
                    if isinstance(n.model.memory, float)}
    auto = [k for k in needs if k not in fixed_budget]
    pool = usable - sum(fixed_budget.values()) - sum(needs[k].fixed for k in auto)
    demand = sum(needs[k].demand for k in auto) or 1
    for k in keys:
        n = needs[k]
        cards = placed[k][0]
        if k in fixed_budget:
            budget = fixed_budget[k]
            rule = f"memory = {n.model.memory} (from the config) × {_gib(total)}"
        else:
            kv = min(n.demand, pool * n.demand // demand)
            budget = n.fixed + kv
            rule = (f"KV pool {_gib(pool)} × {n.demand / demand:.0%} (its share of the KV "
                    f"demand {_gib(n.demand)})" + (" = its whole demand" if kv == n.demand else ""))
        util = float(n.model.memory) if k in fixed_budget else \
            math.floor(budget / total * 1000) / 1000
        kv_bytes = util * total - n.fixed
        tokens = _tokens(kv_bytes, n.per_token)
        if tokens < n.model.max_model_len:
            raise PlanError(
                f"{k}: its budget ({rule}) leaves {_gib(max(kv_bytes, 0))} for the KV cache, "
                f"less than one {n.model.max_model_len}-token sequence ({_gib(n.one_sequence)})",
                f"raise `memory`, or lower max_model_len to {max(_tokens(kv_bytes, n.per_token), BLOCK)}")
        where = ",".join(str(c.gpu.index) for c in cards)
        why = (
            f"GPU {where}: {_gib(card.gpu.free_bytes)} free of {_gib(total)}, less headroom "
            f"{_gib(_headroom(card.gpu))} and {len(card.models)} CUDA context(s)"
            + (f" and sleeping group members {_gib(sum(residual.get(k, 0) for k in card.models))}"
               if any(residual.get(k) for k in card.models) else "")
            + f" → {_gib(usable)} usable",
            f"fixed: weights {_gib(n.terms['weights'])} + activations {_gib(n.terms['activation'])}"
            f" ({n.batched} batched tokens) + non-torch {_gib(n.terms['non_torch'])} + CUDA graphs "
            f"{_gib(n.terms['cuda_graphs'])} = {_gib(n.fixed)}"
            + (f", per card with tensor parallel {n.tp}" if n.tp > 1 else ""),
            f"budget: {rule} → --gpu-memory-utilization {util:.3f} ({_gib(util * total)})",
            f"kv: {_gib(kv_bytes)} ÷ {n.per_token:,} B/token = {tokens:,} tokens "
            f"({tokens / n.model.max_model_len:.2f} × {n.model.max_model_len} tokens; "
            f"max_num_seqs {n.model.max_num_seqs})",
        )
        out[k] = BackendPlan(
            k, "cuda", gpu_memory_utilization=util, devices=tuple(c.gpu.index for c in cards),
            tensor_parallel=n.tp, max_model_len=n.model.max_model_len,
            max_num_seqs=n.model.max_num_seqs, max_num_batched_tokens=n.batched,
            kv_tokens=tokens, kv_bytes_per_token=n.per_token, planned_bytes=int(util * total),
            terms={**n.terms, "kv_cache": int(kv_bytes), "budget": int(util * total)},
            why=why)


def _plan_gpu_blind(models: list[ModelConfig], r: Readings, unknown: list[ModelConfig],
                    residual: dict[str, int]) -> Plan:
    """Without a model's facts there is no arithmetic: one card, fixed fractions as set,
    the rest of its free memory split evenly; `plan` says which facts are missing."""
    g = max(r.gpus, key=lambda g: g.free_bytes)
    total = g.total_bytes
    usable = (g.free_bytes - _headroom(g) - CUDA_CONTEXT * len(models)
              - sum(residual.values())) / total
    fixed = {m.key: m.memory for m in models if isinstance(m.memory, float)}
    auto = [m for m in models if m.key not in fixed]
    even = max(usable - sum(fixed.values()), 0) / (len(auto) or 1)
    if auto and even < 0.01:
        raise PlanError(f"GPU {g.index} has {_gib(g.free_bytes)} free of {_gib(total)}: "
                        "nothing left to share between the models",
                        "free the card (`nvidia-smi` shows who holds it), or set `memory`")
    out = {}
    for m in models:
        util = fixed.get(m.key) or math.floor(even * 1000) / 1000
        out[m.key] = BackendPlan(
            m.key, "cuda", gpu_memory_utilization=util, devices=(g.index,),
            max_model_len=m.max_model_len, max_num_seqs=m.max_num_seqs,
            max_num_batched_tokens=batched_tokens(g), planned_bytes=int(util * total),
            why=(f"GPU {g.index}: {_gib(g.free_bytes)} free of {_gib(total)} → {usable:.3f} "
                 f"usable; " + (f"memory = {util} (from the config)" if m.key in fixed else
                                f"facts unknown: no arithmetic, only an even split "
                                f"→ {util:.3f}"),))
    notes = tuple(f"{m.key}: facts unknown ({m.source} is not local): its memory is a "
                  "guess, not a plan; `llmctl pull` it for the real arithmetic" for m in unknown)
    card = CardPlan(g, _headroom(g), tuple(m.key for m in models),
                    sum(p.planned_bytes + CUDA_CONTEXT for p in out.values())
                    + sum(residual.values()))
    return Plan("cuda", out, (card,), notes)
