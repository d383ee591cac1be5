"""Processes, process groups and ports: find them, signal them, stop them, measure them.

May import: nothing of the package (psutil, inside the functions that need it). Every
backend runs in a session of its own, so its pid is its process group id; stopping
is always by group: TERM, a grace period, KILL, and `ESRCH` means already gone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import time

_PR_SET_PDEATHSIG = 1
try:  # looked up here, in the parent: loading a library between fork and exec can deadlock
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:
    _prctl = None


def die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when the parent dies (even by SIGKILL)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def boot_id() -> str:
    """This boot's id: pids recorded under another boot name other processes now."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int | None) -> int | None:
    """When a process started (clock ticks since boot): with its pid, who it is."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


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
    except (ProcessLookupError, PermissionError):  # gone, or another user's: not ours
        return False
    except OSError as e:
        if e.errno in (errno.ESRCH, errno.EPERM):
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


def group_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the group's live processes have used, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def group_rss(pids: list[int]) -> int | None:
    """Resident memory of a group's processes (as read by `group_pids`)."""
    if not pids:
        return None
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """'pid 123 (python)' for the process listening on `port`, when it can be found."""
    import psutil

    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.Error:
        return None
    for c in conns:
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.Error:
                name = "?"
            return f"pid {c.pid} ({name})"
    return None


def wait_port_free(port: int, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
