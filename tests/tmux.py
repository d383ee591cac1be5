"""A terminal a test drives as a person would: a tmux session of its own (its own server
socket, so a test never touches the user's sessions), keys sent with send-keys, the
screen read with capture-pane."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


class Terminal:
    def __init__(self, name: str, command: str, width: int = 120, height: int = 50) -> None:
        self.name = name
        self.socket = f"{name}-{os.getpid()}"
        self._tmux("kill-session", "-t", name)
        self._tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                   command, check=True)
        self.socket_path = self.shows("#{socket_path}")

    def _tmux(self, *args: str, check: bool = False) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, check=check).stdout

    def screen(self, history: bool = True) -> str:
        """What is shown (with the scrollback when `history`)."""
        return self._tmux("capture-pane", "-p", "-J", *(["-S", "-200"] if history else []),
                          "-t", self.name)

    def shows(self, fmt: str) -> str:
        """A tmux format about the pane: `#{alternate_on}`, `#{cursor_flag}`."""
        return self._tmux("display-message", "-p", "-t", self.name, fmt).strip()

    def type(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys, check=True)

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
        self._tmux("kill-session", "-t", self.name)
        # The server ends with its only session; its socket file stays behind otherwise.
        if self.socket_path and self._tmux("list-sessions") == "":
            Path(self.socket_path).unlink(missing_ok=True)
