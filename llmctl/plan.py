"""The memory split, as a pure function: (models, their facts, readings) → one plan per backend.

May import: config, gpu and hub (for their dataclasses only). No I/O: survey.py reads
the machine (gpu.Readings) and the model folders (hub.ModelFacts) and calls `plan`, so
every case is a table row in the unit tests.

On CUDA the plan is a `--gpu-memory-utilization` per backend; on CPU it is a KV
cache size (`VLLM_CPU_KVCACHE_SPACE`, whole GiB) and a set of cores
(`VLLM_CPU_OMP_THREADS_BIND`) per backend, so two servers never fight for a core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import Config, ModelConfig
from .gpu import GIB, Readings
from .hub import ModelFacts

# Measured on the CPU build (VLLM-CPU-NOTES.md): API server + EngineCore + Worker
# without the KV cache take about 2 GiB for a 135M model; weights come on top.
CPU_SERVER_OVERHEAD = 2 * GIB
CPU_RESERVE = 2 * GIB  # left to the OS, the daemon and the user's other programs
GPU_HEADROOM = 0.08  # fraction of a card vLLM's own profiling and CUDA graphs need beyond the split


@dataclass(frozen=True)
class BackendPlan:
    key: str
    device: str
    gpu_memory_utilization: float | None = None
    kv_cache_gib: int | None = None
    cores: tuple[int, ...] = ()
    planned_bytes: int = 0  # the memory this backend is expected to hold
    why: tuple[str, ...] = field(default=())

    @property
    def cores_spec(self) -> str:
        """`VLLM_CPU_OMP_THREADS_BIND` syntax: "0-3" when contiguous, else "0,2"."""
        c = self.cores
        if c and list(c) == list(range(c[0], c[-1] + 1)):
            return str(c[0]) if len(c) == 1 else f"{c[0]}-{c[-1]}"
        return ",".join(map(str, c))


def kv_need(model: ModelConfig, facts: ModelFacts | None) -> int | None:
    """Bytes of KV cache for max_num_seqs sequences of max_model_len tokens."""
    if facts is None:
        return None
    return facts.kv_bytes_per_token * model.max_model_len * model.max_num_seqs


def device_for(cfg: Config, readings: Readings) -> str:
    """The configured device, or what the readings show when it is `auto`."""
    return cfg.engine.device if cfg.engine.device != "auto" else readings.device


def plan(cfg: Config, readings: Readings, facts: dict[str, ModelFacts | None] | None = None,
         device: str | None = None) -> dict[str, BackendPlan]:
    facts = facts or {}
    device = device or device_for(cfg, readings)
    models = [m for m in cfg.models if m.managed]
    if not models:
        return {}
    if device == "cuda":
        return _plan_gpu(models, readings, facts)
    return _plan_cpu(models, readings, facts)


def _plan_cpu(models: list[ModelConfig], r: Readings,
              facts: dict[str, ModelFacts | None]) -> dict[str, BackendPlan]:
    n = len(models)
    cores = r.cores or (0,)
    per = len(cores) // n
    budget = r.ram_available_bytes - CPU_RESERVE
    fixed = sum(CPU_SERVER_OVERHEAD + (facts[m.key].weight_bytes if facts.get(m.key) else 0)
                for m in models)
    share = max(budget - fixed, 0) // n
    out = {}
    for i, m in enumerate(models):
        why = []
        if per >= 1:
            mine = tuple(cores[i * per:(i + 1) * per])
            why.append(f"cores: {len(cores)} available / {n} backends → {len(mine)} each")
        else:
            mine = tuple(cores)
            why.append(f"cores: only {len(cores)} for {n} backends → shared")
        need = kv_need(m, facts.get(m.key))
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
                    f"{facts[m.key].kv_bytes_per_token} B = {need / GIB:.2f} GiB → {kv} GiB "
                    f"(share of free RAM {cap} GiB)")
        weights = facts[m.key].weight_bytes if facts.get(m.key) else 0
        out[m.key] = BackendPlan(m.key, "cpu", kv_cache_gib=kv, cores=mine,
                                 planned_bytes=kv * GIB + CPU_SERVER_OVERHEAD + weights,
                                 why=tuple(why))
    return out


def _plan_gpu(models: list[ModelConfig], r: Readings,
              facts: dict[str, ModelFacts | None]) -> dict[str, BackendPlan]:
    gpu = r.gpus[0] if r.gpus else None
    total = gpu.total_bytes if gpu else 0
    free = gpu.free_bytes if gpu else 0
    fixed = {m.key: m.memory for m in models if isinstance(m.memory, float)}
    auto = [m for m in models if not isinstance(m.memory, float)]
    usable = (free / total - GPU_HEADROOM) if total else 0.0
    left = max(usable - sum(fixed.values()), 0.0)
    weights = {}
    for m in auto:
        f = facts.get(m.key)
        need = kv_need(m, f)
        # Without facts, split evenly; with them, in proportion to weights + full KV need.
        weights[m.key] = (f.weight_bytes + (need or 0)) if f else 1.0
    total_w = sum(weights.values()) or 1.0
    out = {}
    for m in models:
        if m.key in fixed:
            frac = fixed[m.key]
            why = (f"memory = {frac} (from the config)",)
        else:
            frac = math.floor(left * weights[m.key] / total_w * 100) / 100
            why = (f"free {free / GIB:.1f} of {total / GIB:.1f} GiB → usable {usable:.2f} "
                   f"(less {GPU_HEADROOM} headroom); {left:.2f} split by weights+KV → {frac:.2f}",)
        out[m.key] = BackendPlan(m.key, "cuda", gpu_memory_utilization=frac,
                                 planned_bytes=int(frac * total), why=why)
    return out
