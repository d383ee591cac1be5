"""Readings of the machine: NVML for GPUs (the only pynvml importer), psutil for RAM and
cores, and the same readings made up from a `plan --assume` spec.

May import: errors. Returns frozen dataclasses; never prints.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

GIB = 1024**3


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU (another user's vLLM, a notebook, a game…)."""

    pid: int
    name: str
    used_bytes: int


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    uuid: str = ""
    used_bytes: int = 0
    compute_capability: str = ""  # "9.0"
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class Readings:
    gpus: tuple[Gpu, ...]
    ram_total_bytes: int
    ram_available_bytes: int
    cores: tuple[int, ...]  # the CPU ids this process may run on
    driver_version: str = ""
    cuda_version: str = ""  # the highest CUDA the driver supports, "12.4"
    assumed: str = ""  # the `--assume` spec these readings were made from; "" when real

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


@contextlib.contextmanager
def _nvml(nvml: Any = None) -> Iterator[Any]:
    """NVML, initialised for the block and shut down after it; None when there is no
    library, no driver or no GPU (NVMLError_LibraryNotFound, DriverNotLoaded, …)."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            yield None
            return
    try:
        nvml.nvmlInit()
    except Exception:
        yield None
        return
    try:
        yield nvml
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _optional(nvml: Any, query: str, *args: Any, default: Any = "") -> Any:
    """One NVML query that older drivers, MIG slices or a fake may not answer."""
    try:
        return getattr(nvml, query)(*args)
    except Exception:
        return default


def _process_name(nvml: Any, pid: int) -> str:
    name = _optional(nvml, "nvmlSystemGetProcessName", pid)
    if not name:
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
    return os.path.basename(_text(name))


def _gpu(nvml: Any, i: int) -> Gpu:
    h = nvml.nvmlDeviceGetHandleByIndex(i)
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    cc = _optional(nvml, "nvmlDeviceGetCudaComputeCapability", h, default=None)
    procs = []
    for p in _optional(nvml, "nvmlDeviceGetComputeRunningProcesses", h, default=[]) or []:
        procs.append(GpuProcess(int(p.pid), _process_name(nvml, int(p.pid)),
                                int(getattr(p, "usedGpuMemory", None) or 0)))
    return Gpu(i, _text(nvml.nvmlDeviceGetName(h)), int(mem.total), int(mem.free),
               uuid=_text(_optional(nvml, "nvmlDeviceGetUUID", h)),
               used_bytes=int(getattr(mem, "used", int(mem.total) - int(mem.free))),
               compute_capability=f"{cc[0]}.{cc[1]}" if cc else "",
               processes=tuple(procs))


def read_gpus(nvml: Any = None) -> tuple[Gpu, ...]:
    """Every GPU NVML sees; () when there is no driver, no library or no GPU."""
    return read_nvml(nvml)[0]


def read_nvml(nvml: Any = None) -> tuple[tuple[Gpu, ...], str, str]:
    """(GPUs, driver version, CUDA version); ((), "", "") without NVML."""
    with _nvml(nvml) as n:
        if n is None:
            return (), "", ""
        try:
            gpus = tuple(_gpu(n, i) for i in range(n.nvmlDeviceGetCount()))
        except Exception:
            return (), "", ""
        driver = _text(_optional(n, "nvmlSystemGetDriverVersion"))
        cuda = _optional(n, "nvmlSystemGetCudaDriverVersion", default=0)
        return gpus, driver, f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else ""


def read(nvml: Any = None) -> Readings:
    import psutil

    vm = psutil.virtual_memory()
    try:
        cores = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = tuple(range(os.cpu_count() or 1))
    gpus, driver, cuda = read_nvml(nvml)
    return Readings(gpus, int(vm.total), int(vm.available), cores, driver, cuda)


def without(r: Readings, pids: set[int], rss_bytes: int = 0) -> Readings:
    """The readings as if `pids` (a running stack of ours) were not there: their GPU memory
    free again, their resident memory available again. `plan` and `up --restart` plan the
    config for the machine it will run on, not around the stack it replaces."""
    import dataclasses

    if not pids and not rss_bytes:
        return r
    gpus = []
    for g in r.gpus:
        mine = sum(p.used_bytes for p in g.processes if p.pid in pids)
        gpus.append(dataclasses.replace(
            g, free_bytes=min(g.total_bytes, g.free_bytes + mine),
            used_bytes=max(0, g.used_bytes - mine),
            processes=tuple(p for p in g.processes if p.pid not in pids)))
    return dataclasses.replace(r, gpus=tuple(gpus), ram_available_bytes=min(
        r.ram_total_bytes, r.ram_available_bytes + rss_bytes))


def detect_device() -> str:
    """'cuda' when NVML sees a GPU, else 'cpu'."""
    return "cuda" if read_gpus() else "cpu"


@dataclass(frozen=True)
class Gauges:
    """One card's live readings, for /metrics: None where NVML cannot say."""

    index: int
    name: str
    used_bytes: int
    total_bytes: int
    utilization: float | None  # 0..1, the GPU's busy fraction over NVML's last sample
    temperature_c: float | None
    power_w: float | None


