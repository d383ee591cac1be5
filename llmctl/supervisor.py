"""Backends: the vLLM servers llmctl starts and the `url =` servers it only checks.

May import: config, engine, lifecycle, logs, procs. Runs inside the daemon's event loop.

States are supervisord's (lifecycle.py draws them). RUNNING means `/health`
answered and a one-token request succeeded, so the proxy only ever routes to a
server that can answer. A state changes only through `Backend._to`, which
reports every change (`on_change`).

Seams, all in the constructors: `clock` (time and sleep; tests pass one that never
sleeps), `http` (the health-check client), and for managed backends `popen` and
`procs` (spawning and stopping process groups), so whole crash/restart histories
replay in a unit test without a process or a second of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import procs as procs_module
from .config import ModelConfig
from .engine import Command
from .lifecycle import State
from .logs import PHASE_ORDER, START_MARK, LogPump, kv_report, likely_cause, log_tail, phase_of


@dataclass(frozen=True)
class Policy:
    """How patient the supervisor is; supervisord's startsecs/startretries in spirit."""

    start_timeout: float = 900.0  # a start not RUNNING by then is FATAL
    health_interval: float = 5.0  # between health checks while RUNNING
    health_timeout: float = 10.0  # one health check's limit
    health_failures: int = 3  # missed checks in a row that count as dead
    backoff_base: float = 1.0  # first restart delay; doubles per quick failure …
    backoff_cap: float = 30.0  # … up to this
    max_restarts: int = 5  # quick failures in a row before FATAL
    stable_after: float = 60.0  # RUNNING this long resets the quick-failure count
    stop_grace: float = 10.0  # TERM → KILL

    def backoff(self, failures: int) -> float:
        return min(self.backoff_base * 2.0 ** (failures - 1), self.backoff_cap)


