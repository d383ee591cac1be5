"""The chat loop over scripted streams: no terminal, no server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llmctl.chat import Session, one_shot, open_fence, repl
from llmctl.errors import ApiError, UsageError
from llmctl.ui import split_blocks

MODELS = [{"id": "smollm2-general", "aliases": ["general"], "state": "RUNNING"},
          {"id": "smollm2-coder", "aliases": ["coder"], "state": "RUNNING"}]


class Script:
    """A client whose answers are scripted: each call takes the next entry, a list of
    events, or an exception to raise (after the events before it)."""

    def __init__(self, *answers: list) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[dict[str, str]], dict[str, Any]]] = []
        self.closed = 0

    def models(self) -> list[dict[str, Any]]:
        return MODELS

    def chat_events(self, model: str, messages: list[dict[str, str]],
                    **params: Any) -> Iterator[tuple[str, Any]]:
        self.calls.append((model, [dict(m) for m in messages], params))
        try:
            for ev in self.answers.pop(0):
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
        finally:
            self.closed += 1  # the stream was left: the request is closed


class Screen:
    def __init__(self) -> None:
        self.out, self.talk, self.errors = "", [], []

    def begin(self) -> None:
        self.wrote = False

    def write(self, text: str) -> None:
        self.wrote = True
        self.out += text

    def end(self, interrupted: bool) -> None:
        if self.wrote:
            self.out += "\n" + ("[stopped]\n" if interrupted else "")

    def stats(self, text: str) -> None:
        self.talk.append(text)

    def info(self, text: str) -> None:
        self.talk.append(text)

    def error(self, message: str, hint: str | None) -> None:
        self.errors.append(message)

    def waiting(self, text: str | None) -> None:
        if text:
            self.talk.append(text)


def text(*pieces: str, tokens: int | None = None) -> list:
    return [("text", p) for p in pieces] + ([("usage", {"completion_tokens": tokens})]
                                            if tokens is not None else [])


def lines(*typed: str):
    it = iter(typed)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_a_conversation_with_stats_retry_clear_and_system():
    client = Script(text("Hel", "lo", tokens=2), text("again", tokens=1), text("fresh"))
    s = Session(client, "smollm2-general", system="be brief", params={"max_tokens": 64})
    screen = Screen()
    repl(s, lines("hi", "/retry", "/clear", "/system", "new"), screen)
    assert screen.out == "Hello\nagain\nfresh\n"
    # /retry sent the same question again, without the first answer.
    assert client.calls[1][1] == [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "hi"}]
    # /clear forgot it; /system alone removed the system prompt.
    assert client.calls[2][1] == [{"role": "user", "content": "new"}]
    assert client.calls[0][2] == {"max_tokens": 64}
    assert any(t.startswith("first token") and "2 tokens" in t for t in screen.talk)


def test_ctrl_c_mid_answer_keeps_the_partial_answer_and_closes_the_stream():
    client = Script(text("a long ", "answ") + [KeyboardInterrupt()], text("ok"))
    s = Session(client, "smollm2-general")
    screen = Screen()
    repl(s, lines("tell me everything", "and then?"), screen)
    assert screen.out.startswith("a long answ\n[stopped]")
    assert client.closed == 2
    # The partial answer is part of the conversation the next question carries.
    assert client.calls[1][1][1] == {"role": "assistant", "content": "a long answ"}
    assert any("stopped" in t for t in screen.talk)


def test_errors_are_one_line_and_the_chat_stays_open():
    down = ApiError("cannot reach http://127.0.0.1:8080: ConnectError", "llmctl up")
    client = Script([down], text("back"))
    s = Session(client, "smollm2-general")
    screen = Screen()
    repl(s, lines("hello?", "/nope", "/save", "hello again"), screen)
    assert screen.errors == ["cannot reach http://127.0.0.1:8080: ConnectError",
                             "unknown command /nope", "/save needs a file name"]
    assert screen.out == "back\n"
    # The failed question is not left in the conversation.
    assert [m["content"] for m in client.calls[1][1]] == ["hello again"]


def test_a_starting_model_is_waited_for():
    starting = ApiError("503: model is starting", status=503, code="model_not_ready")
    client = Script([starting], [starting], text("ready now"))
    slept = []
    s = Session(client, "smollm2-general", sleep=slept.append)
    screen = Screen()
    s.ask("hi", screen)
    assert screen.out.endswith("ready now\n") and len(slept) == 2
    assert any("is starting; waiting" in t for t in screen.talk)


def test_model_switch_by_alias_keeps_the_conversation_and_unknown_names_list_the_known():
    client = Script(text("one"), text("two"))
    s = Session(client, "smollm2-general")
    screen = Screen()
    repl(s, lines("first", "/model coder", "second", "/model gpt-4"), screen)
    assert client.calls[1][0] == "smollm2-coder"
    assert [m["content"] for m in client.calls[1][1]] == ["first", "one", "second"]
    assert screen.errors == ["no model named 'gpt-4'"]
    with pytest.raises(UsageError) as e:
        s.check_model("nosuch")
    assert "smollm2-general, smollm2-coder" in e.value.hint


def test_save_writes_the_conversation_as_markdown(tmp_path):
    client = Script(text("def f():\n    return 1"))
    s = Session(client, "smollm2-coder", system="you write Python")
    screen = Screen()
    repl(s, lines("a function", f"/save {tmp_path / 'chat.md'}"), screen)
    md = (tmp_path / "chat.md").read_text()
    assert md == ("# Chat with smollm2-coder\n\n**System:** you write Python\n\n## You\n\n"
                  "a function\n\n## smollm2-coder\n\ndef f():\n    return 1\n")
    repl(s, lines(f"/save {tmp_path / 'no' / 'such' / 'dir.md'}"), screen)
    assert screen.errors and screen.errors[-1].startswith("cannot write")


def test_save_files_each_answer_under_its_model_and_closes_what_was_cut(tmp_path):
    cut = text("Here:\n\n```python\ndef f():\n", "    return [") + [KeyboardInterrupt()]
    client = Script(text("Hello."), cut, [KeyboardInterrupt()], text("Bye."))
    s = Session(client, "smollm2-general")
    screen = Screen()
    repl(s, lines("hi", "/model coder", "a function", "never mind", "/model general", "bye",
                  f"/save {tmp_path / 'chat.md'}"), screen)
    md = (tmp_path / "chat.md").read_text()
    assert md == ("# Chat with smollm2-general, smollm2-coder\n\n"
                  "## You\n\nhi\n\n## smollm2-general\n\nHello.\n\n"
                  "## You\n\na function\n\n## smollm2-coder\n\n"
                  "Here:\n\n```python\ndef f():\n    return [\n```\n\n*(cut short)*\n\n"
                  "## You\n\nbye\n\n## smollm2-general\n\nBye.\n")
    # Stopped before its first token: the question was taken back, and is not sent again.
    assert [m["content"] for m in client.calls[3][1]] == [
        "hi", "Hello.", "a function", "Here:\n\n```python\ndef f():\n    return [", "bye"]


@pytest.mark.parametrize("answer, fence", [
    ("no code", None), ("```\nx\n```", None), ("```py\nx", "```"),
    ("````md\n```py\nx\n```\n", "````"), ("  ```\nindented", "```"),
])
def test_an_open_code_fence_is_found(answer, fence):
    assert open_fence(answer) == fence


def test_ctrl_c_at_the_prompt_keeps_the_chat_and_says_how_to_leave():
    typed = iter([KeyboardInterrupt(), "still here?", KeyboardInterrupt()])

    def read(prompt: str) -> str:
        for x in typed:
            if isinstance(x, BaseException):
                raise x
            return x
        raise EOFError  # Ctrl-D

    client = Script(text("yes"))
    screen = Screen()
    repl(Session(client, "m"), read, screen)
    assert screen.out == "yes\n" and len(client.calls) == 1
    assert screen.talk.count("(Ctrl-D or /exit leaves the chat)") == 2


def test_one_shot_prints_only_the_answer():
    client = Script(text("42", tokens=1))
    screen = Screen()
    one_shot(Session(client, "m"), "the answer?", screen)
    assert screen.out == "42\n" and screen.talk == []


@pytest.mark.parametrize("stream, done, rest", [
    ("para one\n\npara", ["para one\n\n"], "para"),
    ("```py\ndef f():\n\n    pass\n```\nafter", ["```py\ndef f():\n\n    pass\n```\n"], "after"),
    ("no end yet", [], "no end yet"),
    ("a\n\n\n\nb\n\n", ["a\n\n", "b\n\n"], ""),
])
def test_markdown_blocks_end_at_blank_lines_outside_code(stream, done, rest):
    got, left = split_blocks(stream)
    assert got == done and left == rest


def test_a_failed_model_is_said_at_once_and_not_waited_for():
    failed = ApiError("503: model 'm' has failed: out of memory", status=503, code="model_failed")
    slept = []
    s = Session(Script([failed]), "m", sleep=slept.append)
    screen = Screen()
    repl(s, lines("hi"), screen)
    assert screen.errors == ["503: model 'm' has failed: out of memory"] and slept == []


def test_an_unforeseen_error_still_gives_the_terminal_back():
    ended = []
    screen = Screen()
    screen.end = lambda interrupted: ended.append(interrupted)
    s = Session(Script(text("half") + [RuntimeError("boom")]), "m")
    with pytest.raises(RuntimeError):
        s.ask("hi", screen)
    assert ended == [True]  # the view was closed (echo back on), the partial answer kept
    assert s.messages()[-1] == {"role": "assistant", "content": "half"}
    assert s.history[-1]["cut"]
