"""A small stand-in for a vLLM OpenAI server, for the integration tests and the benchmark.

    python tests/fakes/upstream.py --port 9000 [--startup-delay S] [--never-healthy]
        [--crash-after S] [--exit-at-start CODE] [--child] [--token-delay S]

It answers /health, /metrics (vllm:num_requests_running), /v1/models,
/v1/completions and /v1/chat/completions (streaming or not, `max_tokens` chunks),
/v1/embeddings, vLLM's sleep-mode /sleep, /wake_up and /is_sleeping, Anthropic's
/v1/messages (and count_tokens) and OpenAI's /v1/responses (and GET/cancel by id, stored
like vLLM only with VLLM_ENABLE_RESPONSES_API_STORE=1), refusing like vLLM an output
budget over --max-model-len; and it can be told to misbehave:
  POST /control/crash      exit at once with code 3
  POST /control/hang       stop answering /health (and everything else)
  POST /control/metrics-hang, metrics-garbage, metrics-ok   what /metrics does
  GET  /control/stats      what it saw: requests, aborted requests, last headers/body,
                           and every request that reached it at all ("seen")
--child starts a grandchild in the same process group (as vLLM's EngineCore is),
which outlives a SIGKILL of this process unless the whole group is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

# "seen" counts every request but /control ones, whatever its route (a 404 too).
STATS = {"requests": 0, "aborted": 0, "running": 0, "completed": 0, "seen": 0,
         "last_headers": {}, "last_body": None, "sleeps": 0, "wakes": 0, "asleep": False,
         "last_path": None, "by_id": 0, "generated": 0, "paths": [], "largest_body": 0, "most_tools": 0}
RESPONSES: dict[str, dict] = {}  # stored responses (VLLM_ENABLE_RESPONSES_API_STORE=1)
HANG = asyncio.Event()
ARGS: argparse.Namespace


async def health(request: Request) -> Response:
    if ARGS.never_healthy:
        return PlainTextResponse("not yet", status_code=503)
    if HANG.is_set():
        await asyncio.sleep(3600)
    return Response(status_code=200)


async def metrics(request: Request) -> Response:
    """Like vLLM's exposition (prometheus_client's text format): a gauge, a counter with
    its _created, a histogram; or, told so, garbage or no answer at all."""
    if STATS.get("metrics") == "hang":
        await asyncio.sleep(3600)
    if STATS.get("metrics") == "garbage":
        return PlainTextResponse("<html>this is not a metrics page</html>\n")
    labels = f'engine="0",model_name="{ARGS.name}"'
    return PlainTextResponse(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {float(STATS['running'])}\n"
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f"vllm:prompt_tokens_total{{{labels}}} {3.0 * STATS['requests']}\n"
        "# HELP vllm:prompt_tokens_created Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_created gauge\n"
        f"vllm:prompt_tokens_created{{{labels}}} 1.7e+09\n"
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        f"vllm:generation_tokens_total{{{labels}}} {float(STATS['generated'])}\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} {min(1.0, 0.1 * STATS['running'])}\n"
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token.\n"
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.1"}} 1.0\n'
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} 2.0\n'
        f"vllm:time_to_first_token_seconds_count{{{labels}}} 2.0\n"
        f"vllm:time_to_first_token_seconds_sum{{{labels}}} 0.3\n"
        "process_open_fds 12.0\n")


async def models(request: Request) -> Response:
    # As vLLM lists a model: `root` is the weights it loaded, and its context length.
    return JSONResponse({"object": "list", "data": [{
        "id": ARGS.name, "object": "model", "owned_by": "vllm", "root": ARGS.model,
        "max_model_len": ARGS.max_model_len}]})


def flag(v) -> bool:
    """A boolean field as vLLM's pydantic request models read it (lax: "true", 1, "yes")."""
    from pydantic import TypeAdapter

    return bool(v is not None and TypeAdapter(bool).validate_python(v))


