"""Files under state/: what the daemon is running, written so readers never see half a file.

May import: config. `stack.json` is the daemon's report (pids, process groups,
ports, states); `daemon.lock` is held by a live daemon for its whole life, so
`status` can tell a live daemon from a stale file without trusting pids alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from .config import state_dir

STACK = "stack.json"
LOCK = "daemon.lock"
STARTS = "starts.json"


def path(name: str) -> Path:
    return state_dir() / name


def write_json(p: Path, data: Any) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, p)


def read_json(p: Path) -> Any | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def read_stack() -> dict[str, Any] | None:
    data = read_json(path(STACK))
    return data if isinstance(data, dict) else None


def write_stack(data: dict[str, Any]) -> None:
    write_json(path(STACK), data)


def clear_stack() -> None:
    path(STACK).unlink(missing_ok=True)


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


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it holds nothing, so count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) members of a process group, read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command: state ppid pgrp …
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole group; False when it is already gone (ESRCH)."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except OSError as e:
        if e.errno == errno.ESRCH:
            return False
        raise


def stop_group(pgid: int, grace: float = 10.0, poll: float = 0.1) -> bool:
    """TERM the group, wait up to `grace`, KILL what is left, wait until none is left.

    Returns True when something had to be killed.
    """
    if not group_pids(pgid):
        return False
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_pids(pgid):
            return False
        time.sleep(poll)
    signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(poll)
    return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


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


def log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 64 * 1024, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]
