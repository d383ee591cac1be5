"""`llmctl top` as a person uses it: in a real terminal (tmux) against a whole stack (the
stand-in upstream in place of vLLM) under a small load — the figures move, `q` leaves,
and the shell is back with its screen and terminal settings as they were."""

from __future__ import annotations

import shlex
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..tmux import Terminal
from .test_cli_stack import KEY, Env

ROOT = Path(__file__).resolve().parents[2]


def load(url: str, stop: threading.Event, sent: list[int]) -> None:
    """A few chats a second, each streaming five tokens 50 ms apart."""
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        while not stop.is_set():
            r = http.post(url + "/v1/chat/completions", json={
                "model": "fake-general", "max_tokens": 5, "token_delay": 0.05,
                "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            sent.append(1)


def cells(screen: str, first: str) -> list[str] | None:
    """The cells of the first table row that starts with `first` (for a model: its row in
    the models table, above the hardware's)."""
    rows = [line.split() for line in screen.splitlines() if line.split()[:1] == [first]]
    return rows[0] if rows else None


def figures(t: Terminal) -> tuple[str, str]:
    """general's REQ/S and the admin key's REQ/MIN, as shown now."""
    screen = t.screen(history=False)
    general, admin = cells(screen, "general"), cells(screen, "admin")
    assert general and admin, screen
    return general[4], admin[1]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_top_in_a_terminal_under_load(tmp_path):
    e = Env(tmp_path)
    stop, sent = threading.Event(), []
    t = None
    try:
        assert e.run("up", "--timeout", "60").returncode == 0
        bad = e.run("top", "--url", e.url, "--api-key", "sk-not-this-one")
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert f"{e.url} refused the key (401)" in bad.stderr and "hint:" in bad.stderr

        worker = threading.Thread(target=load, args=(e.url, stop, sent), daemon=True)
        worker.start()
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in e.env.items()
                       if k in ("LLMCTL_HOME", "PATH", "HOME", "NO_COLOR"))
        t = Terminal("llmctl-top-test", f"cd {shlex.quote(str(ROOT))} && env {env} "
                     "PS1='shell$ ' TERM=xterm-256color bash --norc --noprofile", 80, 30)
        t.wait_for("shell$", 15)
        t.type("S=$(stty -g); clear", "Enter")
        t.type(f"{shlex.quote(sys.executable)} -m llmctl top; echo TOP-EXIT=$?; "
               # quoted apart: the command line shown must not hold the word it waits for
               '[ "$(stty -g)" = "$S" ] && echo TTY-"SAME"', "Enter")
        t.wait_for("q quits", 30)
        assert t.shows("#{alternate_on}") == "1"

        # The load shows: general's requests/s above 0, and the admin key's last minute
        # growing from one screen to a later one.
        deadline = time.monotonic() + 30
        while (first := figures(t))[0] in ("-", "0.00"):
            assert time.monotonic() < deadline, t.screen()
            time.sleep(0.3)
        assert float(first[0]) > 0
        # And its tokens/s, from the stand-in's own vLLM series merged into the scrape.
        while (row := cells(t.screen(history=False), "general")) is None or \
                row[5] in ("-", "0", "0.0", "0.00"):
            assert time.monotonic() < deadline, t.screen()
            time.sleep(0.3)
        assert float(row[5]) > 0
        while (later := figures(t))[1] in (first[1], "-") or int(later[1]) <= int(first[1]):
            assert time.monotonic() < deadline, t.screen()
            time.sleep(0.3)
        screen = t.screen(history=False)
        assert all(len(line) <= 80 for line in screen.splitlines())
        assert cells(screen, "coder")[1] == "RUNNING"

        t.type("q")
        after = t.wait_for("TOP-EXIT=0", 10)
        t.wait_for("TTY-SAME", 10)  # echo, canonical mode: as before top
        assert t.shows("#{alternate_on}") == "0" and t.shows("#{cursor_flag}") == "1"
        shown = t.screen(history=False)
        assert "q quits" not in shown and "REQ/S" not in shown  # the shell's screen is back
        assert "-m llmctl top" in shown and after.rstrip().endswith("shell$")
    finally:
        stop.set()
        if t is not None:
            t.close()
        e.run("down")
    assert sent


def test_top_with_no_stack_is_one_line(tmp_path):
    r = Env(tmp_path).run("top")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "error: no stack is running here: start one with `llmctl up` (or watch another with "
        "--url URL)"]
