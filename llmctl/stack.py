"""The stack as the CLI sees it: bring it up (config, pull, plan, ports, the daemon, the
wait), read its state, stop it, clean up.

May import: config, engine, errors, files, gpu, hub, lifecycle, logs, procs, report, state,
survey (gpu, hub, engine and survey inside the functions that need them). Never imports
the daemon, the proxy or vLLM: `status` and `down` must stay fast. Nothing here
prints: what the user sees goes through the `say`/`progress` callables the CLI passes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as cfgmod
from . import procs, state
from .errors import ModelError, StackError, UsageError
from .files import private_dir
from .lifecycle import SETTLED, State
from .logs import likely_cause, log_tail
from .report import BackendReport, BackendStatus, DaemonStatus, StackReport, StackStatus

Say = Callable[[str], None]


def check_ports(cfg: cfgmod.Config) -> None:
    wanted = [("proxy", cfg.proxy.port)] + [(f"model {m.key}", m.port) for m in cfg.models
                                             if m.managed]
    for what, port in wanted:
        if not procs.port_free(port):
            holder = procs.port_holder(port)
            raise StackError(f"port {port} ({what}) is in use"
                             + (f" by {holder}" if holder else ""),
                             "stop that process, or change the port in the config")


# ── status ──

def ours(stack: StackReport, b: BackendReport) -> bool:
    """Whether the group a report names is still the one the daemon started: same boot,
    and its leader (when alive) the same process. After a reboot or a pid wrap the number
    may name someone else's processes, which llmctl must never signal."""
    if not b.pgid:
        return False
    if stack.boot_id and stack.boot_id != procs.boot_id():
        return False
    now = procs.start_ticks(b.pgid)
    return now is None or getattr(b, "pgid_start", None) in (None, now)


def _groups(stack: StackReport) -> dict[str, list[int]]:
    """Each backend's live processes, by its group (none: not ours any more)."""
    return {key: procs.group_pids(b.pgid) if b.pgid and ours(stack, b) else []
            for key, b in stack.backends.items()}


def own_usage() -> tuple[set[int], int] | None:
    """The running stack's processes and resident memory (None: none runs), so a plan
    made while it runs counts the machine as the config will have it."""
    stack = state.running_stack()
    if stack is None:
        return None
    pids = {p for group in _groups(stack).values() for p in group}
    return pids, procs.group_rss(sorted(pids)) or 0


def leftovers(stack: StackReport | None) -> list[int]:
    """Process groups a dead daemon's report names that are still alive."""
    if stack is None:
        return []
    return [b.pgid for key, b in stack.backends.items()
            if b.pgid and ours(stack, b) and procs.group_pids(b.pgid)]


def view(running: bool, stack: StackReport | None, left: list[int],
         cleaned: list[str] | None = None) -> StackStatus:
    """`status`: the daemon's report, with what this machine says now of each backend
    (alive, memory, uptime) and, for a failed one, its log's last lines."""
    s = stack or StackReport()
    now = time.time()
    groups = _groups(s)
    gpu_mem: dict[int, int] = {}
    if s.device == "cuda":  # NVML only where there is a GPU: status stays fast
        from .gpu import process_memory

        gpu_mem = process_memory([p for pids in groups.values() for p in pids])
    backends = {}
    for key, b in s.backends.items():
        # A `url` model has no process here: it is up while its daemon checks it.
        alive = bool(groups[key]) if b.managed else running
        if not running:
            b.state = State.ORPHANED if alive else State.STOPPED
        backends[key] = BackendStatus(
            b, alive,
            uptime_s=round(now - b.ready_at, 1) if b.ready_at and alive else None,
            rss_bytes=procs.group_rss(groups[key]),
            gpu_bytes=sum(gpu_mem.get(p, 0) for p in groups[key]) if gpu_mem else None,
            log_tail=log_tail(Path(b.log), 10) if b.state == State.FATAL and b.log else None)
    daemon = DaemonStatus(running, s.pid if running else None,
                          round(now - s.started_at, 1) if running and s.started_at else None,
                          s.error, s.log)
    return StackStatus(daemon, s.proxy_url if running else None, s.device, backends,
                       left, cleaned or [])


def status_report() -> StackStatus:
    """What `status` shows. A dead daemon's groups hold memory and ports: they are
    stopped first, and listed under "cleaned"."""
    running = state.daemon_alive()
    stack = state.read_stack()
    left = [] if running else leftovers(stack)
    cleaned: list[str] = []
    if left:
        cleaned = clean_leftovers()
        stack = state.read_stack()
        left = leftovers(stack)
    return view(running, stack, left, cleaned)


