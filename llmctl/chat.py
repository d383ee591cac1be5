"""The terminal chat: one-shot from a pipe, or a small REPL. On client.py.

May import: client, errors. Answers go to `out` (stdout); nothing else is printed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from .client import Client


def one_shot(client: Client, model: str, text: str, out: TextIO,
             system: str | None = None, **params: object) -> str:
    messages = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": text})
    return _stream(client, model, messages, out, **params)


def _stream(client: Client, model: str, messages: list[dict[str, str]], out: TextIO,
            **params: object) -> str:
    parts = []
    for piece in client.chat_stream(model, messages, **params):
        parts.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(parts)


def repl(client: Client, model: str, read: Callable[[str], str], out: TextIO,
         system: str | None = None, **params: object) -> None:
    """Keep the conversation; `/reset` forgets it, `/exit` or Ctrl-D leaves."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = read(f"{model}> ")
        except EOFError:
            out.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        answer = _stream(client, model, history, out, **params)
        history.append({"role": "assistant", "content": answer})
