"""The connection guard's bookkeeping, without sockets: eviction order and the sweep that
closes late heads, which keeps running when closing one fails."""

from __future__ import annotations

from llmctl.proxy.conns import Guard, connection_cap


class Conn:
    def __init__(self, busy: bool = False, late: bool = False, fails: bool = False) -> None:
        self.busy, self.late, self.fails, self.dropped = busy, late, fails, False

    def head_late(self, now: float) -> bool:
        return self.late

    def drop(self) -> None:
        self.dropped = True
        if self.fails:
            raise OSError("transport gone")


class Loop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, object]] = []

    def time(self) -> float:
        return 100.0

    def call_later(self, delay: float, fn, *args):
        self.timers.append((delay, fn))
        return object()


def test_at_the_cap_the_quietest_idle_connection_makes_room():
    g = Guard(3, 10.0, 65536)
    a, b, c = Conn(busy=True), Conn(), Conn()
    for x in (a, b, c):
        assert g.admit(x)
    g.touch(b)  # b was active since: c is now the quietest idle one
    d = Conn()
    assert g.admit(d) and c.dropped and not b.dropped and not a.dropped
    assert list(g.open) == [a, b, d] and g.evicted == 1
    full = Guard(1, 10.0, 65536)
    assert full.admit(Conn(busy=True))
    assert not full.admit(Conn())  # every connection is serving a request


def test_the_sweep_closes_late_heads_and_survives_a_failure(caplog):
    g, loop = Guard(10, 1.0, 65536), Loop()
    late_broken, late, fine = Conn(late=True, fails=True), Conn(late=True), Conn()
    for x in (late_broken, late, fine):
        g.admit(x)
    g.sweep(loop)
    assert late_broken.dropped and "late failed" in caplog.text
    assert loop.timers, "the sweep stopped for good after one failure"
    g.sweep(loop)  # the next round goes on
    assert late.dropped and not fine.dropped and list(g.open) == [fine]


def test_the_cap_follows_the_descriptor_limit():
    assert connection_cap(1000, 1024) == (1024 - 128) // 2
    assert connection_cap(1000, 1 << 20) == 1000
    assert connection_cap(1000, 100) == 16  # never below a floor