def _chunk(i: int, chat: bool, model: str, last: bool = False) -> bytes:
    # Like vLLM: the last token's chunk carries the finish reason.
    reason = "length" if last else None
    if chat:
        choice = {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": f"tok{i} ", "finish_reason": reason}
        obj = "text_completion"
    return b"data: " + json.dumps({"id": "x", "object": obj, "model": model,
                                   "choices": [choice]}).encode() + b"\n\n"


async def complete(request: Request) -> Response:
    if HANG.is_set():
        await asyncio.sleep(3600)
    body = _seen_body(request, await request.body())
    if body.get("model") != ARGS.name:
        return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not "
                                       "exist.", "type": "NotFoundError", "param": None,
                                       "code": 404}}, status_code=404)
    if body.get("fail_with"):
        return JSONResponse({"error": {"message": "asked to fail", "type": "BadRequestError",
                                       "param": None, "code": body["fail_with"]}},
                            status_code=int(body["fail_with"]))
    n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    if (refused := _too_long(n)) is not None:
        return refused
    chat = request.url.path.endswith("chat/completions")
    delay = float(body.get("token_delay", ARGS.token_delay))
    first_delay = float(body.get("first_delay", ARGS.first_delay))
    STATS["running"] += 1
    if flag(body.get("stream")):
        async def gen():
            done = False
            try:
                if first_delay:
                    await asyncio.sleep(first_delay)
                for i in range(n):
                    if delay:
                        await asyncio.sleep(delay)
                    STATS["generated"] += 1
                    yield _chunk(i, chat, ARGS.name, last=i == n - 1)
                if flag((body.get("stream_options") or {}).get("include_usage")):
                    # Like vLLM: a last chunk with no choices and the usage.
                    yield b"data: " + json.dumps({
                        "id": "x", "object": "chat.completion.chunk" if chat else
                        "text_completion", "model": ARGS.name, "choices": [],
                        "usage": {"prompt_tokens": 3, "completion_tokens": n,
                                  "total_tokens": n + 3}}).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                done = True
            finally:
                STATS["running"] -= 1
                STATS["completed" if done else "aborted"] += 1

        return StreamingResponse(gen(), media_type="text/event-stream")
    # Like vLLM: a client that hangs up before the answer aborts the request.
    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(asyncio.sleep(first_delay + delay * n))
    gone = asyncio.ensure_future(hung_up())
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    work.cancel()
    gone.cancel()
    STATS["running"] -= 1
    if gone.done() and not gone.cancelled():
        STATS["aborted"] += 1
        return Response(status_code=499)
    STATS["completed"] += 1
    STATS["generated"] += n
    text = "".join(f"tok{i} " for i in range(n))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text},
               "finish_reason": "length"} if chat else
              {"index": 0, "text": text, "finish_reason": "length"})
    return JSONResponse({"id": "x", "object": "chat.completion" if chat else "text_completion",
                         "model": ARGS.name, "choices": [choice],
                         "usage": {"prompt_tokens": 3, "completion_tokens": n,
                                   "total_tokens": n + 3}})


def _seen_body(request: Request, raw: bytes) -> dict:
    STATS["requests"] += 1
    STATS["last_headers"] = dict(request.headers)
    STATS["last_body"] = raw.decode("utf-8", "replace")
    STATS["last_path"] = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
    STATS["paths"] = [*STATS["paths"][-99:], STATS["last_path"]]
    STATS["largest_body"] = max(STATS["largest_body"], len(raw))
    body = json.loads(raw)
    STATS["most_tools"] = max(STATS["most_tools"], len(body.get("tools") or []))
    return body


def _too_long(n: int, anthropic: bool = False) -> Response | None:
    """vLLM refuses an output budget over the context (and clamps anything smaller)."""
    if n <= ARGS.max_model_len:
        return None
    msg = (f"max_tokens ({n}) cannot be greater than max_model_len ({ARGS.max_model_len})")
    if anthropic:
        return JSONResponse({"type": "error", "error": {"type": "BadRequestError",
                                                        "message": msg}}, status_code=400)
    return JSONResponse({"error": {"message": msg, "type": "BadRequestError", "param": None,
                                   "code": 400}}, status_code=400)


