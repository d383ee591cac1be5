"""The terminal chat: a conversation, its slash commands, and the two ways in — a prompt
with history and multi-line input, or one message from a pipe.

May import: client, errors, files (and prompt_toolkit: the only importer). What is shown goes
through a `View` (ui.ChatView draws Markdown on a terminal; the pipe mode writes raw
text), so the loop is tested over scripted streams without a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import ApiError, LlmctlError, UsageError

HELP = """\
/help              this list
/model [NAME]      list the models, or switch to one (the conversation is kept)
/system TEXT       set the system prompt (/system alone removes it)
/clear             forget the conversation
/retry             ask the last question again
/save FILE         write the conversation as Markdown
/exit              leave (Ctrl-D too)
Enter sends; Alt-Enter (or Esc, Enter) starts a new line; pasted text keeps its lines.
Ctrl-C during an answer stops it and keeps what arrived; at the prompt it clears the
line and never leaves: a Ctrl-C meant for an answer that had just ended loses nothing."""

LEAVE_HINT = "(Ctrl-D or /exit leaves the chat)"
CUT = "*(cut short)*"  # how /save marks an answer that did not finish

WAIT_STEP = 2.0  # seconds between tries while a model is starting


class Events(Protocol):
    """What the chat needs of a client (client.Client has it)."""

    def chat_events(self, model: str, messages: list[dict[str, str]],
                    **params: Any) -> Iterator[tuple[str, Any]]: ...
    def models(self) -> list[dict[str, Any]]: ...


class View(Protocol):
    """Shows one answer (begin, write…, end: end closes the line only when something was
    written) and the chat's talk."""

    def begin(self) -> None: ...
    def write(self, text: str) -> None: ...
    def end(self, interrupted: bool) -> None: ...
    def stats(self, text: str) -> None: ...
    def info(self, text: str) -> None: ...
    def error(self, message: str, hint: str | None) -> None: ...
    def waiting(self, text: str | None) -> None: ...


@dataclass
class Reply:
    text: str = ""
    ttft: float | None = None
    seconds: float = 0.0
    tokens: int | None = None  # the server's usage.completion_tokens
    chunks: int = 0
    interrupted: bool = False

    def stats(self) -> str:
        tokens = self.tokens if self.tokens is not None else self.chunks
        rate = (tokens - 1) / (self.seconds - self.ttft) if (
            self.ttft is not None and tokens > 1 and self.seconds > self.ttft) else None
        parts = [f"first token {self.ttft:.2f} s" if self.ttft is not None else "no token",
                 f"{tokens} tokens" + ("" if self.tokens is not None else " (counted chunks)")]
        if rate:
            parts.append(f"{rate:.1f} tokens/s")
        return " · ".join(parts) + (" · stopped" if self.interrupted else "")


