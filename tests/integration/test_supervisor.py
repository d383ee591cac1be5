"""The supervisor against real processes: the stand-in upstream started, killed, hung,
crash-looping; process groups reaped; ports checked before a start. Timing (backoff
delays, the quick-failure count) is replayed without processes or waiting in
tests/unit/test_supervisor.py."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

from llmctl import config
from llmctl import procs as st
from llmctl.engine import Command
from llmctl.lifecycle import State
from llmctl.supervisor import DeviceGate, ManagedBackend, Policy

from .conftest import FAKE, FakeClock, free_port

BACKOFF, FATAL, RUNNING, STOPPED = State.BACKOFF, State.FATAL, State.RUNNING, State.STOPPED


def backend(tmp_path, *fake_args: str, port: int | None = None, clock=None,
            **policy) -> ManagedBackend:
    port = port or free_port()
    m = config.ModelConfig(key="coder", name="fake", source="/x", port=port)
    cmd = Command((sys.executable, str(FAKE), "--port", str(port), "--served-model-name",
                   "fake", *fake_args), {})
    policy.setdefault("health_interval", 0.3)
    policy.setdefault("stop_grace", 3.0)
    return ManagedBackend(m, cmd, tmp_path / "coder.log", policy=Policy(**policy), clock=clock)


async def until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def run(b: ManagedBackend, body) -> None:
    """Run `body()` and stop the backend whatever happened: a failed assertion must not
    leave the stand-in server's group (and its hour-long grandchild) running."""
    async def go():
        try:
            await body()
        finally:
            await b.stop()

    asyncio.run(go())


def test_start_runs_and_stop_leaves_no_process(tmp_path):
    b = backend(tmp_path, "--child")

    async def body():
        assert await b.start()
        assert b.state == RUNNING and b.ready_at
        pgid = b.pid
        assert len(st.group_pids(pgid)) == 2  # the server and its "EngineCore"
        await b.stop()
        assert b.state == STOPPED
        assert st.group_pids(pgid) == []
        assert st.port_free(b.model.port)

    run(b, body)


def test_sigkill_of_the_server_reaps_its_group_and_restarts(tmp_path):
    b = backend(tmp_path, "--child")

    async def body():
        assert await b.start()
        old = b.pid
        watch = asyncio.create_task(b.watch(DeviceGate()))
        os.kill(old, signal.SIGKILL)
        # The orphaned grandchild must be gone before the new server starts.
        assert await until(lambda: b.pid != old, 10)
        assert st.group_pids(old) == []
        assert await until(lambda: b.state == RUNNING, 20)
        assert b.restarts == 1 and b.last_exit == "killed by SIGKILL"
        await b.stop()
        await asyncio.wait_for(watch, 10)

    run(b, body)


def test_exit_during_the_first_start_is_fatal_with_the_log_tail_reason(tmp_path):
    b = backend(tmp_path, "--child", "--startup-delay", "0.2", "--exit-at-start", "4")

    async def body():
        assert not await b.start()
        assert b.state == FATAL
        assert "exited while starting (exit code 4): port in use" in b.reason
        assert st.group_pids(b.pid) == []

    run(b, body)


def test_never_healthy_is_fatal_after_the_start_timeout(tmp_path):
    # A real server that never turns healthy, in fake time: the start checks every 0.5 s
    # and gives up at the first check past its 2 s timeout.
    clock = FakeClock()
    b = backend(tmp_path, "--never-healthy", "--child", start_timeout=2.0, clock=clock)

    async def body():
        t0 = clock.now
        assert not await b.start()
        assert clock.now - t0 == 2.5
        assert b.state == FATAL and "not healthy after 2 s" in b.reason
        assert st.group_pids(b.pid) == []

    run(b, body)


def test_a_hung_server_is_detected_by_health_checks_and_restarted(tmp_path):
    b = backend(tmp_path, health_failures=2, health_timeout=0.5)

    async def body():
        assert await b.start()
        old = b.pid
        watch = asyncio.create_task(b.watch(DeviceGate()))
        import httpx

        async with httpx.AsyncClient() as c:
            await c.post(b.url + "/control/hang")
        assert await until(lambda: b.pid != old and b.state == RUNNING, 20)
        assert "stopped answering /health" in b.last_exit
        await b.stop()
        await asyncio.wait_for(watch, 10)

    run(b, body)


def test_crash_loop_ends_fatal_with_a_reason(tmp_path):
    b = backend(tmp_path, "--crash-after", "1.5", max_restarts=2, backoff_cap=0.2)
    seen: list[State] = []
    b.on_change = lambda: seen.append(b.state)  # every change, not a sample of them

    async def body():
        assert await b.start()
        await asyncio.wait_for(b.watch(DeviceGate()), 30)
        assert b.state == FATAL
        assert seen.count(BACKOFF) == 2 and seen.count(RUNNING) == 3
        assert "restarts in a row failed" in b.reason
        assert st.group_pids(b.pid) == []

    run(b, body)


def test_port_in_use_is_refused_before_starting(tmp_path):
    async def go():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            b = backend(tmp_path, port=s.getsockname()[1])
            assert not await b.start()
            assert b.state == FATAL and f"port {b.model.port} is in use" in b.reason
            assert b.proc is None

    asyncio.run(go())
