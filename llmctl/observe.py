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
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import gpu as gpumod
from . import procs
from .lifecycle import State

STATES = tuple(str(s) for s in State if s != State.ORPHANED)  # ORPHANED: status only


class Host(NamedTuple):
    memory_total: int
    memory_available: int
    cpus: int
    cpu_busy_s: float
    cpu_idle_s: float


def host() -> Host:
    import psutil

    vm, t = psutil.virtual_memory(), psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    # guest time is counted in user already (Linux's /proc/stat)
    busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq",
                                            "steal"))
    return Host(int(vm.total), int(vm.available), psutil.cpu_count() or 1, busy, idle)


class Observer:
    """The collector: `text()` is one exposition of the machine's series."""

    def __init__(self, backends: Iterable[Any], *,
                 gauges: Callable[[], tuple[Any, ...]] = gpumod.gauges,
                 group: Callable[[int], list[int]] = procs.group_pids,
                 readings: Callable[[], Host] = host) -> None:
        self.backends = list(backends)
        self._gauges, self._group, self._readings = gauges, group, readings
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
        yield from self._host()
        yield from self._gpus()

    def _host(self) -> Iterable[Any]:
        """The machine's memory and CPU time, for the hardware dashboard on a machine with
        no GPU (and beside the GPUs on one)."""
        h = self._readings()
        total = GaugeMetricFamily("llmctl_host_memory_total_bytes", "The machine's memory")
        total.add_metric([], float(h.memory_total))
        avail = GaugeMetricFamily("llmctl_host_memory_available_bytes", "Memory that can be "
                                  "had without swapping (MemAvailable)")
        avail.add_metric([], float(h.memory_available))
        cores = GaugeMetricFamily("llmctl_host_cpus", "Logical CPUs")
        cores.add_metric([], float(h.cpus))
        cpu = CounterMetricFamily("llmctl_host_cpu_seconds", "CPU time of the whole machine, "
                                  "busy (all but idle and iowait) and idle", labels=["mode"])
        cpu.add_metric(["busy"], h.cpu_busy_s)
        cpu.add_metric(["idle"], h.cpu_idle_s)
        yield from (total, avail, cores, cpu)

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
