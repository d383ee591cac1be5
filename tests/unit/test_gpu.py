from types import SimpleNamespace

from llmctl import gpu


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


def test_no_driver_means_no_gpu():
    assert gpu.read_gpus(FakeNVML(fail_init=True)) == ()
    assert gpu.process_memory([10], FakeNVML(fail_init=True)) == {}


def test_process_memory_sums_over_gpus_and_ignores_others():
    assert gpu.process_memory([10, 11, 12], FakeNVML()) == {10: 2 * gpu.GIB, 11: 0}
    assert gpu.process_memory([], FakeNVML()) == {}