def clean_leftovers() -> list[str]:
    """Stop groups a dead daemon left behind; returns what was cleaned, for the user."""
    if state.daemon_alive():
        return []
    stack = state.read_stack()
    done = []
    for pgid in leftovers(stack):
        n = len(procs.group_pids(pgid))
        procs.stop_group(pgid, grace=5.0)
        done.append(f"stopped process group {pgid} ({n} processes) left by a dead daemon")
    if stack is not None:
        state.clear_stack()
    return done


# ── up ──

def load_config(path: Path | None) -> cfgmod.Config:
    from .gpu import detect_device

    return cfgmod.load(path, device=detect_device)


def prepare(path: Path | None, *, restart: bool, no_pull: bool, say: Say,
            pull_progress: Callable[[], AbstractContextManager[Any]]) -> cfgmod.Config:
    """Everything `up` does before the daemon: read and check the config and its plan
    (before anything is stopped: a typo must not leave the user with nothing running),
    stop the running stack when restarting, clean what a dead daemon left, write the
    starter config on the first run, pull what is missing, check the ports."""
    from . import hub
    from .engine import python_for
    from .survey import survey

    first_run = path is None and not os.environ.get("LLMCTL_CONFIG") and \
        not cfgmod.config_path().exists()
    cfg = load_config(path)
    if not first_run and all(hub.resolve(m.source) for m in cfg.models if m.managed):
        # A plan that cannot fit fails here, as one line, before anything is stopped.
        survey(cfg, own=own_usage())
    if restart and state.daemon_alive():
        for line in down(timeout=60):
            say(line)
    for line in clean_leftovers():
        say(line)
    if first_run:
        # First run: write the starter file so the key survives restarts and can be read back.
        from .gpu import detect_device

        target = cfgmod.config_path()
        cfgmod.init(target, detect_device())
        say(f"wrote a starter config with a new API key to {target}")
        cfg = load_config(target)
    for m in cfg.models:
        if m.managed and hub.resolve(m.source) is None:
            if no_pull:
                raise ModelError(f"{m.source} ({m.key}) is not pulled, or its pull was "
                                 "interrupted", f"run `llmctl pull {m.key}`, or drop --no-pull")
            with pull_progress() as progress:
                hub.pull(m.source, python=python_for(cfg), say=say, progress=progress,
                         connections=cfg.pull.connections)
    survey(cfg)  # the weights are here now: the plan with their real sizes
    check_ports(cfg)
    return cfg


# daemon.out catches only what the daemon prints outside its log (a crash, a warning from
# a library): kept below this size by rotating it at each start.
OUT_MAX_BYTES = 1 << 20


def start_daemon(cfg: cfgmod.Config) -> subprocess.Popen[bytes]:
    logs = private_dir(cfgmod.logs_dir())
    home = private_dir(cfgmod.state_dir())
    # -P and a private working folder: a `llmctl/` folder where `up` was typed must not
    # run as the daemon (`python -m` puts the working folder first on sys.path).
    argv = [sys.executable, "-P", "-m", "llmctl.daemon"]
    if cfg.path:
        argv += ["--config", str(cfg.path.resolve())]
    out_path = logs / "daemon.out"
    with contextlib.suppress(OSError):
        if out_path.stat().st_size > OUT_MAX_BYTES:
            os.replace(out_path, logs / "daemon.out.1")
    # The daemon logs to daemon.log itself (rotated); this catches what it prints or a crash.
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    # Paths the daemon is told by the environment, made absolute for its other folder.
    env = {**os.environ, **{k: str(Path(os.environ[k]).expanduser().resolve())
                            for k in ("LLMCTL_HOME", "LLMCTL_CONFIG", "XDG_CONFIG_HOME",
                                      "XDG_STATE_HOME", "XDG_CACHE_HOME", "HF_HOME")
                            if os.environ.get(k)}}
    with open(fd, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, cwd=home, env=env)


@dataclass
class Failure:
    """A backend that did not come up, as `up` tells it: why, the likely cause, its log."""

    key: str
    failed: bool  # FATAL (else: still starting when the wait ended)
    why: str
    cause: str | None
    tail: list[str]


@dataclass
class UpResult:
    ok: bool
    stack: StackReport
    failed: list[str]  # backend keys that ended FATAL
    message: str | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def serving(self) -> list[str]:
        """The names of the models `up` started (those at rest wait for a request)."""
        return [b.name for b in self.stack.backends.values() if not b.resting]

    @property
    def resting(self) -> list[str]:
        return [b.name for b in self.stack.backends.values() if b.resting]


