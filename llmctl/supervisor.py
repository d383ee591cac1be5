"""Backends: the vLLM servers llmctl starts and the `url =` servers it only checks; and the
supervisor, which starts, stops and swaps them and admits every request.

May import: clock, config, engine, lifecycle, logs, procs, report, tools. Runs inside the daemon's event
loop.

States are supervisord's (lifecycle.py draws them). RUNNING means `/health`
answered and a one-token request succeeded, so the proxy only ever routes to a
server that can answer. A state changes only through `Backend._to`, which checks
the change against `lifecycle.TRANSITIONS` and reports it (`on_change`).

The proxy holds `async with supervisor.admit(backend, wait=…)` for each request's
life (Ollama's scheduler references in spirit): the supervisor alone counts requests
in flight and queued, starts models at rest, drains them, and words every refusal.

Seams, all in the constructors: `clock` (time and sleep; tests pass one that never
sleeps), `http` (the health-check client), and for managed backends `popen` and
`procs` (spawning and stopping process groups), so whole crash/restart histories
replay in a unit test without a process or a second of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import procs as procs_module
from .clock import Clock
from .config import ModelConfig
from .engine import Command
from .lifecycle import NotServing, State, allowed
from .logs import (
    PHASE_ORDER,
    PROFILING_RACE,
    START_MARK,
    LogPump,
    kv_report,
    likely_cause,
    log_tail,
    phase_of,
    this_start,
)
from .report import BackendReport, ManagedReport
from .tools import Abilities

log = logging.getLogger("llmctl.supervisor")


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
    idle_interval: float = 1.0  # how often idle models are looked for
    default_start_s: float = 60.0  # a start's expected length when none was measured yet

    def backoff(self, failures: int) -> float:
        return min(self.backoff_base * 2.0 ** (failures - 1), self.backoff_cap)


class DeviceGate:
    """One lock per device. vLLM 0.32 charges any change in free GPU memory during its
    start-up profiling to the instance that is starting (a drop shrinks its KV cache, a
    rise fails the start), so every start and every move that frees memory on a card
    (a crash's reap and restart, a swap out, sleep, an idle stop, a stop by hand) holds
    the locks of that card's devices: nothing disturbs a start. Different cards do not
    wait for each other. On CPU every backend shares "cpu": starts stay one at a time,
    as two starts on a few cores only slow each other."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, devices: Iterable[str]) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for d in sorted(set(devices)):  # one order for everyone: no deadlock
                await stack.enter_async_context(self._locks.setdefault(d, asyncio.Lock()))
            yield

    def busy(self, devices: Iterable[str]) -> bool:
        return any(self._locks[d].locked() for d in devices if d in self._locks)


class Backend:
    """What every backend has: a model, a state with one door, health checks, a report."""

    def __init__(self, model: ModelConfig, *, policy: Policy | None = None,
                 on_change: Callable[[], None] = lambda: None, clock: Clock | None = None,
                 http: httpx.AsyncClient | None = None, fim: str | None = None,
                 abilities: Abilities | None = None) -> None:
        self.model = model
        self.fim = fim  # the fill-in-the-middle template family the proxy renders, or None
        # Its tool-call and reasoning parsers, and whether it was trained for tools.
        self.abilities = abilities or Abilities(None, None, None)
        self.policy = policy or Policy()
        self.on_change = on_change
        self.clock = clock or Clock()
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(self.policy.health_timeout, connect=2.0), trust_env=False)
        # The Bearer value the server takes: a `url` model's configured key, or the key a
        # managed backend gets anew at each start (so only the proxy can call its /v1).
        self.upstream_auth: bytes | None = \
            b"Bearer " + model.api_key.encode() if model.api_key else None
        self._state = State.STOPPED
        self.reason: str | None = None  # why FATAL / BACKOFF, for `status`
        self.ready_at: float | None = None  # wall time of the last RUNNING
        self.served: dict[str, Any] = {}  # from the server's /v1/models: root, max_model_len
        # Written by the supervisor alone (`Supervisor.admit` and the moves):
        self.in_flight = 0  # requests admitted, or waiting for a start
        self.queued = 0  # of those, the ones waiting for a start (not yet admitted)
        self.admitted = 0  # how many starts have admitted their waiting requests
        self.draining = False  # being swapped out or stopped: new requests wait
        self.last_request_at: float | None = None  # wall time of the last request
        self.by_request = False  # started by a request (or by hand): `idle_stop` applies
        # At rest by design (on demand, swapped out, idle): a request starts it; `up` does
        # not wait for it, and `status` says "on demand".
        self.resting = model.managed and model.on_demand
        self.held = False  # stopped by `llmctl stop`: only `llmctl start` brings it back
        self._stopping = False

    @property
    def demandable(self) -> bool:
        """A request may start it: on-demand models and group members."""
        return self.model.managed and (self.model.on_demand or bool(self.model.group))

    def stops_at(self) -> float | None:
        """Wall time when `idle_stop` will stop it, if nothing asks for it before."""
        idle = self.model.idle_seconds if self.model.managed else 0
        if not (self.by_request and idle and self.in_flight == 0
                and self.state in (State.RUNNING, State.SLEEPING)):
            return None
        return (self.last_request_at or self.ready_at or self.clock.time()) + idle

    @property
    def state(self) -> State:
        return self._state

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def url(self) -> str:
        return self.model.upstream

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices whose memory this backend uses (none: it runs elsewhere)."""
        return ()

    def _to(self, state: State, reason: str | None = None) -> None:
        """The one door for state changes: each is checked against the table of allowed
        transitions and reported. Once a stop has begun, only STOPPING and STOPPED may
        follow (a watch that sees the process die under `stop` must not call it a crash)."""
        if self._stopping and state not in (State.STOPPING, State.STOPPED):
            return
        if not allowed(self._state, state):
            raise RuntimeError(f"{self.key}: {self._state} → {state} is not a transition "
                               "a backend makes")
        self._state = state
        if reason is not None or state in (State.RUNNING, State.STARTING):
            self.reason = reason
        if state == State.RUNNING:
            self.ready_at = self.clock.time()
        self.on_change()

    def fail(self, reason: str) -> None:
        """Mark a backend that cannot start at all (its weights are missing, say)."""
        self._to(State.FATAL, reason)

    def rest(self, reason: str) -> None:
        """STOPPED at rest, startable by a request: what `up` leaves a group member that
        another member was asked for first."""
        self.resting = True
        self._to(State.STOPPED, reason)

    def retry(self, reason: str) -> None:
        """A FATAL backend given a new try (`llmctl start`): STOPPED, ready to start."""
        if self._state == State.FATAL:
            self._to(State.STOPPED, reason)

    def _fields(self) -> dict[str, Any]:
        """What every backend reports (see `report.BackendReport`)."""
        return dict(
            name=self.model.name, aliases=list(self.model.names[1:]), state=str(self.state),
            managed=self.model.managed, url=self.url, source=self.model.source or None,
            fim=self.fim, tools=self.abilities.tools, tool_trained=self.abilities.trained,
            reasoning=self.abilities.reasoning, ready_at=self.ready_at, reason=self.reason,
            in_flight=self.in_flight, queued=self.queued, resting=self.resting,
            start=self.model.start if self.model.managed else None,
            group=self.model.group or None,
            swap=self.model.swap if self.model.group else None,
            idle_stop_s=self.model.idle_seconds if self.model.managed else None,
            last_request_at=self.last_request_at, stops_at=self.stops_at(),
            # The served context length and weights, as the server says (vLLM's
            # /v1/models), else as configured: what `vllm bench serve` and others need.
            max_model_len=self.served.get("max_model_len")
            or (self.model.max_model_len if self.model.managed else None),
            weights=self.served.get("root"), tokenizer=self.served.get("root"))

    def snapshot(self) -> BackendReport:
        return BackendReport(**self._fields())

    def _auth(self) -> dict[str, str]:
        return {"Authorization": self.upstream_auth.decode()} if self.upstream_auth else {}

    async def learn(self) -> None:
        """What the server says of the model in its /v1/models (vLLM: `root`, the weights
        it loaded, and `max_model_len`), for the proxy's /v1/models."""
        try:
            r = await self._http.get(self.url + "/v1/models", headers=self._auth())
            data = r.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        for m in data:
            if isinstance(m, dict) and m.get("id") == self.model.name:
                self.served = {k: m[k] for k in ("root", "max_model_len") if k in m}
                return

    async def healthy(self) -> bool:
        try:
            r = await self._http.get(self.url + "/health")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def start(self) -> bool:
        raise NotImplementedError

    async def watch(self, gate: DeviceGate) -> None:
        """Keep it serving until it stops; `gate` is held by every restart and reap."""
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
            r = await self._http.get(self.url + "/v1/models", headers=self._auth())
        except httpx.HTTPError:
            return False
        return r.status_code < 500

    async def _check(self) -> bool:
        ok = await self.healthy()
        if ok != (self.state == State.RUNNING):
            if ok:
                await self.learn()
            self._to(State.RUNNING if ok else State.BACKOFF,
                     None if ok else f"{self.url} is not answering")
        return ok

    async def start(self) -> bool:
        self._to(State.STARTING)
        return await self._check()

    async def watch(self, gate: DeviceGate) -> None:
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
                 expected_start_s: float | None = None, devices: tuple[str, ...] = ("cpu",),
                 popen: Callable[..., Any] = subprocess.Popen, procs: Any = procs_module,
                 **kw: Any) -> None:
        super().__init__(model, **kw)
        self.cmd, self.log_path = cmd, log_path
        self._devices = devices  # "cuda:0"…, or "cpu": what its start profiles and holds
        self.planned_bytes = planned_bytes
        self.planned_kv_tokens = planned_kv_tokens
        self.reported_kv: tuple[int, float] | None = None  # (tokens, concurrency) vLLM logged
        self.expected_start_s = expected_start_s  # how long the previous start took
        self._popen, self._procs = popen, procs
        self.proc: Any = None
        self.pgid_start: int | None = None  # the leader's start time: whose group this is
        self.started_at: float | None = None  # wall time of the current process's start
        self.restarts = 0
        # For /metrics (on-demand life): starts that ended RUNNING, swaps out of a group,
        # idle stops.
        self.starts = 0
        self.swaps = 0
        self.idle_stops = 0
        self.last_exit: str | None = None
        self.phase: str | None = None  # while STARTING: what the vLLM log says it is doing
        self.last_start_s: float | None = None  # how long the last successful start took
        self.last_wake_s: float | None = None  # how long the last wake from sleep took
        self._quick_failures = 0
        self._restarting = False  # this launch is a restart after a crash (not FATAL at once)
        self._raced = False  # this start already had its one retry after a profiling race
        self._delay = 0.0

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    @property
    def pid(self) -> int | None:
        """The group leader's pid, while there is a group (a stopped one was reaped whole)."""
        if self.proc is None or self.state == State.STOPPED:
            return None
        return self.proc.pid

    def snapshot(self) -> ManagedReport:
        return ManagedReport(**{
            **self._fields(), "port": self.model.port,
            "pid": self.pid, "pgid": self.pid,  # start_new_session: the pid leads its group
            "pgid_start": self.pgid_start,
            "started_at": self.started_at, "restarts": self.restarts,
            "last_exit": self.last_exit, "log": str(self.log_path),
            "planned_bytes": self.planned_bytes,
            "kv_tokens_planned": self.planned_kv_tokens,
            "kv_tokens_reported": self.reported_kv[0] if self.reported_kv else None,
            "concurrency_reported": self.reported_kv[1] if self.reported_kv else None,
            "phase": self.phase if self.state == State.STARTING else None,
            "last_start_s": self.last_start_s, "expected_start_s": self.expected_start_s,
            "last_wake_s": self.last_wake_s,
            "weights": self._arg("--model"),
            "tokenizer": self._arg("--tokenizer") or self._arg("--model")})

    def _arg(self, flag: str) -> str | None:
        """A flag's value in the server's command line (the last one wins, as in argparse)."""
        argv = list(self.cmd.argv)
        at = [i for i, a in enumerate(argv) if a == flag and i + 1 < len(argv)]
        return argv[at[-1] + 1] if at else None

    # ── the transitions ──
    async def start(self) -> bool:
        """A start (at `up`, by a request, by hand; the caller holds the device gate):
        True once RUNNING; False when it failed (FATAL: retrying a missing model or an
        out-of-memory start only delays the error)."""
        self._stopping = False
        self._restarting = False
        self._quick_failures = 0
        self.resting = False
        await self._launch()
        return self.state == State.RUNNING

    async def watch(self, gate: DeviceGate) -> None:
        while not self._stopping:
            if self.state in (State.RUNNING, State.SLEEPING):
                await self._serve(gate)
            elif self.state == State.BACKOFF:
                await self._backoff(gate)
            else:  # FATAL, or stopped meanwhile
                return

    async def _launch(self) -> None:
        """STARTING → RUNNING, or FATAL (first start, timeout), or BACKOFF (a restart died).
        A start that died of vLLM's memory-profiling race (a neighbour's memory moved
        while it profiled) is tried once more at once: the gate makes it the only move."""
        self._raced = False
        if not self._procs.port_free(self.model.port):
            self._to(State.FATAL, f"port {self.model.port} is in use by another process")
            return
        self.phase = "starting"
        self._to(State.STARTING)
        while not await self._attempt():
            self._raced = True
            log.warning("%s: vLLM's memory profiling saw another process's GPU memory move; "
                        "starting it once more", self.key)
            self.phase = "starting"
            self.on_change()

    async def _attempt(self) -> bool:
        """One process, from spawn to RUNNING or a failure; False: the profiling race,
        to be tried again."""
        try:
            self._spawn()
        except OSError as e:
            self._to(State.FATAL, f"cannot start {self.cmd.argv[0]}: {e}")
            return True
        self.on_change()
        deadline = self.clock.monotonic() + self.policy.start_timeout
        while not self._stopping:
            if self.proc.poll() is not None:
                why = self._exit_text()
                await self._reap()
                tail = this_start(log_tail(self.log_path, 200, window=256 * 1024))
                if not self._raced and any(PROFILING_RACE in line for line in tail):
                    return False
                cause = likely_cause(tail)
                detail = f"exited while starting ({why})" + (f": {cause}" if cause else "")
                if not self._restarting:
                    self.last_exit = why
                    self._to(State.FATAL, detail)
                else:
                    self._crashed(why, detail)
                return True
            if await self.healthy() and await self._warm_up():
                await self.learn()
                self.last_start_s = round(self.clock.time() - (self.started_at or 0.0), 1)
                self.starts += 1
                self.reported_kv = kv_report(self.log_path)  # read back beside the plan
                self._to(State.RUNNING)
                return True
            phase = phase_of(log_tail(self.log_path, 80))
            if PHASE_ORDER.index(phase) > PHASE_ORDER.index(self.phase or "starting"):
                self.phase = phase
                self.on_change()
            if self.clock.monotonic() > deadline:
                await self._reap()
                self.last_exit = "did not become healthy"
                self._to(State.FATAL, f"not healthy after {self.policy.start_timeout:.0f} s")
                return True
            await self.clock.sleep(0.5)
        return True

    async def _serve(self, gate: DeviceGate) -> None:
        """RUNNING until the process exits or misses `health_failures` checks in a row."""
        misses = 0
        while not self._stopping:
            exited = await self._exits_within(self.policy.health_interval)
            if self._stopping:
                return
            if exited:
                why = self._exit_text()
                if self.state == State.SLEEPING:  # nothing to restart it for: rest
                    self.last_exit = why
                    self._to(State.STOPPED, f"exited while asleep ({why})")
                else:
                    self._crashed(why)
            elif self.state == State.SLEEPING:
                continue  # a sleeping server is watched for its exit only
            else:
                misses = 0 if await self.healthy() else misses + 1
                if misses < self.policy.health_failures:
                    continue
                self._crashed(f"stopped answering /health ({misses} checks)")
            # Said at once (no request goes to it now); its leftovers (EngineCore, Worker)
            # are reaped when no start is profiling on its cards, before any restart.
            async with gate.hold(self.devices):
                await self._reap()
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

    async def _backoff(self, gate: DeviceGate) -> None:
        await self.clock.sleep(self._delay)
        # A restart is a start: it waits for a neighbour's start on the same card.
        async with gate.hold(self.devices):
            if not self._stopping:
                self.restarts += 1
                self._restarting = True
                await self._launch()

    async def park(self, reason: str) -> None:
        """Stop the server and rest in STOPPED with `reason`; a request (or `llmctl start`)
        may start it again. The watch ends by itself when it sees the stop."""
        self._stopping = True
        if self.proc is not None and self.state != State.STOPPED:
            self._to(State.STOPPING, reason)
            await self._reap()
        self.by_request = False
        self.draining = False
        self.resting = self.demandable
        self._to(State.STOPPED, reason)

    async def sleep(self) -> bool:
        """RUNNING → SLEEPING with vLLM's sleep mode, level 1 (weights to host RAM, the KV
        cache dropped). The endpoints are vLLM's dev-mode ones, on the backend's loopback
        port only; the proxy never forwards them."""
        try:
            r = await self._http.post(self.url + "/sleep", params={"level": "1"}, timeout=120.0)
        except httpx.HTTPError as e:
            log.warning("%s: /sleep failed: %s", self.key, e)
            return False
        if r.status_code != 200:
            log.warning("%s: /sleep answered %s", self.key, r.status_code)
            return False
        self.resting = True
        self._to(State.SLEEPING, "asleep (vLLM sleep mode); a request wakes it")
        return True

    async def wake(self) -> bool:
        """SLEEPING → RUNNING: /wake_up, then the one-token warm-up."""
        t0 = self.clock.time()
        try:
            r = await self._http.post(self.url + "/wake_up", timeout=120.0)
        except httpx.HTTPError as e:
            log.warning("%s: /wake_up failed: %s", self.key, e)
            return False
        if r.status_code != 200 or not await self._warm_up():
            return False
        self.last_wake_s = round(self.clock.time() - t0, 2)
        self.resting = False
        self._to(State.RUNNING)
        return True

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
        # A key for this start alone (vLLM guards its /v1 routes with it): nobody else on
        # the machine can skip the proxy's keys, limits and usage by calling the port.
        key = secrets.token_urlsafe(32)
        if self.cmd.cwd:
            os.makedirs(self.cmd.cwd, mode=0o700, exist_ok=True)
        try:
            self.proc = self._popen(
                list(self.cmd.argv), env={**os.environ, **self.cmd.env, "VLLM_API_KEY": key},
                cwd=self.cmd.cwd, stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=procs_module.die_with_parent, close_fds=True)
        except BaseException:
            os.close(r)
            pump.close()
            raise
        finally:
            os.close(w)
        pump.follow(r)
        self.upstream_auth = b"Bearer " + key.encode()
        self.pgid_start = procs_module.start_ticks(self.proc.pid)
        self.started_at = self.clock.time()
        self.ready_at = None

    async def _warm_up(self) -> bool:
        """One one-token request: a server that passes /health can still fail its first request."""
        try:
            r = await self._http.post(
                self.url + "/v1/completions", timeout=120.0, headers=self._auth(),
                json={"model": self.model.name, "prompt": "Hello", "max_tokens": 1})
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


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    return f"{s // 60}m" if s % 60 == 0 and s else f"{s}s"


