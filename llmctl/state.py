"""Files under state/: what the daemon is running, written so readers never see half a file.

May import: config, files, report. `stack.json` is the daemon's report (pids, process groups,
ports, states); `daemon.lock` is held by a live daemon for its whole life, so
`status` can tell a live daemon from a stale file without trusting pids alone;
`starts.json` remembers how long each model's last start took; `backend-keys.json` holds
each backend's key of its current start. Processes and ports
are procs.py's business.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from .config import state_dir
from .files import write_atomic
from .report import StackReport

STACK = "stack.json"
LOCK = "daemon.lock"
STARTS = "starts.json"
# Each managed backend's key of its current start (0600, like every file here): for
# `bench --compare-direct`, the one client that calls a backend past the proxy.
BACKEND_KEYS = "backend-keys.json"


def path(name: str) -> Path:
    return state_dir() / name


def write_json(p: Path, data: Any) -> None:
    write_atomic(p, json.dumps(data, indent=2, sort_keys=True))


def read_json(p: Path) -> Any | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def read_stack() -> StackReport | None:
    data = read_json(path(STACK))
    return StackReport.from_dict(data) if isinstance(data, dict) else None


def running_stack() -> StackReport | None:
    """The live daemon's report; None when no daemon holds the lock (a dead one's file
    is not a running stack)."""
    return read_stack() if daemon_alive() else None


def write_stack(report: StackReport) -> None:
    write_json(path(STACK), report.as_dict())


def clear_stack() -> None:
    path(STACK).unlink(missing_ok=True)
    path(BACKEND_KEYS).unlink(missing_ok=True)


def backend_key(model_key: str) -> str | None:
    """The running backend's key (its vLLM takes no request on /v1 without it)."""
    data = read_json(path(BACKEND_KEYS))
    return data.get(model_key) if isinstance(data, dict) else None


class DaemonLock:
    """An flock held for the daemon's lifetime; the kernel drops it when the daemon dies."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def acquire(self) -> bool:
        p = path(LOCK)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_pid() -> int | None:
    """The pid the daemon wrote into its lock file (valid while `daemon_alive()`)."""
    try:
        return int(path(LOCK).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def daemon_alive() -> bool:
    """True while some process holds the daemon lock."""
    p = path(LOCK)
    if not p.exists():
        return False
    fd = os.open(p, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def previous_start(key: str) -> float | None:
    """Seconds the last successful start of this model took (for progress estimates)."""
    data = read_json(path(STARTS))
    value = data.get(key) if isinstance(data, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def record_start(key: str, seconds: float) -> None:
    data = read_json(path(STARTS))
    data = data if isinstance(data, dict) else {}
    data[key] = seconds
    try:
        write_json(path(STARTS), data)
    except OSError:
        pass  # an estimate is not worth failing a start for