@dataclass
class Session:
    client: Events
    model: str
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def messages(self) -> list[dict[str, str]]:
        """What the server is sent: roles and contents (history also notes, for /save, the
        model that wrote each answer and whether it was cut)."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": m["role"], "content": m["content"]} for m in self.history]

    def known(self) -> list[dict[str, Any]]:
        return self.client.models()

    def check_model(self, name: str) -> str:
        """The served name for `name` (a name or an alias); UsageError naming the known."""
        known = self.known()
        for m in known:
            if name == m.get("id") or name in (m.get("aliases") or []):
                return str(m["id"])
        raise UsageError(f"no model named {name!r}",
                         "known: " + ", ".join(str(m.get("id")) for m in known))

    # ── one answer ──
    def ask(self, text: str, view: View) -> Reply:
        self.history.append({"role": "user", "content": text})
        return self._answer(view)

    def _answer(self, view: View) -> Reply:
        while True:
            reply = Reply()
            t0 = self.clock()
            view.begin()
            try:
                for kind, value in self.client.chat_events(self.model, self.messages(),
                                                           **self.params):
                    if kind == "text":
                        if reply.ttft is None:
                            reply.ttft = self.clock() - t0
                            view.waiting(None)
                        reply.text += value
                        reply.chunks += 1
                        view.write(value)
                    elif kind == "usage":
                        reply.tokens = value.get("completion_tokens")
            except KeyboardInterrupt:
                # Leaving the stream closed the request: the server stops generating.
                reply.interrupted = True
                if not reply.text:  # nothing arrived: the question is taken back
                    view.end(interrupted=True)
                    self.history.pop()
                    return reply
            except BaseException as e:  # an ApiError, or anything unforeseen
                view.end(interrupted=bool(reply.text))  # the terminal is given back, always
                waiting = isinstance(e, ApiError) and e.status == 503 and \
                    e.code == "model_not_ready" and not reply.text
                if waiting:
                    view.waiting(f"{self.model} is starting; waiting (Ctrl-C stops waiting)")
                    try:
                        self.sleep(WAIT_STEP)
                    except KeyboardInterrupt:
                        view.waiting(None)
                        self.history.pop()
                        raise ApiError(f"{self.model} is still starting",
                                       "`llmctl status` shows its progress") from None
                    continue
                view.waiting(None)
                if reply.text:  # keep what arrived, as an interrupted answer
                    self._keep(reply.text, cut=True)
                else:
                    self.history.pop()
                raise
            reply.seconds = self.clock() - t0
            view.end(interrupted=reply.interrupted)
            self._keep(reply.text, cut=reply.interrupted)
            return reply

    def _keep(self, text: str, cut: bool) -> None:
        self.history.append({"role": "assistant", "content": text, "model": self.model,
                             "cut": cut})

    # ── slash commands ──
    def command(self, line: str, view: View) -> Reply | None:
        """Run one slash command; a Reply when it produced an answer (/retry)."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name == "/help":
            view.info(HELP)
        elif name == "/model":
            if not arg:
                for m in self.known():
                    mark = "*" if m.get("id") == self.model else " "
                    aliases = ", ".join(m.get("aliases") or [])
                    view.info(f"{mark} {m.get('id')}" + (f"  ({aliases})" if aliases else "")
                              + (f"  [{m['state']}]" if m.get("state") else ""))
            else:
                self.model = self.check_model(arg)
                view.info(f"now talking to {self.model} (the conversation is kept)")
        elif name == "/system":
            self.system = arg or None
            view.info("system prompt set" if arg else "system prompt removed")
        elif name == "/clear":
            self.history.clear()
            view.info("conversation cleared")
        elif name == "/retry":
            while self.history and self.history[-1]["role"] == "assistant":
                self.history.pop()
            if not self.history:
                raise UsageError("nothing to retry yet")
            return self._answer(view)
        elif name == "/save":
            if not arg:
                raise UsageError("/save needs a file name", "/save chat.md")
            path = Path(arg).expanduser()
            try:
                _write(path, self.markdown())
            except OSError as e:
                raise LlmctlError(f"cannot write {path}: {e.strerror or e}") from None
            view.info(f"saved {len(self.history)} messages to {path}")
        else:
            raise UsageError(f"unknown command {name}", "/help lists them")
        return None

    def markdown(self) -> str:
        """The conversation as Markdown: each answer under the model that wrote it, and an
        answer cut short closed (its open code fence too) and marked."""
        models = list(dict.fromkeys(m.get("model", self.model) for m in self.history
                                    if m["role"] == "assistant")) or [self.model]
        out = [f"# Chat with {', '.join(models)}", ""]
        if self.system:
            out += ["**System:** " + self.system, ""]
        for m in self.history:
            if m["role"] == "user":
                out += ["## You", "", m["content"], ""]
                continue
            out += [f"## {m.get('model', self.model)}", "", m["content"]]
            if m.get("cut"):
                fence = open_fence(m["content"])
                out += ([fence] if fence else []) + ["", CUT]
            out += [""]
        return "\n".join(out).rstrip() + "\n"


def open_fence(text: str) -> str | None:
    """The fence that closes a code block `text` leaves open (``` or longer), else None."""
    opened = None
    for line in text.split("\n"):
        mark = line.lstrip()
        ticks = len(mark) - len(mark.lstrip("`"))
        if ticks < 3:
            continue
        if opened is None:
            opened = "`" * ticks
        elif ticks >= len(opened) and not mark.strip("`").strip():
            opened = None
    return opened


def _write(path: Path, text: str) -> None:
    """Whole or not at all, readable as the user's other documents are."""
    from .files import write_atomic

    write_atomic(path, text, 0o644, parents=False)


# ── the ways in ──────────────────────────────────────────────────────────────


def one_shot(session: Session, text: str, view: View, show_stats: bool = False) -> Reply:
    """A pipe: the whole input is one message; the answer is all that goes to stdout."""
    reply = session.ask(text, view)
    if show_stats:
        view.stats(reply.stats())
    return reply


def repl(session: Session, read: Callable[[str], str], view: View) -> None:
    """Ask, answer, repeat; one-line errors keep the chat open. Only Ctrl-D and /exit
    leave: Ctrl-C at the prompt (as in Python's REPL, psql or `ollama run`) says how."""
    while True:
        try:
            line = read(f"{session.model}> ")
        except EOFError:  # Ctrl-D
            return
        except KeyboardInterrupt:
            view.info(LEAVE_HINT)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        try:
            reply = session.command(text, view) if text.startswith("/") else \
                session.ask(line, view)
            if reply is not None:
                view.stats(reply.stats())
        except LlmctlError as e:
            view.error(e.message, e.hint)
        except KeyboardInterrupt:  # between an answer's end and the prompt: nothing to stop
            continue


def prompt_reader(history_file: Path) -> Callable[[str], str]:
    """Input with history kept across runs, bracketed paste, Alt-Enter for a new line;
    Ctrl-C clears a line being typed, and at an empty one raises KeyboardInterrupt (the
    chat stays: `repl` says how to leave)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    history_file.parent.mkdir(parents=True, exist_ok=True)
    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    @keys.add("c-c")
    def _interrupt(event: Any) -> None:
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    session: Any = PromptSession(history=FileHistory(str(history_file)), key_bindings=keys,
                                 multiline=False, enable_open_in_editor=False)

    def read(prompt: str) -> str:
        return session.prompt(prompt, bottom_toolbar=None)

    return read
