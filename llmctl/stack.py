"""The stack as the CLI sees it: start the daemon and wait, read its state, stop it, clean up.

May import: config, errors, gpu (inside functions), lifecycle, logs, procs, state.
Never imports the daemon, the proxy or vLLM: `status` and `down` must stay fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as cfgmod
from . import procs, state
from .errors import StackError, UsageError
from .lifecycle import SETTLED, State
from .logs import log_tail


def check_ports(cfg: cfgmod.Config) -> None:
    wanted = [("proxy", cfg.proxy.port)] + [(f"model {m.key}", m.port) for m in cfg.models
                                             if m.managed]
    for what, port in wanted:
        if not procs.port_free(port):
            holder = procs.port_holder(port)
            raise StackError(f"port {port} ({what}) is in use"
                             + (f" by {holder}" if holder else ""),
                             "stop that process, or change the port in the config")


@dataclass
class Status:
    running: bool  # a daemon holds the lock
    stack: dict[str, Any] | None  # its report, or what a dead one left
    leftovers: list[int] = field(default_factory=list)  # process groups alive without a daemon

    def as_dict(self) -> dict[str, Any]:
        s = self.stack or {}
        backends = {}
        now = time.time()
        groups = {key: procs.group_pids(b["pgid"]) if ours(s, b) else []
                  for key, b in (s.get("backends") or {}).items()}
        gpu_mem: dict[int, int] = {}
        if s.get("device") == "cuda":  # NVML only where there is a GPU: status stays fast
            from .gpu import process_memory

            gpu_mem = process_memory([p for pids in groups.values() for p in pids])
        for key, b in (s.get("backends") or {}).items():
            # A `url` model has no process here: it is up while its daemon checks it.
            alive = bool(groups[key]) if b.get("managed", True) else self.running
            backends[key] = {
                **b,
                "alive": alive,
                "uptime_s": round(now - b["ready_at"], 1) if b.get("ready_at") and alive else None,
                "rss_bytes": procs.group_rss(groups[key]),
                "gpu_bytes": sum(gpu_mem.get(p, 0) for p in groups[key]) if gpu_mem else None,
            }
            if b.get("state") == State.FATAL and b.get("log"):
                backends[key]["log_tail"] = log_tail(Path(b["log"]), 10)
            if not self.running:
                backends[key]["state"] = State.ORPHANED if alive else State.STOPPED
        return {
            "daemon": {"running": self.running, "pid": s.get("pid") if self.running else None,
                       "uptime_s": round(now - s["started_at"], 1)
                       if self.running and s.get("started_at") else None,
                       "error": s.get("error"), "log": s.get("log")},
            "proxy_url": s.get("proxy_url") if self.running else None,
            "device": s.get("device"),
            "backends": backends,
            "leftovers": self.leftovers,
        }


def ours(stack: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether the group a report names is still the one the daemon started: same boot,
    and its leader (when alive) the same process. After a reboot or a pid wrap the number
    may name someone else's processes, which llmctl must never signal."""
    if not b.get("pgid"):
        return False
    if stack.get("boot_id") and stack["boot_id"] != procs.boot_id():
        return False
    now = procs.start_ticks(b["pgid"])
    return now is None or b.get("pgid_start") in (None, now)


def read_status() -> Status:
    running = state.daemon_alive()
    stack = state.read_stack()
    leftovers = []
    if not running and stack:
        for b in (stack.get("backends") or {}).values():
            if ours(stack, b) and procs.group_pids(b["pgid"]):
                leftovers.append(b["pgid"])
    return Status(running, stack, leftovers)


def status_report() -> dict[str, Any]:
    """What `status` shows. A dead daemon's groups hold memory and ports: they are
    stopped first, and listed under "cleaned"."""
    st = read_status()
    cleaned: list[str] = []
    if not st.running and st.leftovers:
        cleaned = clean_leftovers()
        st = read_status()
    return {**st.as_dict(), "cleaned": cleaned}


def clean_leftovers() -> list[str]:
    """Stop groups a dead daemon left behind; returns what was cleaned, for the user."""
    st = read_status()
    if st.running:
        return []
    done = []
    for pgid in st.leftovers:
        n = len(procs.group_pids(pgid))
        procs.stop_group(pgid, grace=5.0)
        done.append(f"stopped process group {pgid} ({n} processes) left by a dead daemon")
    if st.stack is not None:
        state.clear_stack()
    return done


