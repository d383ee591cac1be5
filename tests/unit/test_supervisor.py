"""The supervisor's state machine, replayed in fake time: scripted process lifetimes,
health answers through httpx.MockTransport, a clock that never sleeps. No process is
started and no second is waited; every figure below is exact."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
import pytest

from llmctl import config
from llmctl.engine import Command
from llmctl.lifecycle import NotServing, State
from llmctl.supervisor import ManagedBackend, Policy, Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class FakeProc:
    pid: int
    born: float
    life: float | None  # seconds until it exits by itself; None: until stopped
    exit_code: int
    clock: FakeClock
    hung: bool = False  # alive, but /health never answers
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.life is not None and \
                self.clock.now >= self.born + self.life:
            self.returncode = self.exit_code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.poll()


@dataclass
class World:
    """Processes that live for scripted spans of fake time. Each script entry is
    (life, exit code, hung); when the script runs out, spawning fails."""

    clock: FakeClock
    script: list[tuple[float | None, int, bool]]
    procs: list[FakeProc] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)
    events: list[tuple[str, int]] = field(default_factory=list)  # ("spawn" | "reap", pid)

    def popen(self, argv, **kw) -> FakeProc:
        if not self.script:
            raise OSError("no more processes in this script")
        life, code, hung = self.script.pop(0)
        p = FakeProc(100 + len(self.procs), self.clock.now, life, code, self.clock, hung)
        self.procs.append(p)
        self.events.append(("spawn", p.pid))
        return p

    def port_free(self, port: int) -> bool:
        return True

    def stop_group(self, pgid: int, grace: float) -> bool:
        self.reaped.append(pgid)
        self.events.append(("reap", pgid))
        for p in self.procs:
            if p.pid == pgid and p.returncode is None:
                p.returncode = -15
        return False

    def answer(self, request: httpx.Request) -> httpx.Response:
        p = self.procs[-1] if self.procs else None
        if p is None or p.poll() is not None:
            raise httpx.ConnectError("refused", request=request)
        if p.hung:
            raise httpx.ReadTimeout("hung", request=request)
        return httpx.Response(200, json={})


def make(tmp_path, script, **policy) -> tuple[ManagedBackend, World, list]:
    clock = FakeClock()
    world = World(clock, list(script))
    m = config.ModelConfig(key="coder", name="fake", source="/x", port=9)
    events: list[tuple[float, State, str | None]] = []
    b = ManagedBackend(m, Command(("vllm",), {}), tmp_path / "coder.log",
                       policy=Policy(**policy), popen=world.popen, procs=world, clock=clock,
                       http=httpx.AsyncClient(transport=httpx.MockTransport(lambda r: world.answer(r))))
    b.on_change = lambda: events.append((clock.now, b.state, b.reason))
    return b, world, events


async def until(pred) -> None:
    """Let the watch task run until `pred()` holds (bounded: a hang fails, not blocks)."""
    for _ in range(100_000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("the state machine never got there")


def run(b: ManagedBackend) -> None:
    async def go() -> None:
        if await b.start():
            await asyncio.wait_for(b.watch(), 30)  # fake time: this takes milliseconds
    asyncio.run(go())


def backoff_gaps(events) -> list[float]:
    """Fake seconds from each BACKOFF to the STARTING after it: the delays really waited."""
    gaps, since = [], None
    for t, state, _ in events:
        if state == State.BACKOFF:
            since = t
        elif state == State.STARTING and since is not None:
            gaps.append(round(t - since, 6))
            since = None
    return gaps


def test_quick_failures_back_off_doubling_to_the_cap_then_fatal(tmp_path):
    # Up for 10 s, then every restart dies 5 s after it started: all quick failures.
    b, world, events = make(tmp_path, [(10, 1, False)] + [(5, 1, False)] * 10,
                            backoff_cap=5.0, max_restarts=5)
    run(b)
    assert b.state == State.FATAL
    assert backoff_gaps(events) == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert b.restarts == 5 and len(world.procs) == 6
    assert b.reason == "5 restarts in a row failed; last: exit code 1"
    # Every dead group was reaped before the next one was spawned.
    assert world.events == [(e, p.pid) for p in world.procs for e in ("spawn", "reap")]


def test_a_backend_that_ran_long_enough_starts_a_new_count(tmp_path):
    # Each process lives 100 s, beyond stable_after: every failure is the first of its kind.
    b, world, events = make(tmp_path, [(100, 1, False)] * 4, max_restarts=2, stable_after=60)
    run(b)
    assert backoff_gaps(events) == [1.0, 1.0, 1.0, 1.0]
    assert b.state == State.FATAL and "no more processes" in b.reason  # the script ran out
    assert b.restarts == 4


def test_missed_health_checks_count_as_dead(tmp_path):
    # Alive but hung: three missed checks, 5 s apart, then reaped and restarted.
    b, world, events = make(tmp_path, [(None, 0, False), (None, 0, False)],
                            health_interval=5.0, health_failures=3)

    async def go() -> None:
        assert await b.start()
        world.procs[0].hung = True
        t0 = b.clock.now
        watch = asyncio.create_task(b.watch())
        await until(lambda: b.restarts == 1 and b.state == State.RUNNING)
        assert b.last_exit == "stopped answering /health (3 checks)"
        # Three intervals of watching, then the 1 s backoff, then the new start.
        assert 16.0 <= b.clock.now - t0 < 17.0
        assert world.reaped == [world.procs[0].pid]
        await b.stop()
        await asyncio.wait_for(watch, 10)

    asyncio.run(go())
    assert b.state == State.STOPPED


def test_a_failed_first_start_is_fatal_at_once(tmp_path):
    (tmp_path / "coder.log").write_text("OSError: model does not appear to have a file\n")
    b, world, events = make(tmp_path, [(0.2, 1, False)])
    world.answer = lambda r: (_ for _ in ()).throw(httpx.ConnectError("no", request=r))
    run(b)
    assert b.state == State.FATAL and b.restarts == 0
    assert b.reason.startswith("exited while starting (exit code 1)")
    assert [s for _, s, _ in events if s == State.BACKOFF] == []


def test_a_restart_that_dies_while_starting_backs_off_instead(tmp_path):
    b, world, events = make(tmp_path, [(10, 1, False), (0.0, 1, False), (None, 0, False)])
    answer = world.answer

    def slow_start(request: httpx.Request) -> httpx.Response:
        p = world.procs[-1]
        if world.clock.now < p.born + 0.3:  # not listening yet
            raise httpx.ConnectError("not yet", request=request)
        return answer(request)

    world.answer = slow_start

    async def go() -> None:
        assert await b.start()
        watch = asyncio.create_task(b.watch())
        await until(lambda: b.restarts == 2 and b.state == State.RUNNING)
        await b.stop()
        await asyncio.wait_for(watch, 10)

    asyncio.run(go())
    reasons = [r for _, s, r in events if s == State.BACKOFF]
    assert reasons == ["exit code 1; restarting in 1.0 s",
                       "exited while starting (exit code 1); restarting in 2.0 s"]


def test_start_timeout_is_fatal_in_fake_time(tmp_path):
    b, world, events = make(tmp_path, [(None, 0, True)], start_timeout=900)
    run(b)
    assert b.state == State.FATAL and b.reason == "not healthy after 900 s"
    assert 900 <= b.clock.now - 1000 < 901
    assert world.reaped == [100]


@pytest.mark.parametrize("failures, want", [(1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (9, 30.0)])
def test_policy_backoff(failures, want):
    assert Policy().backoff(failures) == want


# ── a group in sleep mode, in fake time ──

def member(tmp_path, clock, key: str, start: str):
    world = World(clock, [(None, 0, False)] * 3)
    calls: list[str] = []

    def answer(r: httpx.Request) -> httpx.Response:
        calls.append(r.url.path)
        return world.answer(r)

    m = config.ModelConfig(key=key, name=key, source="/x", port=9, start=start, group="g",
                           swap="sleep", idle_stop=0)
    b = ManagedBackend(m, Command(("vllm",), {}), tmp_path / f"{key}.log", popen=world.popen,
                       procs=world, clock=clock,
                       http=httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    return b, world, calls


def test_a_sleep_group_swaps_by_sleeping_and_waking_not_restarting(tmp_path):
    clock = FakeClock()
    a, world_a, calls_a = member(tmp_path, clock, "a", "always")
    b, world_b, calls_b = member(tmp_path, clock, "b", "on-demand")
    order: list[tuple[str, State]] = []
    a.on_change = lambda: order.append(("a", a.state))
    b.on_change = lambda: order.append(("b", b.state))
    sup = Supervisor([a, b], drain_seconds=30, clock=clock)

    async def go() -> None:
        await sup.run()
        assert (a.state, b.state, b.resting) == (State.RUNNING, State.STOPPED, True)
        a.in_flight = 1  # a request under way on a
        first = asyncio.create_task(sup.demand(b))
        await until(lambda: a.draining)
        assert b.state == State.STOPPED  # nothing starts while a drains
        a.in_flight = 0
        await asyncio.wait_for(first, 10)
        assert a.state == State.SLEEPING and calls_a.count("/sleep") == 1
        assert b.state == State.RUNNING and a.resting and not b.resting
        # a was asleep before b was spawned: never both awake.
        assert order.index(("a", State.SLEEPING)) < order.index(("b", State.STARTING))
        # Back to a: b sleeps, a wakes in its old process.
        await asyncio.wait_for(sup.demand(a), 10)
        assert a.state == State.RUNNING and calls_a.count("/wake_up") == 1
        assert len(world_a.procs) == 1 and b.state == State.SLEEPING
        assert a.last_wake_s is not None
        await sup.stop()

    asyncio.run(go())
    assert a.state == b.state == State.STOPPED


def test_a_sleeping_member_that_cannot_wake_starts_afresh(tmp_path):
    clock = FakeClock()
    a, world_a, calls_a = member(tmp_path, clock, "a", "always")
    b, _, _ = member(tmp_path, clock, "b", "on-demand")
    sup = Supervisor([a, b], clock=clock)
    answer = world_a.answer
    world_a.answer = lambda r: httpx.Response(500) if r.url.path == "/wake_up" else answer(r)

    async def go() -> None:
        await sup.run()
        await asyncio.wait_for(sup.demand(b), 10)
        assert a.state == State.SLEEPING
        await asyncio.wait_for(sup.demand(a), 10)
        assert a.state == State.RUNNING and len(world_a.procs) == 2  # a new process
        assert world_a.reaped == [world_a.procs[0].pid]
        await sup.stop()

    asyncio.run(go())


def test_demand_refuses_what_a_request_may_not_start(tmp_path):
    always, world, _ = make(tmp_path, [(None, 0, False)])
    sup = Supervisor([always], clock=always.clock)

    async def go() -> None:
        with pytest.raises(NotServing) as e:
            await sup.demand(always)  # an always-on model, stopped: a request does not start it
        assert e.value.status == 503 and e.value.code == "model_not_ready"
        always.fail("weights missing")
        with pytest.raises(NotServing) as e:
            await sup.demand(always)
        assert e.value.code == "model_failed" and "llmctl start coder" in e.value.message

    asyncio.run(go())
    assert world.procs == []
