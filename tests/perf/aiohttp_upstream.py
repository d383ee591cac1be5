"""A second fast upstream for the proxy benchmark, on aiohttp: every SSE event is its own
socket write (`await resp.write(event)`), as vLLM's streaming does, so a proxy's cost
per chunk shows. Same answers as fast_upstream.py.

    python tests/perf/aiohttp_upstream.py PORT
"""

from __future__ import annotations

import json
import sys

from aiohttp import web
from fast_upstream import ANSWER, CHUNK  # noqa: E402  (same folder)


async def health(request: web.Request) -> web.Response:
    return web.Response()


async def complete(request: web.Request) -> web.StreamResponse:
    req = await request.json()
    if not req.get("stream"):
        return web.Response(body=ANSWER, content_type="application/json")
    n = int(req.get("max_tokens") or 256)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(n):
        await resp.write(CHUNK)
    if (req.get("stream_options") or {}).get("include_usage"):
        usage = json.dumps({"id": "cmpl-bench", "object": "chat.completion.chunk",
                            "model": "bench", "choices": [],
                            "usage": {"prompt_tokens": 5, "completion_tokens": n,
                                      "total_tokens": n + 5}}).encode()
        await resp.write(b"data: " + usage + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def main() -> None:
    app = web.Application()
    app.add_routes([web.get("/health", health), web.post("/v1/chat/completions", complete),
                    web.post("/v1/completions", complete)])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
