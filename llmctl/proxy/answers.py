"""The proxy's own answers: the error shape, a refusal, a small JSON answer, and a backend's
error put into that shape.

May import: nothing of the package. Every answer the proxy writes itself, before or
instead of a backend's, is made here, so the shape is decided in one place: OpenAI's
`{"error": {message, type, param, code}}`, or on the Anthropic Messages routes
(`/v1/messages…`) Anthropic's `{"type": "error", "error": {type, message}}`, so each
SDK raises its own exception types.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

JSON = [(b"content-type", b"application/json")]


# Anthropic's error types by status, as its SDKs and docs name them.
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                   413: "request_too_large", 429: "rate_limit_error", 431: "invalid_request_error",
                   503: "overloaded_error", 504: "api_error", 529: "overloaded_error"}


def anthropic_path(path: str) -> bool:
    """A route whose clients read Anthropic's error shape."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_body(status: int, message: str, *, type_: str | None = None, param: str | None = None,
               code: str | None = None, anthropic: bool = False) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {
            "type": ANTHROPIC_TYPES.get(status, "api_error" if status >= 500
                                        else "invalid_request_error"),
            "message": message}}
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

    def body(self, anthropic: bool = False) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code,
                          anthropic=anthropic)


class Gone(Exception):
    """The client left while sending its request: nobody is left to answer."""


async def send_json(send: Send, status: int, obj: Any,
                    headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def openai_error(status: int, raw: bytes, model: str, anthropic: bool = False) -> bytes:
    """`raw` when it is an error in the route's shape already (OpenAI's, or Anthropic's on
    the Messages routes); else the same news in that shape."""
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict) and \
            "message" in obj["error"] and (not anthropic or obj.get("type") == "error"):
        return raw
    if isinstance(obj, dict) and obj.get("object") == "error" and "message" in obj and \
            not anthropic:  # vLLM's older flat shape
        return json.dumps({"error": {k: obj.get(k) for k in ("message", "type", "param",
                                                              "code")}}).encode()
    detail = obj.get("detail") if isinstance(obj, dict) else None
    text = detail if isinstance(detail, str) else (
        json.dumps(detail) if detail is not None else raw.decode("utf-8", "replace").strip())
    if status == 404 and text == "Not Found":
        text = "the backend has no such route (this model may not serve this kind of request)"
    if anthropic and isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        text = str(obj["error"].get("message"))  # OpenAI's shape on an Anthropic route
    elif anthropic and isinstance(obj, dict) and obj.get("object") == "error":
        text = str(obj.get("message"))
    return json.dumps(error_body(status, f"model '{model}': {text or f'HTTP {status}'}",
                                 code=str(status), anthropic=anthropic)).encode()