class Clock:
    """Time as the supervisor sees it."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Backend:
    """What every backend has: a model, a state with one door, health checks, a report."""

    def __init__(self, model: ModelConfig, *, policy: Policy | None = None,
                 on_change: Callable[[], None] = lambda: None, clock: Clock | None = None,
                 http: httpx.AsyncClient | None = None, fim: str | None = None) -> None:
        self.model = model
        self.fim = fim  # the fill-in-the-middle template family the proxy renders, or None
        self.policy = policy or Policy()
        self.on_change = on_change
        self.clock = clock or Clock()
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(self.policy.health_timeout, connect=2.0), trust_env=False)
        self._state = State.STOPPED
        self.reason: str | None = None  # why FATAL / BACKOFF, for `status`
        self.ready_at: float | None = None  # wall time of the last RUNNING
        self.in_flight = 0  # counted by the proxy
        self._stopping = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def url(self) -> str:
        return self.model.upstream

    def _to(self, state: State, reason: str | None = None) -> None:
        """The one door for state changes: every change is reported. Once a stop has
        begun, only STOPPING and STOPPED may follow (a watch that sees the process die
        under `stop` must not call it a crash)."""
        if self._stopping and state not in (State.STOPPING, State.STOPPED):
            return
        self._state = state
        if reason is not None or state in (State.RUNNING, State.STARTING):
            self.reason = reason
        if state == State.RUNNING:
            self.ready_at = self.clock.time()
        self.on_change()

    def fail(self, reason: str) -> None:
        """Mark a backend that cannot start at all (its weights are missing, say)."""
        self._to(State.FATAL, reason)

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.model.name, "aliases": list(self.model.names[1:]),
                "state": str(self.state), "managed": self.model.managed, "url": self.url,
                "source": self.model.source or None, "fim": self.fim,
                "port": None, "pid": None, "pgid": None, "started_at": None,
                "ready_at": self.ready_at, "restarts": 0, "last_exit": None,
                "reason": self.reason, "log": None, "planned_bytes": 0,
                "in_flight": self.in_flight, "phase": None, "last_start_s": None,
                "expected_start_s": None}

    async def healthy(self) -> bool:
        try:
            r = await self._http.get(self.url + "/health")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def start(self) -> bool:
        raise NotImplementedError

    async def watch(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        self._stopping = True
        self._to(State.STOPPED)
        await self._http.aclose()


class RemoteBackend(Backend):
    """A `url =` server: routed to and health-checked, never started or stopped."""

    async def healthy(self) -> bool:
        # Not every OpenAI-compatible server has /health; one that lists models is up.
        if await super().healthy():
            return True
        try:
            r = await self._http.get(self.url + "/v1/models")
        except httpx.HTTPError:
            return False
        return r.status_code < 500

    async def _check(self) -> bool:
        ok = await self.healthy()
        if ok != (self.state == State.RUNNING):
            self._to(State.RUNNING if ok else State.BACKOFF,
                     None if ok else f"{self.url} is not answering")
        return ok

    async def start(self) -> bool:
        self._to(State.STARTING)
        return await self._check()

    async def watch(self) -> None:
        while not self._stopping:
            await self.clock.sleep(self.policy.health_interval)
            if not self._stopping:
                await self._check()


class ManagedBackend(Backend):
    """A vLLM server llmctl starts, in a process group of its own, and restarts when it dies.

    After the first start, `watch` is a small state machine: RUNNING watches the process
    and its health until it dies; BACKOFF waits the delay, then starts it again; FATAL,
    STOPPING and STOPPED end the watch."""

    def __init__(self, model: ModelConfig, cmd: Command, log_path: Path, *,
                 planned_bytes: int = 0, planned_kv_tokens: int | None = None,
                 expected_start_s: float | None = None,
                 popen: Callable[..., Any] = subprocess.Popen, procs: Any = procs_module,
                 **kw: Any) -> None:
        super().__init__(model, **kw)
        self.cmd, self.log_path = cmd, log_path
        self.planned_bytes = planned_bytes
        self.planned_kv_tokens = planned_kv_tokens
        self.reported_kv: tuple[int, float] | None = None  # (tokens, concurrency) vLLM logged
        self.expected_start_s = expected_start_s  # how long the previous start took
        self._popen, self._procs = popen, procs
        self.proc: Any = None
        self.pgid_start: int | None = None  # the leader's start time: whose group this is
        self.started_at: float | None = None  # wall time of the current process's start
        self.restarts = 0
        self.last_exit: str | None = None
        self.phase: str | None = None  # while STARTING: what the vLLM log says it is doing
        self.last_start_s: float | None = None  # how long the last successful start took
        self._quick_failures = 0
        self._delay = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "port": self.model.port,
                "pid": self.pid, "pgid": self.pid,  # start_new_session: the pid leads its group
                "pgid_start": self.pgid_start,
                "started_at": self.started_at, "restarts": self.restarts,
                "last_exit": self.last_exit, "log": str(self.log_path),
                "planned_bytes": self.planned_bytes,
                "kv_tokens_planned": self.planned_kv_tokens,
                "kv_tokens_reported": self.reported_kv[0] if self.reported_kv else None,
                "concurrency_reported": self.reported_kv[1] if self.reported_kv else None,
                "phase": self.phase if self.state == State.STARTING else None,
                "last_start_s": self.last_start_s, "expected_start_s": self.expected_start_s}

    # ── the transitions ──
    async def start(self) -> bool:
        """The first start: True once RUNNING; False when it failed (FATAL)."""
        await self._launch()
        return self.state == State.RUNNING

    async def watch(self) -> None:
        while not self._stopping:
            if self.state == State.RUNNING:
                await self._serve()
            elif self.state == State.BACKOFF:
                await self._backoff()
            else:  # FATAL, or stopped meanwhile
                return

    async def _launch(self) -> None:
        """STARTING → RUNNING, or FATAL (first start, timeout), or BACKOFF (a restart died)."""
        if not self._procs.port_free(self.model.port):
            self._to(State.FATAL, f"port {self.model.port} is in use by another process")
            return
        self.phase = "starting"
        self._to(State.STARTING)
        try:
            self._spawn()
        except OSError as e:
            self._to(State.FATAL, f"cannot start {self.cmd.argv[0]}: {e}")
            return
        self.on_change()
        deadline = self.clock.monotonic() + self.policy.start_timeout
        while not self._stopping:
            if self.proc.poll() is not None:
                why = self._exit_text()
                await self._reap()
                cause = likely_cause(log_tail(self.log_path))
                detail = f"exited while starting ({why})" + (f": {cause}" if cause else "")
                if self.restarts == 0:
                    # Retrying a missing model or an out-of-memory start only delays the error.
                    self.last_exit = why
                    self._to(State.FATAL, detail)
                else:
                    self._crashed(why, detail)
                return
            if await self.healthy() and await self._warm_up():
                self.last_start_s = round(self.clock.time() - (self.started_at or 0.0), 1)
                self.reported_kv = kv_report(self.log_path)  # read back beside the plan
                self._to(State.RUNNING)
                return
            phase = phase_of(log_tail(self.log_path, 80))
            if PHASE_ORDER.index(phase) > PHASE_ORDER.index(self.phase or "starting"):
                self.phase = phase
                self.on_change()
            if self.clock.monotonic() > deadline:
                await self._reap()
                self.last_exit = "did not become healthy"
                self._to(State.FATAL, f"not healthy after {self.policy.start_timeout:.0f} s")
                return
            await self.clock.sleep(0.5)

    async def _serve(self) -> None:
        """RUNNING until the process exits or misses `health_failures` checks in a row."""
        misses = 0
        while not self._stopping:
            exited = await self._exits_within(self.policy.health_interval)
            if self._stopping:
                return
            if exited:
                why = self._exit_text()
                await self._reap()
                self._crashed(why)
                return
            misses = 0 if await self.healthy() else misses + 1
            if misses >= self.policy.health_failures:
                await self._reap()
                self._crashed(f"stopped answering /health ({misses} checks)")
                return

    def _crashed(self, why: str, detail: str | None = None) -> None:
        """→ BACKOFF with the next delay, or FATAL after too many quick failures."""
        self.last_exit = why
        if self.ready_at and self.clock.time() - self.ready_at > self.policy.stable_after:
            self._quick_failures = 0  # it ran long enough: this is a new story
        self._quick_failures += 1
        if self._quick_failures > self.policy.max_restarts:
            self._to(State.FATAL, f"{self._quick_failures - 1} restarts in a row failed; "
                     f"last: {detail or why}")
            return
        self._delay = self.policy.backoff(self._quick_failures)
        self._to(State.BACKOFF, f"{detail or why}; restarting in {self._delay:.1f} s")

    async def _backoff(self) -> None:
        await self.clock.sleep(self._delay)
        if not self._stopping:
            self.restarts += 1
            await self._launch()

    async def stop(self) -> None:
        self._stopping = True
        if self.proc is not None:
            self._to(State.STOPPING)
            await self._reap()
            if self.proc.returncode is not None:
                self.last_exit = self.last_exit or self._exit_text()
        await super().stop()

    # ── the process ──
    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Output goes through a pipe to a size-capped, rotated file: a server that runs
        # for weeks cannot fill the disk.
        pump = LogPump(self.log_path)
        pump.write(f"\n{START_MARK} {' '.join(self.cmd.argv)}\n".encode())
        r, w = os.pipe()
        try:
            self.proc = self._popen(
                list(self.cmd.argv), env={**os.environ, **self.cmd.env},
                stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=procs_module.die_with_parent, close_fds=True)
        except BaseException:
            os.close(r)
            pump.close()
            raise
        finally:
            os.close(w)
        pump.follow(r)
        self.pgid_start = procs_module.start_ticks(self.proc.pid)
        self.started_at = self.clock.time()
        self.ready_at = None

    async def _warm_up(self) -> bool:
        """One one-token request: a server that passes /health can still fail its first request."""
        try:
            r = await self._http.post(self.url + "/v1/completions", timeout=120.0, json={
                "model": self.model.name, "prompt": "Hello", "max_tokens": 1})
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def _exits_within(self, seconds: float) -> bool:
        """Watch the process for up to `seconds`; True as soon as it has exited."""
        deadline = self.clock.monotonic() + seconds
        while self.clock.monotonic() < deadline and not self._stopping:
            if self.proc.poll() is not None:
                return True
            await self.clock.sleep(0.2)
        return self.proc.poll() is not None

    def _exit_text(self) -> str:
        rc = self.proc.returncode if self.proc is not None else None
        if rc is None:
            return "unknown"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exit code {rc}"

    async def _reap(self) -> None:
        """Kill whatever is left of the group: SIGKILL of the API server leaves
        VLLM::EngineCore and VLLM::Worker running and holding memory."""
        if self.proc is None:
            return
        await asyncio.to_thread(self._procs.stop_group, self.proc.pid, self.policy.stop_grace)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=0)


class Supervisor:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Check the `url` backends, start managed ones one after another, then watch all."""
        for b in self.backends:
            if isinstance(b, RemoteBackend):
                await b.start()
                self._tasks.append(asyncio.create_task(b.watch()))
        for b in self.backends:
            if isinstance(b, ManagedBackend) and b.state != State.FATAL:
                # vLLM profiles free memory at start: start the next server only after
                # this one is healthy, or both mis-size their KV cache.
                await b.start()
                self._tasks.append(asyncio.create_task(b.watch()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(b.stop() for b in self.backends), return_exceptions=True)