def _event(name: str, obj: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


async def messages(request: Request) -> Response:
    """Anthropic's Messages API, as vLLM 0.32 serves it (text, or a forced tool call)."""
    body = _seen_body(request, await request.body())
    if request.url.path.endswith("/count_tokens"):
        return JSONResponse({"input_tokens": len(json.dumps(body.get("messages"))) // 4})
    if body.get("model") != ARGS.name:
        return JSONResponse({"type": "error", "error": {
            "type": "NotFoundError", "message": f"The model `{body.get('model')}` does not "
            "exist."}}, status_code=404)
    if body.get("fail_with"):  # as vLLM translates its errors on this route
        return JSONResponse({"type": "error", "error": {"type": "BadRequestError",
                                                        "message": "asked to fail"}},
                            status_code=int(body["fail_with"]))
    asked = int(body.get("max_tokens") or 16)
    if (refused := _too_long(asked, anthropic=True)) is not None:
        return refused
    n = min(asked, 64)
    # A model that ends before its budget stops on its own: end_turn (Claude Code treats
    # max_tokens as an answer cut short).
    stop = "max_tokens" if n == asked else "end_turn"
    choice = body.get("tool_choice") or {}
    tool = None
    if body.get("tools") and choice.get("type") in ("any", "tool"):
        tool = choice.get("name") or body["tools"][0]["name"]
    usage = {"input_tokens": 3, "output_tokens": n}
    if not flag(body.get("stream")):
        content = ([{"type": "tool_use", "id": "toolu_1", "name": tool, "input": {}}] if tool
                   else [{"type": "text", "text": "".join(f"tok{i} " for i in range(n))}])
        return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant",
                             "model": ARGS.name, "content": content,
                             "stop_reason": "tool_use" if tool else stop,
                             "stop_sequence": None, "usage": usage})

    async def gen():
        yield _event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": ARGS.name,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 0}}})
        yield _event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
        for i in range(n):
            yield _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta",
                                                           "text": f"tok{i} "}})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop, "stop_sequence": None}, "usage": usage})
        yield _event("message_stop", {"type": "message_stop"})

    return StreamingResponse(gen(), media_type="text/event-stream")


