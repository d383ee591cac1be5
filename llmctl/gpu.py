"""Readings of the machine: NVML for GPUs (the only pynvml importer), psutil for RAM and cores.

May import: nothing of the package. Returns frozen dataclasses; never prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Readings:
    gpus: tuple[Gpu, ...]
    ram_total_bytes: int
    ram_available_bytes: int
    cores: tuple[int, ...]  # the CPU ids this process may run on

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


def read_gpus(nvml: Any = None) -> tuple[Gpu, ...]:
    """Every GPU NVML sees; () when there is no driver, no library or no GPU."""
    with _nvml(nvml) as n:
        if n is None:
            return ()
        try:
            out = []
            for i in range(n.nvmlDeviceGetCount()):
                h = n.nvmlDeviceGetHandleByIndex(i)
                mem = n.nvmlDeviceGetMemoryInfo(h)
                name = n.nvmlDeviceGetName(h)
                if isinstance(name, bytes):
                    name = name.decode()
                out.append(Gpu(i, name, int(mem.total), int(mem.free)))
            return tuple(out)
        except Exception:
            return ()


def read(nvml: Any = None) -> Readings:
    import psutil

    vm = psutil.virtual_memory()
    try:
        cores = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = tuple(range(os.cpu_count() or 1))
    return Readings(read_gpus(nvml), int(vm.total), int(vm.available), cores)


def detect_device() -> str:
    """'cuda' when NVML sees a GPU, else 'cpu'."""
    return "cuda" if read_gpus() else "cpu"


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
