"""The impure half of planning: read the machine and the model folders, then plan.

May import: config, fim, gpu, hub, plan, tools. The daemon starts backends from a survey, and
`llmctl plan` shows one; plan.py stays a pure function of what is read here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fim, gpu, hub, plan, tools
from .config import Config, ModelConfig


@dataclass(frozen=True)
class Survey:
    device: str
    readings: gpu.Readings
    folders: dict[str, Path | None]  # per managed model: its weights, None when not pulled
    facts: dict[str, hub.ModelFacts | None]
    plan: plan.Plan
    notes: tuple[str, ...] = ()  # where facts came from, or why they are missing
    models: dict[str, Any] = dataclasses.field(default_factory=dict)  # key → ModelConfig
    # key → tool-call and reasoning parsers, every model (a url model's: as configured)
    abilities: dict[str, tools.Abilities] = dataclasses.field(default_factory=dict)

    @property
    def plans(self) -> dict[str, plan.BackendPlan]:
        return self.plan.backends

    def as_dict(self, reported: dict[str, int | None] | None = None) -> dict[str, Any]:
        """`llmctl plan --json` (docs/planner.md documents every field). `reported` is what
        a live stack's vLLM servers said of their KV caches (tokens, by model key): it goes
        beside the plan."""
        r, p = self.readings, self.plan
        cards = {c.gpu.index: c for c in p.cards}
        reported = reported or {}
        models = {}
        for key, b in p.backends.items():
            d = dataclasses.asdict(b)
            d["cores"] = list(b.cores)
            d["devices"] = list(b.devices)
            d["why"] = list(b.why)
            d["concurrency"] = b.concurrency
            f = self.facts.get(key)
            d["facts"] = {**dataclasses.asdict(f), "quant_text": f.quant_text} if f else None
            said = reported.get(key)
            d["kv_tokens_reported"] = said
            diff = plan.kv_difference(b.kv_tokens, said)
            d["kv_difference"] = round(diff, 4) if diff is not None else None
            m = self.models.get(key)
            d["start"] = m.start if m else "always"
            d["group"] = (m.group or None) if m else None
            d["swap"] = m.swap if m and m.group else None
            d["idle_stop_s"] = m.idle_seconds if m and (m.on_demand or m.group) else None
            a = self.abilities.get(key)
            d["abilities"] = a.as_dict() if a else None
            d["fim"] = fim_family(m, self.folders.get(key)) if m else None
            models[key] = d
        return {
            "device": self.device, "assumed": r.assumed or None,
            "driver_version": r.driver_version or None, "cuda_version": r.cuda_version or None,
            "ram_total_bytes": r.ram_total_bytes, "ram_available_bytes": r.ram_available_bytes,
            "cores": len(r.cores),
            "gpus": [{
                "index": g.index, "name": g.name, "uuid": g.uuid,
                "compute_capability": g.compute_capability, "total_bytes": g.total_bytes,
                "free_bytes": g.free_bytes, "used_bytes": g.used_bytes,
                "processes": [dataclasses.asdict(x) for x in g.processes],
                "headroom_bytes": cards[g.index].headroom if g.index in cards else None,
                "planned_bytes": cards[g.index].planned if g.index in cards else 0,
                "models": list(cards[g.index].models) if g.index in cards else [],
            } for g in r.gpus],
            "models": models,
            "notes": list(p.notes) + list(self.notes),
        }


def survey(cfg: Config, *, assume: str | None = None, ask_hub: bool = False,
           own: tuple[set[int], int] | None = None) -> Survey:
    """Read (or, with `assume`, make up) the machine, read each model's facts from its
    folder (or, with `ask_hub`, from hub metadata when it is not downloaded), and plan.
    `own` is a running stack's (pids, resident bytes): planned as if it were not there,
    so one config gets one plan whether or not its stack is up."""
    readings = gpu.assumed(assume) if assume else gpu.read()
    if own is not None and not assume:
        readings = gpu.without(readings, *own)
    device = readings.device if assume else plan.device_for(cfg, readings)
    folders = {m.key: hub.resolve(m.source) for m in cfg.models if m.managed}
    facts: dict[str, hub.ModelFacts | None] = {}
    notes = []
    unknown_why: dict[str, str] = {}
    for m in cfg.models:
        if not m.managed:
            continue
        folder = folders[m.key]
        if folder is not None:
            facts[m.key] = hub.facts(folder)
        elif (known := hub.known_facts(m.source)) is not None:
            facts[m.key] = known  # the demo, before the first `up` prepares it
        elif ask_hub and not hub.is_local(m.source):
            facts[m.key], why = hub.remote_facts(m.source)
            # When the hub cannot say either, the planner's own note says the facts are
            # unknown (one note a model, not two).
            if facts[m.key] is not None:
                notes.append(f"{m.key}: {m.source} is not downloaded; facts from the "
                             "hub's metadata")
            else:
                unknown_why[m.key] = why
        else:
            facts[m.key] = None
    planned = plan.plan(cfg, readings, facts, device=device)
    if unknown_why:  # the planner says the facts are unknown; say why beside it
        planned = dataclasses.replace(planned, notes=tuple(
            next((f"{n} ({why})" for k, why in unknown_why.items()
                  if n.startswith(f"{k}: facts unknown")), n) for n in planned.notes))
    return Survey(device, readings, folders, facts, planned, tuple(notes),
                  {m.key: m for m in cfg.models if m.managed}, abilities(cfg, folders))


def fim_family(m: ModelConfig, folder: Path | None) -> str | None:
    """The model's FIM template: as configured, or (auto) from its tokenizer's tokens."""
    if m.fim == "none":
        return None
    if m.fim != "auto":
        return m.fim
    return fim.detect(hub.special_tokens(folder)) if folder else None


def abilities(cfg: Config, folders: dict[str, Path | None]) -> dict[str, tools.Abilities]:
    """Each model's tool-call and reasoning parsers: from its folder when it is here, else
    from its name (a model not yet pulled)."""
    return {m.key: tools.choose(m.tools, m.reasoning, m.managed,
                                tools.read(m.source, folders.get(m.key)) if m.managed else None)
            for m in cfg.models}
