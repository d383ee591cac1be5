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


def vllm_like_metrics() -> bytes:
    """An exposition the size and shape of vLLM 0.32's: 12 histograms of 22 buckets, 15
    counters (with _created), 8 gauges, labelled as vLLM labels them."""
    lb = 'engine="0",model_name="bench"'
    out = []
    for i in range(12):
        name = f"vllm:histogram_{i}_seconds"
        out += [f"# HELP {name} A histogram.", f"# TYPE {name} histogram"]
        for j, le in enumerate([*(f"{0.001 * 2 ** k:g}" for k in range(21)), "+Inf"]):
            out.append(f'{name}_bucket{{{lb},le="{le}"}} {float(j * 3)}')
        out += [f"{name}_count{{{lb}}} 63.0", f"{name}_sum{{{lb}}} 12.5"]
    for i in range(15):
        name = f"vllm:counter_{i}"
        out += [f"# HELP {name}_total A counter.", f"# TYPE {name}_total counter",
                f"{name}_total{{{lb}}} {float(i * 100)}",
                f"# HELP {name}_created A counter.", f"# TYPE {name}_created gauge",
                f"{name}_created{{{lb}}} 1.7e+09"]
    for i in range(8):
        name = f"vllm:gauge_{i}"
        out += [f"# HELP {name} A gauge.", f"# TYPE {name} gauge", f"{name}{{{lb}}} {i}.5"]
    return ("\n".join(out) + "\n").encode()


METRICS = vllm_like_metrics()
TEXT_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
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
    if scope["path"] == "/metrics":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*TEXT_HEADERS, (b"content-length", str(len(METRICS)).encode())]})
        await send({"type": "http.response.body", "body": METRICS})
        return
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
