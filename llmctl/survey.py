"""The impure half of planning: read the machine and the model folders, then plan.

May import: config, gpu, hub, plan. The daemon starts backends from a survey, and
`llmctl plan` shows one; plan.py stays a pure function of what is read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import gpu, hub, plan
from .config import Config


@dataclass(frozen=True)
class Survey:
    device: str
    readings: gpu.Readings
    folders: dict[str, Path | None]  # per managed model: its weights, None when not pulled
    plans: dict[str, plan.BackendPlan]


def survey(cfg: Config) -> Survey:
    readings = gpu.read()
    device = plan.device_for(cfg, readings)
    folders = {m.key: hub.resolve(m.source) for m in cfg.models if m.managed}
    facts = {k: hub.facts(p) if p else None for k, p in folders.items()}
    return Survey(device, readings, folders, plan.plan(cfg, readings, facts, device=device))