def start_daemon(cfg: cfgmod.Config) -> subprocess.Popen[bytes]:
    logs = cfgmod.logs_dir()
    logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "llmctl.daemon"]
    if cfg.path:
        argv += ["--config", str(cfg.path)]
    # The daemon logs to daemon.log itself (rotated); this catches what it prints or a crash.
    with open(logs / "daemon.out", "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)


@dataclass
class UpResult:
    ok: bool
    stack: dict[str, Any]
    failed: list[str]  # backend keys that ended FATAL
    message: str | None = None


def wait_ready(proc: subprocess.Popen[bytes], timeout: float,
               on_update: Callable[[dict[str, Any]], None] = lambda s: None,
               poll: float = 0.25) -> UpResult:
    """Wait until every backend is RUNNING or FATAL, the daemon dies, or time runs out.

    `on_update` gets the daemon's report at every poll (the UI redraws or prints changes)."""
    deadline = time.monotonic() + timeout
    stack: dict[str, Any] = {}
    while True:
        stack = state.read_stack() or {}
        if stack.get("pid") == proc.pid:
            on_update(stack)
            if stack.get("error"):
                return UpResult(False, stack, [], stack["error"])
            states = [b.get("state") for b in stack["backends"].values()
                      if not b.get("resting")]  # started by a request, not by `up`
            if stack["backends"] and all(s in SETTLED for s in states):
                failed = [k for k, b in stack["backends"].items() if b.get("state") == State.FATAL]
                return UpResult(not failed, stack, failed)
        rc = proc.poll()
        if rc is not None:
            stack = state.read_stack() or {}
            msg = stack.get("error") if stack.get("pid") == proc.pid else None
            return UpResult(False, stack, [], msg or f"the daemon exited ({rc})")
        if time.monotonic() > deadline:
            return UpResult(False, stack, [], f"not ready after {timeout:.0f} s")
        time.sleep(poll)


def backend_key(running: dict[str, Any], model: str) -> str:
    """The key of the backend a model key, name or alias names in a running stack."""
    for key, b in (running.get("backends") or {}).items():
        if model == key or model == b.get("name") or model in (b.get("aliases") or []):
            return key
    known = ", ".join(running.get("backends") or {})
    raise UsageError(f"no model {model!r} in the running stack", f"known: {known}")


def control(running: dict[str, Any], key: str, action: str, api_key: str | None,
            timeout: float) -> None:
    """Ask the daemon to start or stop one model (`llmctl start|stop`), through the proxy's
    /api/models/NAME/ACTION, which takes requests from this machine only."""
    import httpx

    b = running["backends"][key]
    url = f"{running['proxy_url']}/api/models/{b['name']}/{action}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(url, headers=headers, timeout=timeout, trust_env=False)
    except httpx.HTTPError as e:
        raise StackError(f"cannot reach the daemon's proxy at {running['proxy_url']}: "
                         f"{type(e).__name__}", "`llmctl status` shows whether it runs") from None
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:200]
        raise StackError(f"{action} {key}: {msg}",
                         "the key is `proxy.api_keys` of the running stack's config"
                         if r.status_code == 401 else None)


def wait_backend(key: str, done: Callable[[dict[str, Any]], bool], timeout: float,
                 on_update: Callable[[dict[str, Any]], None] = lambda s: None,
                 poll: float = 0.25) -> dict[str, Any]:
    """Poll the daemon's report until `done(backend)`; the backend's last report."""
    deadline = time.monotonic() + timeout
    while True:
        stack = state.running_stack()
        if stack is None:
            raise StackError("the daemon stopped meanwhile", "`llmctl logs` shows why")
        on_update({**stack, "backends": {key: stack["backends"][key]}})
        b = stack["backends"][key]
        if done(b):
            return b
        if time.monotonic() > deadline:
            raise StackError(f"{key} is still {b.get('state')} after {timeout:.0f} s",
                             f"`llmctl status` and `llmctl logs {key}` show progress")
        time.sleep(poll)


def stop_daemon(pid: int, timeout: float) -> bool:
    """TERM the daemon and wait for it to finish its own shutdown; KILL at the deadline."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not state.daemon_alive() and not procs.pid_alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return False


def down(timeout: float = 60.0) -> list[str]:
    """Stop the daemon and everything it started; returns what was done."""
    st = read_status()
    done: list[str] = []
    stack = st.stack or {}
    # Every process of every group, taken now: on a GPU the EngineCore/Worker children
    # hold the memory, and they are gone from their groups once stopped.
    members = {p for b in (stack.get("backends") or {}).values() if ours(stack, b)
               for p in procs.group_pids(b["pgid"])}
    if st.running:
        pid = stack.get("pid") or state.lock_pid()
        if pid:
            clean = stop_daemon(pid, timeout)
            done.append(f"stopped the daemon (pid {pid})" + ("" if clean else ", forcibly"))
    # Whatever the daemon did or did not do, no group of ours outlives `down`.
    for key, b in (stack.get("backends") or {}).items():
        pgid = b.get("pgid")
        if ours(stack, b) and procs.group_pids(pgid):
            procs.stop_group(pgid, grace=5.0)
            done.append(f"stopped leftover processes of {key} (group {pgid})")
    ports = [b.get("port") for b in (stack.get("backends") or {}).values() if b.get("port")]
    for port in ports:
        if not procs.wait_port_free(port, 5):
            raise StackError(f"port {port} is still in use after down"
                             + (f" by {h}" if (h := procs.port_holder(port)) else ""))
    if stack.get("device") == "cuda":
        done.append(_confirm_gpu_released(members))
    state.clear_stack()
    return done


def _confirm_gpu_released(pids: set[int]) -> str:
    """NVML must no longer list any process of ours (the driver frees memory at exit)."""
    from .gpu import process_memory

    deadline = time.monotonic() + 10
    held = process_memory(pids)
    while held and time.monotonic() < deadline:
        time.sleep(0.2)
        held = process_memory(pids)
    if held:
        raise StackError(f"GPU memory is still held by pids {sorted(held)} after down",
                         "`nvidia-smi` shows them; kill them by pid")
    return "GPU memory released (NVML lists no process of this stack)"
