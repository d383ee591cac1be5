"""The machine's series for /metrics, with fake backends and fake NVML readings: every model
and state at 0 from the start, a process group's memory and CPU time, and the GPU
gauges that exist only on a machine with a card (declared as conditional for the
dashboards' check)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from llmctl import config
from llmctl.gpu import Gauges
from llmctl.observe import STATES, Observer


@dataclass
class B:
    model: config.ModelConfig
    state: str = "RUNNING"
    proc: object = None
    starts: int = 0
    swaps: int = 0
    idle_stops: int = 0
    last_start_s: float | None = None
    extra: dict = field(default_factory=dict)


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def managed(name: str) -> config.ModelConfig:
    return config.ModelConfig(key=name, name=name, source="org/x", port=8000)


def test_states_and_life_of_each_model_with_a_real_process_group():
    child = subprocess.Popen([sys.executable, "-c", "sum(range(10**7)); import time; "
                              "time.sleep(30)"], start_new_session=True)
    try:
        a = B(managed("coder"), proc=child, starts=2, swaps=1, idle_stops=3, last_start_s=47.5)
        b = B(managed("general"), state="STOPPED")
        u = B(config.ModelConfig(key="far", name="far", url="http://x"), state="RUNNING")
        got = samples(Observer([a, b, u], gauges=lambda: ()).text())
    finally:
        os.killpg(child.pid, 9)
        child.wait()
    for model in ("coder", "general", "far"):  # every state, at 0 or 1, from the start
        assert sum(got[("llmctl_backend_state", (("model", model), ("state", s)))]
                   for s in STATES) == 1.0
    assert got[("llmctl_backend_state", (("model", "general"), ("state", "STOPPED")))] == 1.0
    assert got[("llmctl_backend_resident_bytes", (("model", "coder"),))] > 1_000_000
    assert got[("llmctl_backend_resident_bytes", (("model", "general"),))] == 0.0
    assert got[("llmctl_backend_starts_total", (("model", "coder"),))] == 2.0
    assert got[("llmctl_backend_swaps_total", (("model", "coder"),))] == 1.0
    assert got[("llmctl_backend_idle_stops_total", (("model", "coder"),))] == 3.0
    assert got[("llmctl_backend_last_start_seconds", (("model", "coder"),))] == 47.5
    assert ("llmctl_backend_cpu_seconds_total", (("model", "general"),)) in got
    assert not any(name.startswith("llmctl_gpu_") for name, _ in got)  # no card here
    assert not any(labels == (("model", "far"),) for _, labels in got)  # a url model: state only


def test_gpu_gauges_from_nvml_readings():
    cards = (Gauges(0, "RTX 6000", 20 << 30, 48 << 30, 0.75, 61.0, 250.5),
             Gauges(1, "RTX 6000", 1 << 30, 48 << 30, None, None, None))
    got = samples(Observer([], gauges=lambda: cards).text())
    g0 = (("gpu", "0"), ("name", "RTX 6000"))
    assert got[("llmctl_gpu_memory_used_bytes", g0)] == float(20 << 30)
    assert got[("llmctl_gpu_memory_total_bytes", g0)] == float(48 << 30)
    assert got[("llmctl_gpu_utilization_ratio", g0)] == 0.75
    assert got[("llmctl_gpu_temperature_celsius", g0)] == 61.0
    assert got[("llmctl_gpu_power_watts", g0)] == 250.5
    g1 = (("gpu", "1"), ("name", "RTX 6000"))
    assert ("llmctl_gpu_utilization_ratio", g1) not in got  # NVML could not say: left out
    assert got[("llmctl_gpu_memory_used_bytes", g1)] == float(1 << 30)
