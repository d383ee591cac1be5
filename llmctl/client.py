"""A small OpenAI-compatible client for chat, bench and checks: httpx, streaming SSE.

May import: errors (and httpx).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from .errors import ApiError


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout: float = 600.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False)

    def close(self) -> None:
        self.http.close()

    def _fail(self, r: httpx.Response) -> ApiError:
        code = None
        try:
            err = r.json()["error"]
            msg, code = (err["message"], err.get("code")) if isinstance(err, dict) else (err, None)
        except Exception:
            msg = r.text[:200] or r.reason_phrase
        hint = None
        if r.status_code == 401:
            hint = "pass --api-key, or set LLMCTL_API_KEY; `llmctl config key` prints the configured one"
        elif r.status_code == 404:
            hint = "`llmctl status` lists the models this stack serves"
        elif r.status_code == 503:
            hint = "the model is still starting or has failed: see `llmctl status`"
        return ApiError(f"{self.base_url} answered {r.status_code}: {msg}", hint,
                        status=r.status_code, code=code if isinstance(code, str) else None)

    def models(self) -> list[dict[str, Any]]:
        try:
            r = self.http.get("/v1/models")
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None
        if r.status_code != 200:
            raise self._fail(r)
        return list(r.json().get("data", []))

    def _unreachable(self, e: Exception) -> ApiError:
        return ApiError(f"cannot reach {self.base_url}: {type(e).__name__}",
                           "is the stack up? `llmctl up` starts it, `llmctl status` tells")

    def chat_stream(self, model: str, messages: list[dict[str, str]],
                    **params: Any) -> Iterator[str]:
        """Yield the text of each streamed delta."""
        for kind, value in self.chat_events(model, messages, **params):
            if kind == "text":
                yield value

    def chat_events(self, model: str, messages: list[dict[str, str]],
                    **params: Any) -> Iterator[tuple[str, Any]]:
        """Stream a chat answer as ("text", delta) and, when the server reports it,
        ("usage", {...}) events. Leaving the iteration early closes the request (vLLM
        aborts the generation)."""
        body = {"model": model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, **params}
        started = False
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise self._fail(r)
                for data in iter_sse(r.iter_lines()):
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        continue
                    if "error" in event:
                        err = event["error"]
                        msg = err.get("message", err) if isinstance(err, dict) else err
                        raise ApiError(f"the model failed mid-answer: {msg}")
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            started = True
                            yield "text", text
                    if event.get("usage"):
                        yield "usage", event["usage"]
        except httpx.HTTPError as e:
            if started:
                raise ApiError(f"the connection to {self.base_url} was lost mid-answer "
                               f"({type(e).__name__})", "the partial answer is kept; /retry "
                               "asks again") from None
            raise self._unreachable(e) from None


def iter_sse(lines: Iterator[str]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream (multi-line data joined by newlines)."""
    buf: list[str] = []
    for line in lines:
        if not line:
            if buf:
                yield "\n".join(buf)
                buf = []
            continue
        if line.startswith("data:"):
            buf.append(line[5:].removeprefix(" "))
    if buf:
        yield "\n".join(buf)