async def responses(request: Request) -> Response:
    """OpenAI's Responses API, as vLLM 0.32 serves it: create (stream or not), and
    retrieve/cancel by id when storing is on."""
    rid = request.path_params.get("rid")
    if rid is not None:
        STATS["by_id"] += 1
        STATS["last_path"] = request.url.path
        stored = RESPONSES.get(rid)
        if stored is None:
            return JSONResponse({"error": {"message": f"Response with id '{rid}' not found.",
                                           "type": "invalid_request_error", "param": None,
                                           "code": 404}}, status_code=404)
        if request.url.path.endswith("/cancel"):
            stored = {**stored, "status": "cancelled"}
        return JSONResponse(stored)
    body = _seen_body(request, await request.body())
    if body.get("model") != ARGS.name:
        return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not "
                                       "exist.", "type": "NotFoundError", "param": None,
                                       "code": 404}}, status_code=404)
    n = int(body.get("max_output_tokens") or 16)
    if (refused := _too_long(n)) is not None:
        return refused
    n = min(n, 64)
    rid = f"resp_{os.urandom(8).hex()}"
    text = "".join(f"tok{i} " for i in range(n))
    done = {"id": rid, "object": "response", "created_at": int(time.time()),
            "model": ARGS.name, "status": "completed", "output": [{
                "type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": n, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": n + 3}}
    if os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE") == "1":
        RESPONSES[rid] = done
    if not flag(body.get("stream")):
        return JSONResponse(done)

    async def gen():
        seq = iter(range(1_000_000))
        item = done["output"][0]
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}

        def ev(kind: str, **fields) -> bytes:
            return _event(kind, {"type": kind, "sequence_number": next(seq), **fields})

        yield ev("response.created", response={**done, "status": "in_progress", "output": [],
                                               "usage": None})
        yield ev("response.output_item.added", output_index=0,
                 item={**item, "status": "in_progress", "content": []})
        yield ev("response.content_part.added", part=part, **where)
        for i in range(n):
            yield ev("response.output_text.delta", delta=f"tok{i} ", logprobs=[], **where)
        yield ev("response.output_text.done", text=text, logprobs=[], **where)
        yield ev("response.content_part.done", part={**part, "text": text}, **where)
        yield ev("response.output_item.done", output_index=0, item=item)
        yield ev("response.completed", response=done)

    return StreamingResponse(gen(), media_type="text/event-stream")


async def embeddings(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"object": "list", "model": body.get("model"),
                         "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]})


async def tokenize(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"tokens": [ord(c) for c in body.get("prompt", "")],
                         "count": len(body.get("prompt", ""))})


async def sleep(request: Request) -> Response:
    """vLLM's dev-mode sleep endpoints (VLLM_SERVER_DEV_MODE=1, --enable-sleep-mode)."""
    if request.url.path == "/is_sleeping":
        return JSONResponse({"is_sleeping": STATS["asleep"]})
    asleep = request.url.path == "/sleep"
    STATS["asleep"] = asleep
    STATS["sleeps" if asleep else "wakes"] += 1
    return Response(status_code=200)


async def control(request: Request) -> Response:
    what = request.path_params["what"]
    if what == "crash":
        os._exit(3)
    if what == "hang":
        HANG.set()
        return JSONResponse({"ok": True})
    if what in ("metrics-hang", "metrics-garbage", "metrics-ok"):
        STATS["metrics"] = what.removeprefix("metrics-")
        return JSONResponse({"ok": True})
    return JSONResponse(STATS)


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", "--served-model-name", default="fake")
    ap.add_argument("--model", default="fake-weights")
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--startup-delay", type=float, default=0.0)
    ap.add_argument("--never-healthy", action="store_true")
    ap.add_argument("--crash-after", type=float, default=0.0)
    ap.add_argument("--exit-at-start", type=int, default=None,
                    help="exit with this code after the startup delay, never listening")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--token-delay", type=float, default=0.0)
    ap.add_argument("--first-delay", type=float, default=0.0,
                    help="seconds before the first token (a prefill), unless the body says")
    # Accept (and ignore) the vLLM flags llmctl passes, so engine argv can be reused.
    ARGS, _ = ap.parse_known_args()
    if ARGS.child:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    if ARGS.startup_delay:
        time.sleep(ARGS.startup_delay)
    if ARGS.exit_at_start is not None:
        print("fake: Address already in use", flush=True)  # a cause llmctl can name
        sys.exit(ARGS.exit_at_start)
    if ARGS.crash_after:
        import threading

        threading.Timer(ARGS.crash_after, lambda: os._exit(4)).start()
    app = Starlette(routes=[
        Route("/health", health), Route("/metrics", metrics), Route("/v1/models", models),
        Route("/v1/completions", complete, methods=["POST"]),
        Route("/v1/chat/completions", complete, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/responses/{rid}", responses, methods=["GET"]),
        Route("/v1/responses/{rid}/cancel", responses, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/sleep", sleep, methods=["POST"]), Route("/wake_up", sleep, methods=["POST"]),
        Route("/is_sleeping", sleep),
        Route("/control/{what}", control, methods=["GET", "POST"]),
    ])

    key = os.environ.get("VLLM_API_KEY")  # as vLLM: a key guards the /v1 routes only

    async def counted(scope, receive, send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/control/"):
            STATS["seen"] += 1
            if key and scope["path"].startswith("/v1") and \
                    (b"authorization", f"Bearer {key}".encode()) not in scope["headers"]:
                STATS["unauthorized"] = STATS.get("unauthorized", 0) + 1
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(
                    scope, receive, send)
                return
        await app(scope, receive, send)

    uvicorn.run(counted, host="127.0.0.1", port=ARGS.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
