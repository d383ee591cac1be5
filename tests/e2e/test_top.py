"""`llmctl top` in a real terminal (tmux) against the real demo stack under a small load:
the figures from vLLM's own series (tokens/s, KV cache) and the proxy's move, `q`
leaves, and the shell's screen comes back."""

from __future__ import annotations

import shlex
import sys
import threading
import time

import httpx
import pytest

from ..integration.test_cli_top import cells
from ..tmux import Terminal
from .conftest import KEY, ROOT

pytestmark = pytest.mark.e2e


def test_top_shows_the_demo_stack_working(stack):
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
            while not stop.is_set():
                http.post(f"{stack.url}/v1/chat/completions", json={
                    "model": "smollm2-general", "max_tokens": 24, "temperature": 0,
                    "messages": [{"role": "user", "content": "Count to ten."}]})

    worker = threading.Thread(target=load, daemon=True)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env.items()
                   if k in ("LLMCTL_HOME", "PATH", "HOME", "NO_COLOR"))
    t = Terminal("llmctl-top-e2e", f"cd {shlex.quote(str(ROOT))} && env {env} "
                 "PS1='shell$ ' TERM=xterm-256color bash --norc --noprofile", 80, 30)
    try:
        t.wait_for("shell$", 15)
        worker.start()
        t.type(f"{shlex.quote(sys.executable)} -m llmctl top; echo TOP-EXIT=$?", "Enter")
        t.wait_for("q quits", 60)
        deadline = time.monotonic() + 90
        while True:  # general serves the load: requests/s and vLLM's tokens/s above 0
            row = cells(t.screen(history=False), "general")
            if row and row[4] not in ("-", "0.00") and row[5] not in ("-", "0", "0.0"):
                break
            assert time.monotonic() < deadline, t.screen()
            time.sleep(0.5)
        assert float(row[4]) > 0 and float(row[5]) > 0
        assert all(len(line) <= 80 for line in t.screen(history=False).splitlines())
        t.type("q")
        t.wait_for("TOP-EXIT=0", 15)
        assert "q quits" not in t.screen(history=False)
    finally:
        stop.set()
        t.close()
        worker.join(timeout=130)
