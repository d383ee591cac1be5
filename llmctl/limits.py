"""Per-key rate limits as token buckets, a pure module (time is passed in).

May import: nothing of the package. A bucket holds up to N units and refills at N per
minute, so a key may burst its whole minute at once and then gets a steady N/60 per
second. Requests take one unit when admitted. Tokens are reserved when a request is
admitted — the output it asks for (`max_tokens`, capped at the model's context), so
parallel requests cannot together run past the budget — and settled after the answer
by what its `usage` says it used, which may leave the bucket below zero: the next
request then waits until it refills. A request is always admitted into an untouched
(full) window, whatever it reserves, so a budget below an agent's default `max_tokens`
still lets it work, one request at a time. Over a limit the proxy answers 429 with
Retry-After and the `x-ratelimit-*` headers OpenAI's clients read.
"""

from __future__ import annotations

import math


class Bucket:
    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait(self, now: float, n: float = 1.0) -> float:
        """Seconds until `n` units are there (0: now)."""
        self._refill(now)
        return 0.0 if self.level >= n else (n - self.level) / self.rate

    def take(self, now: float, n: float = 1.0) -> None:
        """Spend `n` units (a negative `n` gives back, never above the capacity)."""
        self._refill(now)
        self.level = min(self.capacity, self.level - n)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.level >= self.capacity

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, int(self.level))

    def full_in(self, now: float) -> float:
        self._refill(now)
        return (self.capacity - self.level) / self.rate


def span(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class Limits:
    """One key's limits: requests and tokens per minute, requests at once."""

    def __init__(self, rpm: int, tpm: int, max_concurrent: int, now: float) -> None:
        self.requests = Bucket(rpm, now) if rpm else None
        self.tokens = Bucket(tpm, now) if tpm else None
        self.max_concurrent = max_concurrent
        self.in_flight = 0

    def admit(self, now: float, reserve: int = 0) -> tuple[str, float] | None:
        """Take a request and reserve `reserve` tokens for it, or say which limit refuses
        it and for how long."""
        if self.max_concurrent and self.in_flight >= self.max_concurrent:
            return (f"{self.in_flight} requests in flight, the most this key may have", 1.0)
        if self.requests is not None and (w := self.requests.wait(now)) > 0:
            return (f"{int(self.requests.capacity)} requests per minute", w)
        if self.tokens is not None and not self.tokens.full(now) and \
                (w := self.tokens.wait(now, max(1.0, reserve))) > 0:
            # A full window admits anything: waiting until it is full is always enough.
            return (f"{int(self.tokens.capacity)} tokens per minute"
                    + (f" (this request may use {reserve})" if reserve > 1 else ""),
                    min(w, self.tokens.full_in(now)))
        if self.requests is not None:
            self.requests.take(now)
        if self.tokens is not None and reserve:
            self.tokens.take(now, reserve)
        self.in_flight += 1
        return None

    def done(self, now: float, tokens: int, reserved: int = 0) -> None:
        """The request ended having used `tokens`: its reservation is settled."""
        self.in_flight -= 1
        if self.tokens is not None and tokens != reserved:
            self.tokens.take(now, tokens - reserved)

    def headers(self, now: float) -> list[tuple[bytes, bytes]]:
        out = []
        for what, b in (("requests", self.requests), ("tokens", self.tokens)):
            if b is not None:
                out += [(b"x-ratelimit-limit-" + what.encode(), b"%d" % b.capacity),
                        (b"x-ratelimit-remaining-" + what.encode(), b"%d" % b.remaining(now)),
                        (b"x-ratelimit-reset-" + what.encode(), span(b.full_in(now)).encode())]
        return out
