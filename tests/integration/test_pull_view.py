"""`llmctl pull`'s progress as a person sees it, in a real 80-column terminal: the whole
model and each file under way, one line each, figures never wrapped, units binary as
the closing line says."""

from __future__ import annotations

import os
import re
import shlex
import sys
import time

from tests.tmux import Terminal

from . import test_cli_pull as cli
from .test_cli_pull import REPO, Hub, env_for, make_repo

MiB = 1024 * 1024


def test_the_progress_fits_80_columns_with_a_line_per_file(tmp_path):
    # Two 40 MiB shards at 8 MiB/s a connection, 24 in all: a few seconds to watch.
    class Sharded(Hub):
        def __init__(self) -> None:
            def shards(folder, weights):
                make_repo(folder, weights)
                first = (folder / "model.safetensors").read_bytes()
                (folder / "model-00002-of-00002.safetensors").write_bytes(
                    first[:-weights] + os.urandom(weights))
                (folder / "model.safetensors").rename(
                    folder / "model-00001-of-00002.safetensors")
            cli.make_repo = shards
            try:
                super().__init__(tmp_path, "--conn-rate", str(8 * MiB), "--total-rate",
                                 str(24 * MiB), weights=40 * MiB)
            finally:
                cli.make_repo = make_repo

    hub = Sharded()
    env = env_for(tmp_path / "home", hub.url)
    env.pop("COLUMNS")
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()
                       if k.startswith(("LLMCTL_", "HF_", "NO_COLOR", "PATH")))
    term = Terminal("pull-view", f"env {exports} {shlex.quote(sys.executable)} -m llmctl pull "
                    f"{REPO}; sleep 60", width=80, height=24)
    try:
        deadline = time.monotonic() + 60
        while True:  # the model and at least one file under way
            live = [line for line in term.screen(history=False).splitlines() if line.strip()]
            rows = [line for line in live if "MiB/s" in line]
            if len(rows) >= 2 and "model-0000" in "".join(rows):
                break
            assert time.monotonic() < deadline, "\n".join(live)
            time.sleep(0.1)
        for line in live:
            assert len(line) <= 80
            # A figure's unit on its own line is a wrapped cell.
            assert not re.fullmatch(r"\s*(MiB|GiB|MB|/s|MiB/s)\s*", line), "\n".join(live)
        for line in rows:
            assert re.search(r"[\d.]+/[\d.]+ (MiB|GiB) +[\d.]+ MiB/s", line), line
        assert rows[0].startswith(REPO)
        done = term.wait_for("✓", timeout=60)
        assert "fetched" in done
    finally:
        term.close()
        hub.stop()
