"""`llmctl chat` from a pipe, as scripts use it, against the stand-in upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import start_upstream


@pytest.fixture(scope="module")
def up():
    u = start_upstream("fake")
    yield u
    u.stop()


def chat(*args: str, text: str = "hello", home) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "NO_COLOR": "1"}
    env.pop("LLMCTL_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "llmctl", "chat", *args], input=text, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_pipe_gets_only_the_answer_on_stdout(up, tmp_path):
    r = chat("--url", up.url, "--model", "fake", "--max-tokens", "3", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tok0 tok1 tok2 \n" and r.stderr == ""
    body = json.loads(up.stats()["last_body"])
    assert body["max_tokens"] == 3 and body["messages"] == [{"role": "user", "content": "hello"}]


def test_stats_on_request_go_to_stderr(up, tmp_path):
    r = chat("--url", up.url, "--model", "fake", "--max-tokens", "4", "--stats", home=tmp_path)
    assert r.returncode == 0 and r.stdout == "tok0 tok1 tok2 tok3 \n"
    assert "first token" in r.stderr and "4 tokens" in r.stderr


def test_an_unknown_model_is_refused_before_anything_is_asked(up, tmp_path):
    before = up.stats()["requests"]
    r = chat("--url", up.url, "--model", "nosuch", home=tmp_path)
    assert r.returncode == 2 and "no model named 'nosuch'" in r.stderr  # a usage error
    assert "known: fake" in r.stderr and up.stats()["requests"] == before


def test_no_server_is_one_line_with_the_way_out(tmp_path):
    r = chat("--url", "http://127.0.0.1:9", "--model", "x", home=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach http://127.0.0.1:9" in r.stderr and "llmctl up" in r.stderr


class Terminal:
    """`llmctl chat` on a pseudo-terminal, as a person types into it."""

    def __init__(self, *args: str, home) -> None:
        import fcntl
        import struct
        import termios

        self.fd, tty = os.openpty()
        fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {**os.environ, "LLMCTL_HOME": str(home), "NO_COLOR": "1", "TERM": "xterm",
               "PROMPT_TOOLKIT_NO_CPR": "1"}
        env.pop("LLMCTL_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "llmctl", "chat", *args],
                                     stdin=tty, stdout=tty, stderr=tty, env=env,
                                     start_new_session=True)
        os.close(tty)
        self.seen = ""

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """Everything shown up to `needle` (escape sequences left out)."""
        import re
        import select
        import time

        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never shown; the screen: {self.seen[-800:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the other side closed
                    break
                self.seen += re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", chunk)
        assert needle in self.seen, self.seen[-800:]
        shown, _, self.seen = self.seen.partition(needle)
        return shown

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.fd)


def test_ctrl_c_at_the_prompt_keeps_the_chat_and_ctrl_d_leaves(up, tmp_path):
    t = Terminal("--url", up.url, "--model", "fake", "--max-tokens", "3", "--plain",
                 home=tmp_path)
    try:
        assert "Ctrl-D or /exit leaves" in t.wait_for("fake>")  # said at the start
        t.type(b"\x03")  # Ctrl-C at the empty prompt, as if to stop an answer just ended
        t.wait_for("(Ctrl-D or /exit leaves the chat)")
        t.wait_for("fake>")
        assert t.proc.poll() is None
        t.type(b"what now?\r")
        t.wait_for("tok0 tok1 tok2")  # the same session answers
        t.wait_for("fake>")
        t.type(b"half a line\x03")  # clears what was typed, and stays
        t.type(b"\x04")  # Ctrl-D leaves
        assert t.proc.wait(timeout=20) == 0
    finally:
        t.close()
    body = json.loads(up.stats()["last_body"])
    assert body["messages"] == [{"role": "user", "content": "what now?"}]
