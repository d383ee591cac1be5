"""The models a proxy routes to, as it sees them: what it reads of a backend (`Routable`),
what it asks of the supervisor (`Control`), and the lookup by name or alias.

May import: config, lifecycle, proxy.answers, proxy.callers. The proxy never
changes a backend's state or counters: it reads these four attributes, and every
request holds `control.admit(backend, wait=…)` for its whole life; the supervisor alone
counts requests in flight, starts models on demand and decides every 503.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ..config import ModelConfig
from ..lifecycle import State
from .answers import Refused
from .callers import ANYONE, Caller

# The states in which a server llmctl started has its own /metrics worth reading.
SCRAPED_STATES = (State.RUNNING, State.SLEEPING)


class Routable(Protocol):
    model: ModelConfig
    fim: str | None  # the FIM template family, or None when the model takes no FIM
    state: str
    served: dict[str, Any]  # what the server says of itself (vLLM: root, max_model_len)
    upstream_auth: bytes | None  # the Authorization value the server takes, or None


class Control(Protocol):
    """What the proxy asks of the supervisor."""

    def admit(self, b: Any, wait: float) -> AbstractAsyncContextManager[None]:
        """Held for a request's life: in flight, started first when at rest (up to `wait`
        seconds), or refused with `lifecycle.NotServing`."""
        ...

    def start_by_hand(self, b: Any) -> None: ...
    async def stop_by_hand(self, b: Any) -> None: ...


class Models:
    """The backends by every name a client may send as `model`."""

    def __init__(self, backends: Iterable[Routable]) -> None:
        self.all = list(backends)
        self.by_name: dict[str, Routable] = {}
        for b in self.all:
            for n in b.model.names:
                self.by_name.setdefault(n, b)

    def find(self, name: str, caller: Caller = ANYONE) -> Routable:
        """The backend a name or an alias names; a 404 that lists the known ones (those
        the caller's key may use)."""
        b = self.by_name.get(name)
        if b is None or not caller.may_use(b):
            known = ", ".join(x.model.name for x in self.all if caller.may_use(x))
            raise Refused(404, f"model '{name}' does not exist; known models: {known}",
                          "model_not_found", param="model")
        return b

    def infill_model(self) -> str:
        """/infill names no model: the one that takes FIM (the coder when several do)."""
        able = [b for b in self.all if b.fim]
        if not able:
            raise Refused(400, "no model here takes fill-in-the-middle; set `fim` (deepseek, "
                          "starcoder, qwen, codellama or codestral) on a model in the config",
                          "fim_not_supported")
        return next((b for b in able if b.model.key == "coder"), able[0]).model.name

    def engines(self) -> list[tuple[str, str]]:
        """(model name, base URL) of each server llmctl started that is up: those whose
        own /metrics the proxy reads. `url` models are another server's to watch."""
        return [(b.model.name, b.model.upstream) for b in self.all
                if b.model.managed and b.state in SCRAPED_STATES]

    def keys_for(self, caller: Caller) -> set[str] | None:
        """The model keys a caller may use; None: all of them."""
        return None if caller.allowed is None else \
            {b.model.key for b in self.all if caller.may_use(b)}

    def states(self) -> dict[str, str]:
        return {b.model.name: str(b.state) for b in self.all}
