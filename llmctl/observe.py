"""What the stack's machine does, for the proxy's /metrics: each backend's state, its process
group's memory and CPU time, its on-demand life (starts, their length, swaps, idle stops),
and each GPU's memory, utilisation, temperature and power from NVML — so a workstation
needs no exporter of its own.

May import: gpu, lifecycle, procs (and prometheus_client). Read at scrape time, in a
thread (the daemon hands `Observer.text` to the proxy): /proc and NVML, a few
milliseconds. Series whose labels are known in advance (each model, each state) exist
from the first scrape, at 0, so a quiet stack shows zeros, not "no data".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import gpu as gpumod
from . import procs
from .lifecycle import State

STATES = tuple(str(s) for s in State if s != State.ORPHANED)  # ORPHANED: status only


class Observer:
    """The collector: `text()` is one exposition of the machine's series."""

    def __init__(self, backends: Iterable[Any], *,
                 gauges: Callable[[], tuple[Any, ...]] = gpumod.gauges,
                 group: Callable[[int], list[int]] = procs.group_pids) -> None:
        self.backends = list(backends)
        self._gauges, self._group = gauges, group
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def collect(self) -> Iterable[Any]:
        state = GaugeMetricFamily("llmctl_backend_state", "1 for the state each model is in "
                                  "(STOPPED, STARTING, RUNNING, …), 0 for the others",
                                  labels=["model", "state"])
        rss = GaugeMetricFamily("llmctl_backend_resident_bytes", "Resident memory of a "
                                "started model's process group", labels=["model"])
        cpu = CounterMetricFamily("llmctl_backend_cpu_seconds", "CPU time (user + system) "
                                  "of a started model's live process group", labels=["model"])
        starts = CounterMetricFamily("llmctl_backend_starts", "Starts that ended ready "
                                     "(by up, a request, by hand or after a crash)",
                                     labels=["model"])
        swaps = CounterMetricFamily("llmctl_backend_swaps", "Times a group member was "
                                    "swapped out (stopped or put to sleep) for another",
                                    labels=["model"])
        idle = CounterMetricFamily("llmctl_backend_idle_stops", "Stops after idle_stop "
                                   "without a request", labels=["model"])
        length = GaugeMetricFamily("llmctl_backend_last_start_seconds", "How long the last "
                                   "start took, to ready", labels=["model"])
        for b in self.backends:
            name = b.model.name
            for s in STATES:
                state.add_metric([name, s], 1.0 if str(b.state) == s else 0.0)
            if not b.model.managed:
                continue
            pids = self._group(b.proc.pid) if getattr(b, "proc", None) is not None and \
                b.proc.poll() is None else []
            rss.add_metric([name], float(procs.group_rss(pids) or 0) if pids else 0.0)
            cpu.add_metric([name], procs.group_cpu_seconds(pids) if pids else 0.0)
            starts.add_metric([name], float(getattr(b, "starts", 0)))
            swaps.add_metric([name], float(getattr(b, "swaps", 0)))
            idle.add_metric([name], float(getattr(b, "idle_stops", 0)))
            length.add_metric([name], float(getattr(b, "last_start_s", None) or 0.0))
        yield from (state, rss, cpu, starts, swaps, idle, length)
        yield from self._gpus()

    def _gpus(self) -> Iterable[Any]:
        cards = self._gauges()
        if not cards:
            return
        used = GaugeMetricFamily("llmctl_gpu_memory_used_bytes", "GPU memory in use (NVML)",
                                 labels=["gpu", "name"])
        total = GaugeMetricFamily("llmctl_gpu_memory_total_bytes", "GPU memory (NVML)",
                                  labels=["gpu", "name"])
        util = GaugeMetricFamily("llmctl_gpu_utilization_ratio", "Fraction of NVML's last "
                                 "sample period the GPU was busy", labels=["gpu", "name"])
        temp = GaugeMetricFamily("llmctl_gpu_temperature_celsius", "GPU die temperature",
                                 labels=["gpu", "name"])
        power = GaugeMetricFamily("llmctl_gpu_power_watts", "GPU power draw",
                                  labels=["gpu", "name"])
        for c in cards:
            labels = [str(c.index), c.name]
            used.add_metric(labels, float(c.used_bytes))
            total.add_metric(labels, float(c.total_bytes))
            for fam, value in ((util, c.utilization), (temp, c.temperature_c),
                               (power, c.power_w)):
                if value is not None:
                    fam.add_metric(labels, float(value))
        yield from (used, total, util, temp, power)