def wait_ready(proc: subprocess.Popen[bytes], timeout: float,
               on_update: Callable[[StackReport], None] = lambda s: None,
               poll: float = 0.25) -> UpResult:
    """Wait until every backend is RUNNING or FATAL, the daemon dies, or time runs out;
    then say what failed, each with its log's last lines and likely cause.

    `on_update` gets the daemon's report at every poll (the UI redraws or prints changes)."""
    result = _wait(proc, timeout, on_update, poll)
    for key, b in result.stack.backends.items():
        if key not in result.failed and (result.ok or b.state == State.RUNNING or b.resting):
            continue
        tail = log_tail(Path(b.log), 15) if b.log else []
        why = b.reason or b.last_exit or f"still {b.state}"
        cause = likely_cause(tail)
        result.failures.append(Failure(key, key in result.failed, why,
                                       cause if cause and cause not in why else None, tail))
    return result


def _wait(proc: subprocess.Popen[bytes], timeout: float,
          on_update: Callable[[StackReport], None], poll: float) -> UpResult:
    deadline = time.monotonic() + timeout
    stack = StackReport()
    while True:
        stack = state.read_stack() or StackReport()
        if stack.pid == proc.pid:
            on_update(stack)
            if stack.error:
                return UpResult(False, stack, [], stack.error)
            states = [b.state for b in stack.backends.values()
                      if not b.resting]  # started by a request, not by `up`
            if stack.backends and all(s in SETTLED for s in states):
                failed = [k for k, b in stack.backends.items() if b.state == State.FATAL]
                return UpResult(not failed, stack, failed)
        rc = proc.poll()
        if rc is not None:
            stack = state.read_stack() or StackReport()
            msg = stack.error if stack.pid == proc.pid else None
            return UpResult(False, stack, [], msg or f"the daemon exited ({rc})")
        if time.monotonic() > deadline:
            return UpResult(False, stack, [], f"not ready after {timeout:.0f} s")
        time.sleep(poll)


# ── one model ──

def backend_key(running: StackReport, model: str) -> str:
    """The key of the backend a model key, name or alias names in a running stack."""
    key = running.find(model)
    if key is None:
        raise UsageError(f"no model {model!r} in the running stack",
                         f"known: {', '.join(running.backends)}")
    return key


def control(running: StackReport, key: str, action: str, api_key: str | None,
            timeout: float) -> None:
    """Ask the daemon to start or stop one model (`llmctl start|stop`), through the proxy's
    /api/models/NAME/ACTION, which takes requests from this machine only."""
    import httpx

    url = f"{running.proxy_url}/api/models/{running.backends[key].name}/{action}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(url, headers=headers, timeout=timeout, trust_env=False)
    except httpx.HTTPError as e:
        raise StackError(f"cannot reach the daemon's proxy at {running.proxy_url}: "
                         f"{type(e).__name__}", "`llmctl status` shows whether it runs") from None
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:200]
        raise StackError(f"{action} {key}: {msg}",
                         "the key is `proxy.api_keys` of the running stack's config"
                         if r.status_code == 401 else None)


def wait_backend(key: str, done: Callable[[BackendReport], bool], timeout: float,
                 on_update: Callable[[StackReport], None] = lambda s: None,
                 poll: float = 0.25) -> BackendReport:
    """Poll the daemon's report until `done(backend)`; the backend's last report."""
    deadline = time.monotonic() + timeout
    while True:
        stack = state.running_stack()
        if stack is None:
            raise StackError("the daemon stopped meanwhile", "`llmctl logs` shows why")
        b = stack.backends[key]
        stack.backends = {key: b}
        on_update(stack)
        if done(b):
            return b
        if time.monotonic() > deadline:
            raise StackError(f"{key} is still {b.state} after {timeout:.0f} s",
                             f"`llmctl status` and `llmctl logs {key}` show progress")
        time.sleep(poll)


# ── down ──

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
    running = state.daemon_alive()
    stack = state.read_stack() or StackReport()
    done: list[str] = []
    # Every process of every group, taken now: on a GPU the EngineCore/Worker children
    # hold the memory, and they are gone from their groups once stopped.
    members = {p for pids in _groups(stack).values() for p in pids}
    if running:
        pid = stack.pid or state.lock_pid()
        if pid:
            clean = stop_daemon(pid, timeout)
            done.append(f"stopped the daemon (pid {pid})" + ("" if clean else ", forcibly"))
    # Whatever the daemon did or did not do, no group of ours outlives `down`.
    for key, b in stack.backends.items():
        if b.pgid and ours(stack, b) and procs.group_pids(b.pgid):
            procs.stop_group(b.pgid, grace=5.0)
            done.append(f"stopped leftover processes of {key} (group {b.pgid})")
    for port in [b.port for b in stack.backends.values() if b.port]:
        if not procs.wait_port_free(port, 5):
            raise StackError(f"port {port} is still in use after down"
                             + (f" by {h}" if (h := procs.port_holder(port)) else ""))
    if stack.device == "cuda":
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
