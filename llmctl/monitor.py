"""The Grafana dashboards shipped in the package (llmctl/dashboards/*.json, made by
scripts/gen_dashboards.py) and what is known of the metrics they name.

May import: errors, files. `llmctl monitor dashboards DIR` writes them; the e2e suite runs
each expression against a real Prometheus and checks every metric named is in the
stack's scrape, except those in CONDITIONAL (each shown by a unit test).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UsageError
from .files import write_atomic

NAMES = ("overview", "engines", "hardware")

# Series a dashboard names that a stack exports only in some conditions: what they are.
CONDITIONAL = {
    "llmctl_gpu_memory_used_bytes": "a machine with an NVIDIA GPU (NVML)",
    "llmctl_gpu_memory_total_bytes": "a machine with an NVIDIA GPU (NVML)",
    "llmctl_gpu_utilization_ratio": "a machine with an NVIDIA GPU (NVML)",
    "llmctl_gpu_temperature_celsius": "a machine with an NVIDIA GPU (NVML)",
    "llmctl_gpu_power_watts": "a machine with an NVIDIA GPU whose NVML reports power",
}

# The metrics of llmctl and vLLM, as PromQL names them (vLLM's have a colon).
_METRIC = re.compile(r"\b(?:llmctl_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


def texts() -> dict[str, str]:
    """Each dashboard's JSON as shipped, by its file name."""
    folder = resources.files("llmctl").joinpath("dashboards")
    return {f"llmctl-{n}.json": folder.joinpath(f"{n}.json").read_text(encoding="utf-8")
            for n in NAMES}


def dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in texts().items()}


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"]
            for t in p.get("targets", ()) if t.get("expr")]


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def write(folder: Path) -> list[tuple[Path, str]]:
    """Write the dashboards into `folder` (made if missing); (path, "new" / "updated" /
    "unchanged") for each."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file", "name a folder for the dashboards")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot make {folder}: {e.strerror}", "name a folder you can write"
                         ) from None
    out = []
    for name, text in texts().items():
        path = folder / name
        try:
            old = path.read_text(encoding="utf-8") if path.exists() else None
            if old != text:
                write_atomic(path, text, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror}",
                             "name a folder you can write") from None
        out.append((path, "new" if old is None else "unchanged" if old == text else "updated"))
    return out