def gauges(nvml: Any = None) -> tuple[Gauges, ...]:
    """Every card's memory, utilisation, temperature and power; () with no NVML or GPU."""
    out = []
    with _nvml(nvml) as n:
        if n is None:
            return ()
        try:
            count = n.nvmlDeviceGetCount()
        except Exception:
            return ()
        for i in range(count):
            try:
                h = n.nvmlDeviceGetHandleByIndex(i)
                mem = n.nvmlDeviceGetMemoryInfo(h)
            except Exception:
                continue
            util = _optional(n, "nvmlDeviceGetUtilizationRates", h, default=None)
            temp = _optional(n, "nvmlDeviceGetTemperature", h, 0, default=None)  # 0: the GPU die
            power = _optional(n, "nvmlDeviceGetPowerUsage", h, default=None)  # milliwatts
            out.append(Gauges(i, _text(n.nvmlDeviceGetName(h)), int(mem.used), int(mem.total),
                              util.gpu / 100 if util is not None else None,
                              float(temp) if temp is not None else None,
                              power / 1000 if power is not None else None))
    return tuple(out)


def process_memory(pids: set[int] | list[int], nvml: Any = None) -> dict[int, int]:
    """GPU bytes held by each of `pids`, over every GPU (NVML's compute processes).

    {} when NVML is not there; a pid that holds nothing is absent."""
    want = set(pids)
    out: dict[int, int] = {}
    if not want:
        return out
    with _nvml(nvml) as n:
        if n is None:
            return out
        try:
            for i in range(n.nvmlDeviceGetCount()):
                h = n.nvmlDeviceGetHandleByIndex(i)
                for p in n.nvmlDeviceGetComputeRunningProcesses(h):
                    used = getattr(p, "usedGpuMemory", None) or 0
                    if p.pid in want:
                        out[p.pid] = out.get(p.pid, 0) + int(used)
        except Exception:
            pass  # what was read so far
    return out


# ── readings for hardware that is not here ───────────────────────────────────

_UNITS = {"": GIB, "gib": GIB, "gb": 10**9, "mib": 1024**2, "mb": 10**6, "tib": 1024**4,
          "tb": 10**12, "g": GIB, "m": 1024**2, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
ASSUME_HELP = ("`1x96GiB`, `2x24GiB`, `80GiB:used=10GiB`, `80GiB,24GiB` (cards of two "
               "sizes) or `cpu:32GiB:16` (RAM and cores)")


def parse_size(text: str) -> int:
    """'96GiB' → bytes; GB and MB are decimal, GiB, MiB, TiB (and a bare number) binary."""
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"not a size: {text!r}", "write it like 24GiB, 80GB or 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def assumed(spec: str, cores: int = 16) -> Readings:
    """Readings for hardware that is not present, from `plan --assume SPEC`."""
    try:
        return _assumed(spec.strip(), cores)
    except UsageError as e:
        if e.message.startswith("cannot read"):
            raise
        raise UsageError(f"cannot read --assume {spec.strip()!r}: {e.message}",
                         f"write it like {ASSUME_HELP}") from None


def _assumed(spec: str, cores: int) -> Readings:
    bad = UsageError(f"cannot read --assume {spec!r}", f"write it like {ASSUME_HELP}")
    if spec.lower().startswith("cpu:"):
        parts = spec.split(":")[1:]
        if not 1 <= len(parts) <= 2:
            raise bad
        ram = parse_size(parts[0])
        n = int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else None
        if len(parts) == 2 and n is None:
            raise bad
        return Readings((), ram, ram, tuple(range(n or cores)), assumed=spec)
    gpus: list[Gpu] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        count, _, card = part.rpartition("x") if re.match(r"^\d+x", part) else ("1", "", part)
        size, *opts = card.split(":")
        total = parse_size(size)
        used = 0
        for o in opts:
            key, _, value = o.partition("=")
            if key.strip() != "used":
                raise bad
            used = parse_size(value)
        if used >= total or not count.isdigit() or int(count) < 1:
            raise bad
        for _ in range(int(count)):
            others = (GpuProcess(0, "other processes", used),) if used else ()
            gpus.append(Gpu(len(gpus), f"assumed {size.strip()}", total, total - used,
                            used_bytes=used, processes=others))
    if not gpus:
        raise bad
    return Readings(tuple(gpus), 0, 0, tuple(range(cores)), assumed=spec)
