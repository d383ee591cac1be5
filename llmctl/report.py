"""The typed records of a stack: what the daemon writes to stack.json, and what `status`
adds when it reads them back. One definition for every reader (`ui`, `cli`, `stack`,
`/api/status` and the web page through it).

May import: lifecycle. `as_dict()` is the JSON of stack.json and `status --json` (a
contract for scripts: a test pins its keys); `from_dict()` reads it back, ignoring keys it
does not know (a newer daemon's) and filling the ones an older daemon left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .lifecycle import State

T = TypeVar("T")


def _known(cls: type[T], d: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class BackendReport:
    """One backend as its daemon reports it (a `url` model's: no process, no plan)."""

    name: str
    state: str = State.STOPPED
    aliases: list[str] = field(default_factory=list)
    managed: bool = False
    url: str = ""
    source: str | None = None
    fim: str | None = None
    tools: str | None = None  # the vLLM tool-call parser it runs with
    tool_trained: bool | None = None  # trained for tool use: `auto` tool choice works
    reasoning: str | None = None  # the vLLM reasoning parser
    port: int | None = None
    pid: int | None = None
    pgid: int | None = None  # = pid: each server leads its own process group
    started_at: float | None = None  # wall time of the current process's start
    ready_at: float | None = None  # wall time of the last RUNNING
    restarts: int = 0
    last_exit: str | None = None
    reason: str | None = None  # why FATAL, BACKOFF or STOPPED
    log: str | None = None
    planned_bytes: int = 0
    in_flight: int = 0
    phase: str | None = None  # while STARTING: what the vLLM log says it is doing
    last_start_s: float | None = None
    expected_start_s: float | None = None
    start: str | None = None  # always | on-demand (None: a url model)
    group: str | None = None
    swap: str | None = None
    idle_stop_s: float | None = None
    last_request_at: float | None = None
    stops_at: float | None = None  # when idle_stop will stop it
    queued: int = 0  # requests waiting for its start
    resting: bool = False  # at rest by design: a request starts it
    max_model_len: int | None = None
    weights: str | None = None
    tokenizer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> BackendReport:
        return _known(ManagedReport if d.get("managed", True) else BackendReport, d)


@dataclass
class ManagedReport(BackendReport):
    """A server llmctl starts: its process group, and the KV cache planned and reported."""

    managed: bool = True
    pgid_start: int | None = None  # the leader's start time: whose group this is
    kv_tokens_planned: int | None = None
    kv_tokens_reported: int | None = None
    concurrency_reported: float | None = None
    last_wake_s: float | None = None


@dataclass
class StackReport:
    """stack.json: the daemon and its backends, rewritten on every change."""

    pid: int | None = None
    error: str | None = None
    backends: dict[str, BackendReport] = field(default_factory=dict)
    started_at: float | None = None
    device: str | None = None
    boot_id: str | None = None
    proxy_url: str | None = None
    config_path: str | None = None
    log: str | None = None
    config_digest: str | None = None
    config_toml: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self),
                "backends": {k: b.as_dict() for k, b in self.backends.items()}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> StackReport:
        r = _known(StackReport, {k: v for k, v in d.items() if k != "backends"})
        r.backends = {k: BackendReport.from_dict(b) for k, b in (d.get("backends") or {}).items()
                      if isinstance(b, dict)}
        return r

    def find(self, model: str) -> str | None:
        """The key of the backend a model key, name or alias names."""
        for key, b in self.backends.items():
            if model == key or model == b.name or model in b.aliases:
                return key
        return None


@dataclass
class BackendStatus:
    """A backend as `status` shows it: its report and what this machine says of it now."""

    report: BackendReport
    alive: bool  # a process of its group is alive (a url model: while its daemon checks it)
    uptime_s: float | None = None
    rss_bytes: int | None = None
    gpu_bytes: int | None = None
    log_tail: list[str] | None = None  # the last lines of a FATAL backend's log

    @property
    def used_bytes(self) -> int | None:
        """Memory it holds: on the GPU when NVML says, else resident."""
        return self.gpu_bytes if self.gpu_bytes is not None else self.rss_bytes

    def as_dict(self) -> dict[str, Any]:
        out = {**self.report.as_dict(), "alive": self.alive, "uptime_s": self.uptime_s,
               "rss_bytes": self.rss_bytes, "gpu_bytes": self.gpu_bytes}
        if self.log_tail is not None:
            out["log_tail"] = self.log_tail
        return out


@dataclass
class DaemonStatus:
    running: bool
    pid: int | None = None
    uptime_s: float | None = None
    error: str | None = None
    log: str | None = None


@dataclass
class StackStatus:
    """What `status` shows: the daemon, each backend, what a dead daemon left behind."""

    daemon: DaemonStatus
    proxy_url: str | None
    device: str | None
    backends: dict[str, BackendStatus]
    leftovers: list[int] = field(default_factory=list)  # groups alive without a daemon
    cleaned: list[str] = field(default_factory=list)  # what this `status` stopped

    def as_dict(self) -> dict[str, Any]:
        return {"daemon": dataclasses.asdict(self.daemon), "proxy_url": self.proxy_url,
                "device": self.device,
                "backends": {k: b.as_dict() for k, b in self.backends.items()},
                "leftovers": list(self.leftovers), "cleaned": list(self.cleaned)}
