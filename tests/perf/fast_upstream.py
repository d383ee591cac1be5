"""A fast OpenAI-compatible upstream for the proxy benchmark: a bare ASGI app on
uvicorn + httptools + uvloop, answering at once, so the numbers measure the proxy.

    python tests/perf/fast_upstream.py PORT

Non-streaming: a small chat.completion JSON. Streaming: `max_tokens` SSE chunks
(default 256) sent back to back, the usage when stream_options.include_usage asks,
then `data: [DONE]`.
"""

from __future__ import annotations

import json
import sys

import uvicorn

ANSWER = json.dumps({
    "id": "cmpl-bench", "object": "chat.completion", "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
CHUNK = (b'data: {"id":"cmpl-bench","object":"chat.completion.chunk","model":"bench",'
         b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n')
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        m = await receive()
        body += m.get("body", b"")
        more = m.get("more_body", False)
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    req = json.loads(body or b"{}")
    if req.get("stream"):
        n = int(req.get("max_tokens") or 256)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for _ in range(n):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        if (req.get("stream_options") or {}).get("include_usage"):
            usage = json.dumps({"id": "cmpl-bench", "object": "chat.completion.chunk",
                                "model": "bench", "choices": [],
                                "usage": {"prompt_tokens": 5, "completion_tokens": n,
                                          "total_tokens": n + 5}}).encode()
            await send({"type": "http.response.body", "body": b"data: " + usage + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, http="httptools", loop="uvloop", lifespan="off")