class Admission:
    """One request's hold on a backend, for its whole life: `async with
    supervisor.admit(b, wait)`. Entering counts it in flight (and starts the model first
    when it is at rest, waiting up to `wait` seconds) or raises NotServing; leaving
    counts it out. Cancelling the enter (the client left) stops the wait, not the start."""

    __slots__ = ("_sup", "_b", "_wait")

    def __init__(self, sup: Supervisor, b: Any, wait: float) -> None:
        self._sup, self._b, self._wait = sup, b, wait

    async def __aenter__(self) -> None:
        b, sup = self._b, self._sup
        if b.state == State.RUNNING and not b.draining and b.in_flight < sup.max_queue:
            b.in_flight += 1  # the hot path, inline: one coroutine less per request
            b.last_request_at = sup.clock.time()
            return
        await sup._enter(b, self._wait)

    async def __aexit__(self, *exc: object) -> None:
        self._sup._leave(self._b)


class Supervisor:
    """Starts the backends, keeps them running, starts and stops them on demand, and
    admits every request.

    `up` starts the always-on models one after another. Every start (by `up`, a request,
    by hand, or a crash's restart) holds the device gate of its cards, and so does every
    move that frees memory there (see `DeviceGate`). An on-demand model, or a group
    member swapped out, is started by the first request that `admit`s it, and every
    request that comes meanwhile joins that start. A group runs one member at a time:
    starting one drains the running member (its requests finish, up to `drain_seconds`)
    and stops it, or puts it to sleep (`swap = "sleep"`). Each group (or lone model) has
    a lock, so swaps, starts and stops of one group never interleave."""

    def __init__(self, backends: list[Any], *, drain_seconds: float = 10.0,
                 max_queue: int = 100, policy: Policy | None = None,
                 clock: Clock | None = None) -> None:
        self.backends = backends
        self.drain_seconds = drain_seconds
        self.max_queue = max_queue  # requests in flight per model before 429
        self.policy = policy or Policy()
        self.clock = clock or Clock()
        self.gate = DeviceGate()
        self._tasks: list[asyncio.Task[None]] = []  # remote watches, the idle loop
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}  # a start in progress, per model
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = False

    # ── at up ──
    async def run(self) -> None:
        """Check the `url` backends, start the always-on managed ones one after another,
        then watch all."""
        self._tasks.append(asyncio.create_task(self._idle_loop()))
        for b in self.backends:
            if isinstance(b, RemoteBackend):
                await b.start()
                self._tasks.append(self._watched(b))
        for b in self.backends:
            if isinstance(b, ManagedBackend) and b.state != State.FATAL \
                    and not b.model.on_demand:
                async with self._lock(b):
                    # Not if a request started it, or another member of its group, meanwhile.
                    busy = any(o.state in (State.RUNNING, State.STARTING, State.BACKOFF)
                               for o in self._members(b))
                    if b.state == State.STOPPED and not busy:
                        await self._launch(b)
                    elif busy:
                        b.rest(f"group {b.model.group}: another member was asked for first; "
                               "a request starts it")

    # ── for the proxy ──
    def admit(self, b: Any, wait: float = 600.0) -> Admission:
        """A request's hold on `b` (see `Admission`)."""
        return Admission(self, b, wait)

    async def _enter(self, b: Any, wait: float) -> None:
        if b.in_flight >= self.max_queue:
            raise NotServing(429, f"model '{b.model.name}' has {b.in_flight} requests queued; "
                             "try again shortly", "queue_full", retry_after=1)
        if b.state == State.RUNNING and not b.draining:  # the hot path
            b.in_flight += 1
            b.last_request_at = self.clock.time()
            return
        refusal = self._refusal(b)
        if refusal is not None:
            raise refusal
        b.in_flight += 1  # waiting for a start counts toward the queue limit
        try:
            await self._demand(b, wait)
        except BaseException:
            b.in_flight -= 1
            raise
        b.last_request_at = self.clock.time()

    def _leave(self, b: Any) -> None:
        b.in_flight -= 1
        b.last_request_at = self.clock.time()

    def _refusal(self, b: Any) -> NotServing | None:
        """Why a request for `b`, which does not serve now, cannot start it; None when it
        may (an on-demand model or a group member at rest)."""
        name, why = b.model.name, f": {b.reason}" if b.reason else ""
        if b.state == State.FATAL:  # it will not come back by itself: no Retry-After
            again = f"; `llmctl start {b.model.key}` tries again" if b.model.managed else ""
            return NotServing(503, f"model '{name}' has failed{why}{again}", "model_failed")
        if getattr(b, "held", False) and b.state == State.STOPPED:
            # Stopped by hand: it will not come back by itself, so no Retry-After (and
            # the proxy tells the openai SDKs not to retry).
            return NotServing(503, f"model '{name}' was stopped by `llmctl stop`; "
                              f"`llmctl start {b.model.key}` starts it again", "model_stopped")
        if not b.demandable or self._closing:
            return NotServing(503, f"model '{name}' is {b.state.lower()}{why}",
                              "model_not_ready", retry_after=10)
        return None

    async def _demand(self, b: Backend, wait: float) -> None:
        """Return once `b` serves, the start begun (or joined) here; NotServing when it
        failed, or did not serve within `wait` seconds (0: begin it, answer at once)."""
        name = b.model.name
        task = self._bring_up(b)
        if wait <= 0:
            eta = self.expected_wait(b)
            raise NotServing(503, f"model '{name}' is starting; it should answer in about "
                             f"{eta:.0f} s", "model_starting", retry_after=eta)
        gen = b.admitted
        b.queued += 1
        try:
            await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            raise NotServing(503, f"model '{name}' is still starting after {wait:.0f} s",
                             "model_not_ready", retry_after=self.expected_wait(b)) from None
        finally:
            if b.admitted == gen:  # not admitted: no longer waiting either
                b.queued -= 1

    def expected_wait(self, b: Backend) -> float:
        """Seconds until `b` should answer: its last start's length, less what has passed."""
        if b.state == State.SLEEPING:
            est = getattr(b, "last_wake_s", None) or 5.0
        else:
            est = getattr(b, "expected_start_s", None) or getattr(b, "last_start_s", None) \
                or self.policy.default_start_s
        started = getattr(b, "started_at", None)
        if b.state == State.STARTING and started:
            est -= self.clock.time() - started
        return max(1.0, round(est))

    # ── by hand (`llmctl start` / `llmctl stop`) ──
    def start_by_hand(self, b: Backend) -> None:
        """Begin a start, whatever the model's `start` (a FATAL one gets a new try)."""
        if not isinstance(b, ManagedBackend):
            raise NotServing(400, f"model '{b.model.name}' is served from {b.url}; llmctl "
                             "does not start it", "not_managed")
        b.retry("starting again by hand")
        b.held = False
        if b.state == State.RUNNING and not b.draining:
            return
        task = self._bring_up(b)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen: not logged

    async def stop_by_hand(self, b: Backend) -> None:
        if not isinstance(b, ManagedBackend):
            raise NotServing(400, f"model '{b.model.name}' is served from {b.url}; llmctl "
                             "does not stop it", "not_managed")
        again = "a request starts it again" if b.demandable else \
            f"`llmctl start {b.key}` starts it again"
        async with self._lock(b):
            b.held = not b.demandable  # a request may not start it: it stays stopped
            if b.state in (State.STOPPED, State.FATAL) and b.proc is None:
                return
            await self._swap_out(b, f"stopped by `llmctl stop`; {again}", sleep=False)

    # ── the moves ──
    def _lock(self, b: Backend) -> asyncio.Lock:
        key = f"group:{b.model.group}" if b.model.group else f"model:{b.key}"
        return self._locks.setdefault(key, asyncio.Lock())

    def _members(self, b: Backend) -> list[ManagedBackend]:
        """The other members of `b`'s group."""
        if not b.model.group:
            return []
        return [o for o in self.backends if o is not b and isinstance(o, ManagedBackend)
                and o.model.group == b.model.group]

    def _watched(self, b: Backend) -> asyncio.Task[None]:
        """`b`'s watch as a task whose failure is logged, not lost."""
        task = asyncio.create_task(b.watch(self.gate))
        task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or log.error(
            "%s: its watch failed: %r", b.key, t.exception()))
        return task

    def _bring_up(self, b: Backend) -> asyncio.Task[None]:
        """The start in progress for `b`, begun now if there is none: one per model, shared
        by every request that asks meanwhile."""
        task = self._pending.get(b.key)
        if task is None or task.done():
            task = self._pending[b.key] = asyncio.create_task(self._bring_up_now(b))
        return task

    async def _bring_up_now(self, b: Backend) -> None:
        assert isinstance(b, ManagedBackend)
        async with self._lock(b):
            if b.state in (State.STARTING, State.BACKOFF):
                # Its watch is restarting it after a crash: wait for the outcome.
                while b.state in (State.STARTING, State.BACKOFF) and not self._closing:
                    await self.clock.sleep(0.2)
            elif b.state != State.RUNNING or b.draining:
                for o in self._members(b):
                    if o.state in (State.RUNNING, State.STARTING, State.BACKOFF):
                        await self._swap_out(o, f"swapped out for {b.model.name}; a request "
                                             "starts it again", sleep=o.model.swap == "sleep")
                        o.swaps += 1
                woke = False
                if b.state == State.SLEEPING:
                    async with self.gate.hold(b.devices):
                        woke = await b.wake()
                    if not woke:
                        async with self.gate.hold(b.devices):
                            await b.park("waking from sleep failed; starting it afresh")
                if not woke:
                    await self._launch(b)
            if b.state != State.RUNNING:
                raise NotServing(503, f"model '{b.model.name}' failed to start: {b.reason}",
                                 "model_failed")
            b.by_request = b.demandable
            if b.last_request_at is None or b.by_request:
                b.last_request_at = self.clock.time()  # the idle clock starts now
            # Admit the requests that waited, before the lock lets a swap in.
            b.queued = 0
            b.admitted += 1
            b.on_change()

    async def _launch(self, b: ManagedBackend) -> None:
        async with self.gate.hold(b.devices):
            if self._closing:
                return
            old = self._watches.pop(b.key, None)
            if old is not None:
                await asyncio.gather(old, return_exceptions=True)
            await b.start()
        if b.state in (State.RUNNING, State.BACKOFF):
            self._watches[b.key] = self._watched(b)

    async def _swap_out(self, o: ManagedBackend, reason: str, *, sleep: bool) -> None:
        """Let `o`'s admitted requests finish (up to drain_seconds), then put it to sleep
        or stop it, holding its cards' gate (memory frees). Requests that come meanwhile
        wait for the group."""
        o.draining = True
        try:
            deadline = self.clock.monotonic() + self.drain_seconds
            while o.in_flight - o.queued > 0 and self.clock.monotonic() < deadline:
                await self.clock.sleep(0.05)
            if o.in_flight - o.queued > 0:
                log.warning("%s: %d request(s) still running after %.0f s of draining; "
                            "stopping it anyway", o.key, o.in_flight - o.queued,
                            self.drain_seconds)
            async with self.gate.hold(o.devices):
                if sleep and o.state == State.RUNNING and await o.sleep():
                    return
                await o.park(reason)
            watch = self._watches.pop(o.key, None)
            if watch is not None:
                await asyncio.gather(watch, return_exceptions=True)
        finally:
            o.draining = False

    async def _idle_loop(self) -> None:
        """Stop models started by a request once `idle_stop` has passed without one. A
        failure is logged and the loop goes on."""
        while not self._closing:
            await self.clock.sleep(self.policy.idle_interval)
            try:
                self._tasks = [t for t in self._tasks if not t.done()]
                now = self.clock.time()
                for b in self.backends:
                    at = b.stops_at()
                    if at is not None and now >= at and isinstance(b, ManagedBackend) \
                            and not self._lock(b).locked():
                        self._tasks.append(asyncio.create_task(self._idle_stop(b)))
            except Exception:
                log.exception("the idle loop failed; it goes on")

    async def _idle_stop(self, b: ManagedBackend) -> None:
        async with self._lock(b):
            at = b.stops_at()
            if at is None or self.clock.time() < at:
                return  # a request came meanwhile
            await self._swap_out(b, f"stopped after {_duration(b.model.idle_seconds)} without "
                                 "a request; a request starts it again", sleep=False)
            b.idle_stops += 1

    async def stop(self) -> None:
        self._closing = True
        tasks = [*self._tasks, *self._pending.values(), *self._watches.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(b.stop() for b in self.backends), return_exceptions=True)
