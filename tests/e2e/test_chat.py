"""`llmctl chat` in a real terminal (tmux: send-keys, capture-pane) against the real demo
stack: a question and its streamed answer, a model switch, Ctrl-C mid-answer (and vLLM
stops generating), /save, /exit."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import ROOT

pytestmark = pytest.mark.e2e


class Terminal:
    def __init__(self, name: str, command: str) -> None:
        self.name = name
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "50",
                        command], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-200", "-t",
                               self.name], capture_output=True, text=True).stdout

    def type(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, needle: str, timeout: float = 90, after: int = 0) -> str:
        """The screen once `needle` shows up more than `after` times."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if s.count(needle) > after:
                return s
            assert time.monotonic() < deadline, f"{needle!r} never appeared:\n{s}"
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def running(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def test_chat_in_a_real_terminal(stack, tmp_path):
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env.items()
                   if k.startswith(("LLMCTL_", "PATH", "HOME")))
    cmd = (f"cd {shlex.quote(str(ROOT))} && env {env} {shlex.quote(sys.executable)} -m llmctl "
           f"chat --max-tokens 600; echo CHAT-EXIT=$?; sleep 600")
    t = Terminal("llmctl-e2e-chat", cmd)
    try:
        t.wait_for("smollm2-general>", 60)
        t.type("Say hello in one short sentence.", "Enter")
        t.wait_for("first token", 120)  # the answer streamed, then its stats line
        t.type("/model coder", "Enter")
        t.wait_for("now talking to smollm2-coder")
        t.type("Write a long Python module with twenty functions and docstrings.", "Enter")
        deadline = time.monotonic() + 60
        while running(stack.coder_port) < 1:  # vLLM is generating this answer now
            assert time.monotonic() < deadline, t.screen()
            time.sleep(0.1)
        time.sleep(1.0)  # some of it on the screen
        t.type("C-c")
        screen = t.wait_for("stopped", 30)
        deadline = time.monotonic() + 5
        while running(stack.coder_port) > 0:  # the request was closed: vLLM aborted it
            assert time.monotonic() < deadline, "vLLM still generating after Ctrl-C"
            time.sleep(0.1)
        assert screen.rstrip().endswith("smollm2-coder>"), screen  # back at the prompt
        saved = tmp_path / "chat.md"
        t.type(f"/save {saved}", "Enter")
        t.wait_for("saved 4 messages")
        md = saved.read_text()
        assert md.startswith("# Chat with smollm2-coder")
        assert md.count("## You") == 2 and "twenty functions" in md
        assert "## smollm2-coder" in md  # the partial answer was kept
        t.type("/exit", "Enter")
        t.wait_for("CHAT-EXIT=0", 15)
    finally:
        t.close()
