"""The proxy's own answers: the error shape, a refusal, a small JSON answer, and a backend's
error put into that shape.

May import: nothing of the package. Every answer the proxy writes itself, before or
instead of a backend's, is made here, so the shape (OpenAI's `{"error": {message, type,
param, code}}`) is decided in one place.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

JSON = [(b"content-type", b"application/json")]


def error_body(status: int, message: str, *, type_: str | None = None, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    if type_ is None:
        type_ = ("invalid_request_error" if status < 500 else "server_error")
        if status == 429:
            type_ = "rate_limit_error"
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class Refused(Exception):
    """A request answered by the proxy itself, before any backend is involved."""

    def __init__(self, status: int, message: str, code: str, *, param: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.message, self.code = status, message, code
        self.param, self.headers = param, headers or []

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


class Gone(Exception):
    """The client left while sending its request: nobody is left to answer."""


async def send_json(send: Send, status: int, obj: Any,
                    headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def openai_error(status: int, raw: bytes, model: str) -> bytes:
    """`raw` when it is an OpenAI error already; else the same news in that shape."""
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict) and \
            "message" in obj["error"]:
        return raw
    if isinstance(obj, dict) and obj.get("object") == "error" and "message" in obj:
        # vLLM's older flat shape
        return json.dumps({"error": {k: obj.get(k) for k in ("message", "type", "param",
                                                              "code")}}).encode()
    detail = obj.get("detail") if isinstance(obj, dict) else None
    text = detail if isinstance(detail, str) else (
        json.dumps(detail) if detail is not None else raw.decode("utf-8", "replace").strip())
    if status == 404 and text == "Not Found":
        text = "the backend has no such route (this model may not serve this kind of request)"
    return json.dumps(error_body(status, f"model '{model}': {text or f'HTTP {status}'}",
                                 code=str(status))).encode()
