from types import SimpleNamespace

import pytest

from llmctl import gpu
from llmctl.errors import UsageError


class FakeNVML:
    """Two GPUs; pid 10 on both, pid 11 on one; pid 99 is someone else's."""

    def __init__(self, fail_init=False):
        self.fail_init = fail_init
        self.shut = False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100" if h == 0 else "NVIDIA H100"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=80 * gpu.GIB, free=(79 - h) * gpu.GIB)

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}"

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (9, 0)

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlSystemGetProcessName(self, pid):
        return {10: b"/usr/bin/python3", 99: "ollama", 11: "vllm"}.get(pid) or (_ for _ in ()).throw(
            RuntimeError("no such process"))

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        procs = [SimpleNamespace(pid=10, usedGpuMemory=gpu.GIB), SimpleNamespace(pid=99,
                                                                               usedGpuMemory=5)]
        if h == 1:
            procs.append(SimpleNamespace(pid=11, usedGpuMemory=None))  # not reported
        return procs


def test_read_gpus():
    n = FakeNVML()
    gpus = gpu.read_gpus(n)
    assert [g.name for g in gpus] == ["NVIDIA H100", "NVIDIA H100"]
    assert gpus[1].free_bytes == 78 * gpu.GIB and n.shut


def test_readings_carry_every_field_and_the_other_processes():
    gpus, driver, cuda = gpu.read_nvml(FakeNVML())
    assert (driver, cuda) == ("550.54.15", "12.4")
    g = gpus[1]
    assert (g.uuid, g.compute_capability, g.used_bytes) == ("GPU-1", "9.0", 2 * gpu.GIB)
    assert [(p.pid, p.name, p.used_bytes) for p in g.processes] == [
        (10, "python3", gpu.GIB), (99, "ollama", 5), (11, "vllm", 0)]


def test_a_gpu_that_answers_only_the_basics_is_still_read():
    class Old(FakeNVML):
        nvmlDeviceGetUUID = nvmlDeviceGetCudaComputeCapability = None  # not callable

    g = gpu.read_gpus(Old())[0]
    assert (g.uuid, g.compute_capability, g.total_bytes) == ("", "", 80 * gpu.GIB)


@pytest.mark.parametrize("spec, want", [
    ("1x96GiB", [(96, 96)]),
    ("2x24GiB", [(24, 24), (24, 24)]),
    ("80GiB:used=10GiB", [(80, 70)]),
    ("80GiB,2x24GiB", [(80, 80), (24, 24), (24, 24)]),
])
def test_assumed_gpus(spec, want):
    r = gpu.assumed(spec)
    assert [(g.total_bytes // gpu.GIB, g.free_bytes // gpu.GIB) for g in r.gpus] == want
    assert r.device == "cuda" and r.assumed == spec


def test_assumed_cpu_and_bad_specs():
    r = gpu.assumed("cpu:32GiB:16")
    assert r.device == "cpu" and r.ram_total_bytes == 32 * gpu.GIB and len(r.cores) == 16
    assert gpu.parse_size("80GB") == 80 * 10**9
    for bad in ("x24GiB", "24GiB:used=30GiB", "24GiB:free=1GiB", "cpu:", "cpu:8GiB:x",
                "2y24GiB", ""):
        with pytest.raises(UsageError):
            gpu.assumed(bad)


def test_no_driver_means_no_gpu():
    assert gpu.read_gpus(FakeNVML(fail_init=True)) == ()
    assert gpu.process_memory([10], FakeNVML(fail_init=True)) == {}


def test_process_memory_sums_over_gpus_and_ignores_others():
    assert gpu.process_memory([10, 11, 12], FakeNVML()) == {10: 2 * gpu.GIB, 11: 0}
    assert gpu.process_memory([], FakeNVML()) == {}


def test_gauges_read_memory_utilisation_temperature_and_power():
    class WithGauges(FakeNVML):
        def nvmlDeviceGetMemoryInfo(self, h):
            return SimpleNamespace(total=80 * gpu.GIB, free=(79 - h) * gpu.GIB,
                                   used=(1 + h) * gpu.GIB)

        def nvmlDeviceGetUtilizationRates(self, h):
            if h == 1:
                raise RuntimeError("Not Supported")  # a MIG slice: left out, not an error
            return SimpleNamespace(gpu=75, memory=40)

        def nvmlDeviceGetTemperature(self, h, sensor):
            return 61

        def nvmlDeviceGetPowerUsage(self, h):
            return 250_500  # milliwatts

    g0, g1 = gpu.gauges(WithGauges())
    assert (g0.index, g0.name, g0.used_bytes, g0.total_bytes) == (0, "NVIDIA H100", gpu.GIB,
                                                                  80 * gpu.GIB)
    assert (g0.utilization, g0.temperature_c, g0.power_w) == (0.75, 61.0, 250.5)
    assert g1.utilization is None and g1.used_bytes == 2 * gpu.GIB
    assert gpu.gauges(FakeNVML(fail_init=True)) == ()  # no driver: no cards, no error
