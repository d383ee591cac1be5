"""The states a backend goes through, named as supervisord names them, in one place.

May import: nothing of the package. Every module that writes, compares or shows a
state imports `State` from here; stack.json holds the values as plain strings
(`State` is a `str`, so a string read back compares equal).

    STOPPED ──start──► STARTING ──/health 200 + one-token warm-up──► RUNNING
                          │  exit or timeout before the first RUNNING      │ exit, or health
                          ▼                                                ▼ checks missed
                        FATAL ◄──too many quick failures── BACKOFF ◄───────┘
                                                              │ after 1, 2, 4 … 30 s
                                                              └──► STARTING
    any ──stop──► STOPPING ──► STOPPED
    RUNNING ──swapped out (swap = "sleep")──► SLEEPING ──woken by a request──► RUNNING

A model with `start = "on-demand"` rests in STOPPED until a request starts it; so does a
group member another member swapped out, and any model stopped after `idle_stop`.

supervisord's EXITED (a program that ended as expected) has no use here: a model
server is never expected to end. ORPHANED is not a supervisor state: `status` calls
a group that a dead daemon left alive so.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    FATAL = "FATAL"
    SLEEPING = "SLEEPING"  # swapped out by vLLM's sleep mode: alive, its GPU memory freed
    ORPHANED = "ORPHANED"  # status only: alive, but its daemon is gone


# Every change of state a backend may make (llama-swap's `isValidTransition`): a change
# not listed here is a bug, and `Backend._to` refuses it loudly. Staying in a state with
# a new reason (STOPPED → STOPPED "swapped out…") is always allowed.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.FATAL, State.STOPPING}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.FATAL, State.STOPPING,
                               State.STOPPED}),
    State.RUNNING: frozenset({State.BACKOFF, State.FATAL, State.SLEEPING, State.STOPPING,
                              State.STOPPED}),
    State.BACKOFF: frozenset({State.STARTING, State.RUNNING, State.FATAL, State.STOPPING,
                              State.STOPPED}),
    State.SLEEPING: frozenset({State.RUNNING, State.STOPPING, State.STOPPED}),
    State.FATAL: frozenset({State.STOPPING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.ORPHANED: frozenset(),  # status only: never a backend's own state
}


def allowed(old: State, new: State) -> bool:
    return new == old or new in TRANSITIONS[old]


# Where `up` stops waiting: every backend is serving or has given up.
SETTLED = frozenset({State.RUNNING, State.FATAL})
# Not serving yet, but on the way (`up` on a stack in these says it is still starting).
ON_THE_WAY = frozenset({State.STARTING, State.BACKOFF, State.STOPPED})


class NotServing(Exception):
    """A request for a model that cannot answer now (failed, stopped, starting, its queue
    full): what the proxy tells the client (the HTTP status, OpenAI's error code, and
    when to come back, if ever). The supervisor words every one of them."""

    def __init__(self, status: int, message: str, code: str,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after


def waits_for_request(state: str, on_demand: bool) -> bool:
    """A backend at rest until a request starts it: `up` does not wait for it."""
    return on_demand and state in (State.STOPPED, State.SLEEPING)
