"""Issue 23's rough edges in what a user reads: tables that fit the terminal, a command
list of one line per command, and exit codes. Real `llmctl` processes; no stack runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def llmctl(home: Path, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "NO_COLOR": "1", "COLUMNS": str(columns),
           "HF_HUB_OFFLINE": "1"}
    for k in ("LLMCTL_CONFIG", "LLMCTL_API_KEY", "LLMCTL_MODELS"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "llmctl", *args], env=env,
                          capture_output=True, text=True, timeout=60)


# ── exit codes ──


def test_a_name_that_is_taken_is_a_conflict_not_a_usage_error(tmp_path):
    assert llmctl(tmp_path, "keys", "add", "alice").returncode == 0
    r = llmctl(tmp_path, "keys", "add", "alice")
    assert r.stderr.startswith("error: a key named 'alice' exists")
    assert r.returncode == 1  # 2 is for what cannot be read as typed
    r = llmctl(tmp_path, "keys", "add", "no spaces")
    assert r.returncode == 2 and "is not a valid name" in r.stderr
