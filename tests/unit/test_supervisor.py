"""The supervisor's state machine, replayed in fake time: scripted process lifetimes,
health answers through httpx.MockTransport, a clock that never sleeps. No process is
started and no second is waited; every figure below is exact."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from llmctl import config
from llmctl.engine import Command
from llmctl.lifecycle import NotServing, State
from llmctl.supervisor import DeviceGate, ManagedBackend, Policy, Supervisor


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
    log: Path | None = None  # where the spawned servers write …
    says: list[str] = field(default_factory=list)  # … what each one says, in turn

    def popen(self, argv, **kw) -> FakeProc:
        if not self.script:
            raise OSError("no more processes in this script")
        life, code, hung = self.script.pop(0)
        p = FakeProc(100 + len(self.procs), self.clock.now, life, code, self.clock, hung)
        self.procs.append(p)
        self.events.append(("spawn", p.pid))
        if self.log is not None and self.says:
            with open(self.log, "a") as f:
                f.write(self.says.pop(0) + "\n")
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


def make(tmp_path, script, *, key: str = "coder", clock: FakeClock | None = None,
         devices: tuple[str, ...] = ("cpu",), **policy) -> tuple[ManagedBackend, World, list]:
    clock = clock or FakeClock()
    world = World(clock, list(script), log=tmp_path / f"{key}.log")
    m = config.ModelConfig(key=key, name="fake" if key == "coder" else key, source="/x",
                           port=9)
    events: list[tuple[float, State, str | None]] = []
    b = ManagedBackend(m, Command(("vllm",), {}), tmp_path / f"{key}.log",
                       policy=Policy(**policy), popen=world.popen, procs=world, clock=clock,
                       devices=devices,
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


async def served(sup: Supervisor, b, wait: float = 600) -> None:
    """One request through the admission: admitted (the model started first when at rest),
    then done."""
    async with sup.admit(b, wait):
        pass


def run(b: ManagedBackend) -> None:
    async def go() -> None:
        if await b.start():
            await asyncio.wait_for(b.watch(DeviceGate()), 30)  # fake time: this takes milliseconds
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
        watch = asyncio.create_task(b.watch(DeviceGate()))
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
        watch = asyncio.create_task(b.watch(DeviceGate()))
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
        if r.url.path == "/wake_up":
            clock.now += 2.5  # waking takes 2.5 s of fake time
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
        on_a = sup.admit(a)
        await on_a.__aenter__()  # a request under way on a
        assert a.in_flight == 1
        first = asyncio.create_task(served(sup, b))
        await until(lambda: a.draining)
        assert b.state == State.STOPPED  # nothing starts while a drains
        await on_a.__aexit__(None, None, None)
        await asyncio.wait_for(first, 10)
        assert (a.in_flight, b.in_flight, b.queued) == (0, 0, 0)
        assert a.state == State.SLEEPING and calls_a.count("/sleep") == 1
        assert b.state == State.RUNNING and a.resting and not b.resting
        # a was asleep before b was spawned: never both awake.
        assert order.index(("a", State.SLEEPING)) < order.index(("b", State.STARTING))
        # Back to a: b sleeps, a wakes in its old process.
        await asyncio.wait_for(served(sup, a), 10)
        assert a.state == State.RUNNING and calls_a.count("/wake_up") == 1
        assert len(world_a.procs) == 1 and b.state == State.SLEEPING
        assert a.last_wake_s == 2.5
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
        await asyncio.wait_for(served(sup, b), 10)
        assert a.state == State.SLEEPING
        await asyncio.wait_for(served(sup, a), 10)
        assert a.state == State.RUNNING and len(world_a.procs) == 2  # a new process
        assert world_a.reaped == [world_a.procs[0].pid]
        await sup.stop()

    asyncio.run(go())


def test_demand_refuses_what_a_request_may_not_start(tmp_path):
    always, world, _ = make(tmp_path, [(None, 0, False)])
    sup = Supervisor([always], clock=always.clock)

    async def go() -> None:
        with pytest.raises(NotServing) as e:
            await served(sup, always)  # an always-on model, stopped: a request does not start it
        assert e.value.status == 503 and e.value.code == "model_not_ready"
        assert e.value.retry_after == 10
        always.fail("weights missing")
        with pytest.raises(NotServing) as e:
            await served(sup, always)
        assert e.value.code == "model_failed" and e.value.retry_after is None
        assert e.value.message == ("model 'fake' has failed: weights missing; `llmctl start "
                                   "coder` tries again")
        assert always.in_flight == 0  # a refusal leaves nothing counted

    asyncio.run(go())
    assert world.procs == []


# ── starts that nothing disturbs ──

@pytest.mark.parametrize("b_devices, waits", [(("cuda:0",), True), (("cuda:1",), False)])
def test_a_crash_restart_waits_for_a_start_on_the_same_card_only(tmp_path, b_devices, waits):
    """A runs on cuda:0 and dies 10 s in, while B's start (100 s of profiling and loading)
    is under way. On the same card, A's reap and restart wait until B is RUNNING: vLLM
    would charge the memory A frees or takes to B's KV cache. On another card they don't."""
    clock = FakeClock()
    a, world_a, events_a = make(tmp_path, [(10, 1, False), (None, 0, False)], key="a",
                                clock=clock, devices=("cuda:0",))
    b, world_b, events_b = make(tmp_path, [(None, 0, False)], key="b", clock=clock,
                                devices=b_devices)
    answer_b = world_b.answer

    def slow(request: httpx.Request) -> httpx.Response:
        if clock.now < world_b.procs[-1].born + 100:
            raise httpx.ConnectError("still loading", request=request)
        return answer_b(request)

    world_b.answer = slow
    sup = Supervisor([a, b], clock=clock)

    async def go() -> None:
        await sup.run()
        await until(lambda: a.restarts == 1 and a.state == State.RUNNING)
        await sup.stop()

    asyncio.run(go())
    crashed = next(t for t, s, _ in events_a if s == State.BACKOFF)
    restarted = next(t for t, s, _ in events_a if s == State.STARTING and t > crashed)
    b_ready = next(t for t, s, _ in events_b if s == State.RUNNING)
    b_started = next(t for t, s, _ in events_b if s == State.STARTING)
    assert b_started < crashed < b_ready  # A died while B was starting
    # Its group is reaped and it starts again only after B's start, on the same card.
    assert (restarted >= b_ready) is waits
    assert world_a.events == [("spawn", 100), ("reap", 100), ("spawn", 101), ("reap", 101)]


def test_a_start_that_died_of_the_profiling_race_is_tried_once_more(tmp_path):
    race = ("AssertionError: Error in memory profiling. Initial free memory 20.1 GiB, current "
            "free memory 21.3 GiB. This happens when other processes sharing the same "
            "container release GPU memory while vLLM is profiling during initialization.")
    b, world, events = make(tmp_path, [(0.0, 1, False), (None, 0, False)])
    world.says = [race, "INFO loading weights"]

    async def go() -> None:
        assert await b.start()

    asyncio.run(go())
    assert b.state == State.RUNNING and len(world.procs) == 2 and b.restarts == 0
    assert world.reaped == [world.procs[0].pid]
    assert [s for _, s, _ in events if s == State.FATAL] == []


def test_a_second_profiling_race_in_one_start_is_fatal_with_its_cause(tmp_path):
    race = "AssertionError: Error in memory profiling. Initial free memory 20.1 GiB"
    b, world, events = make(tmp_path, [(0.0, 1, False), (0.0, 1, False), (None, 0, False)])
    world.says = [race, race]
    asyncio.run(b.start())
    assert b.state == State.FATAL and len(world.procs) == 2
    assert "another process freed GPU memory on the card" in b.reason


def test_every_state_change_is_one_the_table_allows(tmp_path):
    from llmctl.lifecycle import TRANSITIONS

    b, world, events = make(tmp_path, [(10, 1, False)] + [(5, 1, False)] * 10, max_restarts=2)
    run(b)
    seen = [State.STOPPED] + [s for _, s, _ in events]
    for old, new in zip(seen, seen[1:], strict=False):
        assert new == old or new in TRANSITIONS[old], (old, new)
    with pytest.raises(RuntimeError, match="FATAL → RUNNING is not a transition"):
        b._to(State.RUNNING)


def test_admission_counts_what_waits_and_refuses_a_full_queue(tmp_path):
    b, world, _ = make(tmp_path, [(None, 0, False)])
    sup = Supervisor([b], clock=b.clock, max_queue=2)

    async def go() -> None:
        assert await b.start()
        first, second = sup.admit(b), sup.admit(b)
        await first.__aenter__()
        await second.__aenter__()
        assert b.in_flight == 2 and b.last_request_at == b.clock.now
        with pytest.raises(NotServing) as e:
            await served(sup, b)
        assert (e.value.status, e.value.code, e.value.retry_after) == (429, "queue_full", 1)
        assert e.value.message == "model 'fake' has 2 requests queued; try again shortly"
        await first.__aexit__(None, None, None)
        b.clock.now += 7
        await second.__aexit__(None, None, None)
        assert b.in_flight == 0 and b.last_request_at == b.clock.now
        await sup.stop()

    asyncio.run(go())
