"""`llmctl chat` in a real terminal (tmux: send-keys, capture-pane) against the real demo
stack: a question and its streamed answer, a model switch, Ctrl-C mid-answer (and vLLM
stops generating), /save, /exit."""

from __future__ import annotations

import shlex
import sys
import time

import httpx
import pytest

from ..tmux import Terminal
from .conftest import ROOT

pytestmark = pytest.mark.e2e


def running(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def test_chat_in_a_real_terminal(stack, tmp_path):
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env.items()
                   if k.startswith(("LLMCTL_", "PATH", "HOME")))
    cmd = (f"cd {shlex.quote(str(ROOT))} && env {env} {shlex.quote(sys.executable)} -m llmctl "
           f"chat --max-tokens 600 --temperature 0; echo CHAT-EXIT=$?; sleep 600")
    t = Terminal("llmctl-e2e-chat", cmd)
    try:
        t.wait_for("smollm2-general>", 60)
        t.type("Say hello in one short sentence.", "Enter")
        t.wait_for("first token", 120)  # the answer streamed, then its stats line
        t.type("/model coder", "Enter")
        t.wait_for("now talking to smollm2-coder")
        # A 135M model may end an answer early: ask until Ctrl-C lands mid-answer. "x" first:
        # mid-answer it is dropped (typed keys never reach the answer), and if the answer
        # had just ended, Ctrl-C clears the "x" instead of leaving the chat.
        for attempt in range(4):
            # Greedy decoding of this question gives a long answer (~130 tokens, 6 s).
            t.type("Write a Python function that returns the nth Fibonacci number, and "
                   "explain it.", "Enter")
            deadline = time.monotonic() + 60
            while running(stack.coder_port) < 1:  # vLLM is generating this answer now
                assert time.monotonic() < deadline, t.screen()
                time.sleep(0.05)
            time.sleep(0.3)
            t.type("x")
            t.type("C-c")
            try:
                screen = t.wait_for("stopped", 10)
                break
            except AssertionError:
                assert attempt < 3, "every answer ended before Ctrl-C"
        deadline = time.monotonic() + 5
        while running(stack.coder_port) > 0:  # the request was closed: vLLM aborted it
            assert time.monotonic() < deadline, "vLLM still generating after Ctrl-C"
            time.sleep(0.1)
        assert screen.rstrip().endswith("smollm2-coder>"), screen  # back at the prompt
        saved = tmp_path / "chat.md"
        t.type(f"/save {saved}", "Enter")
        screen = t.wait_for("saved ")
        md = saved.read_text()
        # Each answer under the model that wrote it (the first was the general model's);
        # the one stopped mid-answer kept, closed and marked.
        assert md.startswith("# Chat with smollm2-general, smollm2-coder\n"), md[:200]
        assert md.count("## smollm2-general") == 1 and "Fibonacci" in md
        assert md.count("## You") == md.count("## smollm2-coder") + 1 == attempt + 2
        assert md.rstrip().endswith("*(cut short)*"), md[-300:]
        t.type("/exit", "Enter")
        t.wait_for("CHAT-EXIT=0", 15)
    finally:
        t.close()


def test_one_streamed_answer_from_vllm_in_the_web_page(stack):
    """Issue 13: the page, in a real browser, against the real stack."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    from .conftest import KEY

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or
                                    "/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(stack.url + "/")
            page.fill("#key-input", KEY)
            page.click("#key-form button")
            expect(page.locator("#model")).to_have_value("smollm2-general")
            page.fill("#prompt", "Name three colours.")
            page.keyboard.press("Enter")
            expect(page.locator(".msg.assistant .stats")).to_contain_text("tokens/s",
                                                                          timeout=120_000)
            assert page.locator(".msg.assistant .body").inner_text().strip()
        finally:
            browser.close()
