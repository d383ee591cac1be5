"""Usage per key and model: counted in memory on the request path, written to SQLite off it.

May import: config. The proxy adds each finished request to a `Tally` (a dict update);
the daemon writes what piled up to `state/usage.db` every couple of seconds, in a
thread, and once more at shutdown, so a request never waits for the disk and the
figures survive restarts. `llmctl keys list` reads the file directly.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from . import config as cfgmod

_SCHEMA = """CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key, model))"""


def path() -> Path:
    return cfgmod.state_dir() / "usage.db"


def day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(t))


class Tally:
    """What finished since the last write: (key, model) → [requests, errors, prompt,
    completion, last used]."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], list[float]] = {}

    def add(self, key: str, model: str, error: bool, prompt: int, completion: int,
            now: float) -> None:
        row = self.pending.get((key, model))
        if row is None:
            row = self.pending[(key, model)] = [0, 0, 0, 0, 0.0]
        row[0] += 1
        row[1] += error
        row[2] += prompt
        row[3] += completion
        row[4] = now

    def take(self) -> dict[tuple[str, str], list[float]]:
        out, self.pending = self.pending, {}
        return out

    def put_back(self, batch: dict[tuple[str, str], list[float]]) -> None:
        """A batch that could not be written joins what came since, for the next write."""
        for (key, model), r in batch.items():
            row = self.pending.setdefault((key, model), [0, 0, 0, 0, 0.0])
            for i in range(4):
                row[i] += r[i]
            row[4] = max(row[4], r[4])


# How long a write waits for another reader's lock before it gives up (the batch is kept
# and written next time): short, so the writer's thread is never stuck for long.
LOCK_WAIT_S = 2.0


def _connect(p: Path, timeout: float = LOCK_WAIT_S) -> sqlite3.Connection:
    p.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(p, timeout=timeout)
    db.execute(_SCHEMA)
    return db


def write(batch: dict[tuple[str, str], list[float]], p: Path | None = None,
          timeout: float = LOCK_WAIT_S) -> None:
    if not batch:
        return
    db = _connect(p or path(), timeout)
    try:
        with db:
            db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, key, model) "
                "DO UPDATE SET requests = requests + excluded.requests, errors = errors + "
                "excluded.errors, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens, "
                "last_used = max(last_used, excluded.last_used)",
                [(day(r[4]), k, m, int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4])
                 for (k, m), r in batch.items()])
    finally:
        db.close()


def summary(p: Path | None = None, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per key: requests, errors and tokens today and in total, the last use, and per model."""
    p = p or path()
    if not p.exists():
        return {}
    today = day(now or time.time())
    db = _connect(p)
    try:
        rows = db.execute("SELECT day, key, model, requests, errors, prompt_tokens, "
                          "completion_tokens, last_used FROM usage").fetchall()
    finally:
        db.close()
    out: dict[str, dict[str, Any]] = {}
    fields = ("requests", "errors", "prompt_tokens", "completion_tokens")
    for d, key, model, *nums, last in rows:
        s = out.setdefault(key, {"today": dict.fromkeys(fields, 0),
                                 "total": dict.fromkeys(fields, 0), "last_used": 0.0,
                                 "models": {}})
        per = s["models"].setdefault(model, dict.fromkeys(fields, 0))
        for f, n in zip(fields, nums, strict=True):
            s["total"][f] += n
            per[f] += n
            if d == today:
                s["today"][f] += n
        s["last_used"] = max(s["last_used"], last)
    return out
