"""The proxy against a real local upstream over real sockets: every error row of the
HTTP contract, streaming, disconnects, queue limits, request ids."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from .conftest import KEY, FakeBackend, model_for, start_upstream

AUTH = {"Authorization": f"Bearer {KEY}"}


def chat(model="fake-coder", **kw):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.fixture
def proxy(upstream, make_proxy):
    b = FakeBackend(model_for(upstream, aliases=("code",)))
    p = make_proxy([b])
    p.backend = b
    return p


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code:
        assert err["code"] == code
    assert r.headers.get("x-request-id")
    return err


# ── auth ──

@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},
    {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Bearer {KEY}x"},
])
def test_bad_or_missing_keys_are_401(proxy, headers):
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat(), headers=headers)
    assert_openai_error(r, 401, "invalid_api_key")


def test_every_configured_key_works(proxy):
    for key in (KEY, "sk-second"):
        r = httpx.post(proxy.url + "/v1/chat/completions", json=chat(),
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200


def test_health_and_ready_need_no_key_but_metrics_and_models_do(proxy):
    assert httpx.get(proxy.url + "/health").status_code == 200
    r = httpx.get(proxy.url + "/ready")
    assert r.status_code == 200 and r.json()["models"] == {"fake-coder": "RUNNING"}
    assert httpx.get(proxy.url + "/metrics").status_code == 401  # loopback proves nothing
    assert httpx.get(proxy.url + "/metrics", headers=AUTH).status_code == 200
    assert httpx.get(proxy.url + "/v1/models").status_code == 401
    data = httpx.get(proxy.url + "/v1/models", headers=AUTH).json()
    assert data["object"] == "list"
    assert data["data"][0]["id"] == "fake-coder" and data["data"][0]["state"] == "RUNNING"
    assert "code" in data["data"][0]["aliases"]


# ── bodies ──

@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"\xff\xfe", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'{"messages": []}', 400, "missing_model"),
    (b'{"model": 7}', 400, "missing_model"),
    (b'{"model": "gpt-4"}', 404, "model_not_found"),
])
def test_bad_bodies(proxy, body, status, code):
    r = httpx.post(proxy.url + "/v1/chat/completions", content=body,
                   headers={**AUTH, "content-type": "application/json"})
    err = assert_openai_error(r, status, code)
    if status == 404:
        assert "fake-coder" in err["message"]


def test_body_over_the_limit_is_413_with_or_without_content_length(upstream, make_proxy):
    p = make_proxy([FakeBackend(model_for(upstream))], max_body_bytes=1000)
    big = json.dumps(chat(pad="x" * 5000)).encode()
    r = httpx.post(p.url + "/v1/chat/completions", content=big, headers=AUTH)
    assert_openai_error(r, 413, "request_too_large")

    def chunked():
        for i in range(0, len(big), 512):
            yield big[i:i + 512]

    r = httpx.post(p.url + "/v1/chat/completions", content=chunked(), headers=AUTH)
    assert "content-length" not in r.request.headers
    assert_openai_error(r, 413, "request_too_large")
    assert upstream.stats()["requests"] == 0


# ── backend states and failures ──

def test_starting_model_is_503_with_retry_after(upstream, make_proxy):
    b = FakeBackend(model_for(upstream), state="STARTING")
    p = make_proxy([b])
    r = httpx.post(p.url + "/v1/chat/completions", json=chat(), headers=AUTH)
    assert_openai_error(r, 503, "model_not_ready")
    assert int(r.headers["retry-after"]) > 0
    assert httpx.get(p.url + "/ready").status_code == 503


def test_ready_while_one_model_still_starts(upstream, make_proxy):
    up2 = start_upstream("fake-general")
    try:
        a = FakeBackend(model_for(upstream))
        b = FakeBackend(model_for(up2, key="general"), state="STARTING")
        p = make_proxy([a, b])
        r = httpx.get(p.url + "/ready")
        assert r.status_code == 200
        assert r.json()["models"] == {"fake-coder": "RUNNING", "fake-general": "STARTING"}
        assert httpx.post(p.url + "/v1/chat/completions", json=chat(),
                          headers=AUTH).status_code == 200
        assert httpx.post(p.url + "/v1/chat/completions", json=chat("fake-general"),
                          headers=AUTH).status_code == 503
    finally:
        up2.stop()


def test_connection_refused_is_503(make_proxy):
    p = make_proxy([FakeBackend(model_for(None, name="gone"))])
    r = httpx.post(p.url + "/v1/chat/completions", json=chat("gone"), headers=AUTH)
    assert_openai_error(r, 503, "model_unavailable")
    assert "retry-after" in r.headers


def test_backend_silent_past_the_timeout_is_504(upstream, make_proxy):
    p = make_proxy([FakeBackend(model_for(upstream))], request_timeout=0.5)
    r = httpx.post(p.url + "/v1/chat/completions", json=chat(first_delay=3), headers=AUTH,
                   timeout=10)
    assert_openai_error(r, 504, "upstream_timeout")


@pytest.mark.parametrize("status", [400, 422, 500, 503])
def test_backend_errors_pass_through_unchanged(proxy, upstream, status):
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat(fail_with=status), headers=AUTH)
    assert r.status_code == status
    assert r.json() == {"error": {"message": "asked to fail", "type": "BadRequestError",
                                  "param": None, "code": status}}


def test_queue_over_the_limit_is_429(upstream, make_proxy):
    b = FakeBackend(model_for(upstream))
    p = make_proxy([b], max_queue_per_model=1)
    with httpx.Client(timeout=10) as c, c.stream("POST", p.url + "/v1/chat/completions",
                                                  json=chat(stream=True, max_tokens=5,
                                                            token_delay=0.3),
                                                  headers=AUTH) as slow:
        assert slow.status_code == 200
        r = httpx.post(p.url + "/v1/chat/completions", json=chat(), headers=AUTH)
        assert_openai_error(r, 429, "queue_full")
        assert r.headers["retry-after"] == "1"
        slow.read()
    assert wait_for(lambda: b.in_flight == 0)
    assert httpx.post(p.url + "/v1/chat/completions", json=chat(), headers=AUTH).status_code == 200


# ── passthrough ──

def test_non_streaming_passthrough_and_alias_rewrite(proxy, upstream):
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat("code", max_tokens=3),
                   headers=AUTH)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    seen = upstream.stats()
    assert json.loads(seen["last_body"])["model"] == "fake-coder"
    assert "authorization" not in seen["last_headers"]  # the key stays at the proxy


def test_body_is_forwarded_byte_for_byte_when_no_alias(proxy, upstream):
    raw = b'{"model":  "fake-coder", "max_tokens": 2,   "messages": [], "x": "\\u00e9"}'
    r = httpx.post(proxy.url + "/v1/completions", content=raw, headers=AUTH)
    assert r.status_code == 200
    assert upstream.stats()["last_body"].encode() == raw


def test_other_v1_routes_pass_through(proxy):
    r = httpx.post(proxy.url + "/v1/embeddings", json={"model": "fake-coder", "input": "a"},
                   headers=AUTH)
    assert r.status_code == 200 and r.json()["data"][0]["embedding"] == [0.1, 0.2]


def test_vllm_tokenize_is_routed_by_model_and_needs_the_key(proxy):
    r = httpx.post(proxy.url + "/tokenize", json={"model": "code", "prompt": "hi"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["tokens"] == [104, 105]
    assert httpx.post(proxy.url + "/tokenize", json={"model": "code"}).status_code == 401


def test_sse_chunks_arrive_as_they_are_made(proxy):
    times = []
    t0 = time.perf_counter()
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                      json=chat(stream=True, max_tokens=5, token_delay=0.25)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                times.append(time.perf_counter() - t0)
    assert len(times) == 6  # 5 tokens and [DONE]
    # Four 0.25 s gaps between the first token and the last cannot take less than 0.9 s:
    # a spread that large proves the chunks were not held back and sent together.
    assert times[-1] - times[0] > 0.9


def test_a_long_stream_to_a_slow_reader_arrives_whole_and_in_order(proxy, upstream):
    """Streams go the splice way (upstream socket callback → client transport): a client
    that reads slowly fills the proxy's write buffer; nothing is lost, reordered or
    duplicated (the pause it causes is checked in tests/unit/test_splice.py)."""
    n = 8_000  # ~1 MB of events, past the socket buffers and the transport's limit
    body = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        payload = json.dumps(chat(stream=True, max_tokens=n)).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: "
                     b"application/json\r\nConnection: close\r\nContent-Length: "
                     + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        sock.settimeout(30)
        time.sleep(1.0)  # nothing read: the proxy's write buffer fills up
        while chunk := sock.recv(8192):
            body += chunk
            if len(body) < 100_000:
                time.sleep(0.01)  # slow at first
    head, _, rest = bytes(body).partition(b"\r\n\r\n")
    assert b"200 OK" in head and b"transfer-encoding: chunked" in head.lower()
    data, pos = bytearray(), 0
    while True:  # undo the chunked encoding: a chunk may end in the middle of an event
        eol = rest.index(b"\r\n", pos)
        size = int(rest[pos:eol], 16)
        if size == 0:
            assert rest[eol:] == b"\r\n\r\n"  # the answer ends properly, nothing after
            break
        data += rest[eol + 2:eol + 2 + size]
        assert rest[eol + 2 + size:eol + 4 + size] == b"\r\n"
        pos = eol + 4 + size
    events = [e for e in bytes(data).split(b"\n\n") if e]
    tokens = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert tokens == [f"tok{i} " for i in range(n)] and events[-1] == b"data: [DONE]"


def test_request_id_is_kept_when_sane_and_replaced_when_not(proxy, upstream):
    r = httpx.post(proxy.url + "/v1/chat/completions", json=chat(),
                   headers={**AUTH, "X-Request-ID": "ide-42.abc"})
    assert r.headers["x-request-id"] == "ide-42.abc"
    assert upstream.stats()["last_headers"]["x-request-id"] == "ide-42.abc"
    for bad in ("x" * 300, "a b", "<script>"):
        r = httpx.post(proxy.url + "/v1/chat/completions", json=chat(),
                       headers={**AUTH, "X-Request-ID": bad})
        rid = r.headers["x-request-id"]
        assert rid != bad and len(rid) == 32
    assert httpx.get(proxy.url + "/health").headers["x-request-id"]


def test_unknown_routes_answer_in_openai_shape(proxy):
    r = httpx.get(proxy.url + "/nope")
    assert_openai_error(r, 404)


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/completions", "POST"),
    ("GET", "/tokenize", "POST"), ("POST", "/v1/models", "GET"),
    ("DELETE", "/v1/models/fake-coder", "GET")])
def test_a_route_asked_with_the_wrong_method_is_405_with_allow(proxy, method, path, allow):
    r = httpx.request(method, proxy.url + path, headers=AUTH, json={"model": "fake-coder"})
    assert_openai_error(r, 405)
    assert r.headers["allow"] == allow and r.json()["error"]["code"] == "method_not_allowed"


def test_errors_a_backend_writes_in_another_shape_reach_the_client_in_openais(proxy, upstream):
    # The stand-in answers an unknown route as FastAPI/Starlette do: a plain "Not Found".
    r = httpx.post(proxy.url + "/v1/audio/transcriptions", headers=AUTH,
                   json={"model": "fake-coder"})
    assert_openai_error(r, 404)
    msg = r.json()["error"]["message"]
    assert msg.startswith("model 'fake-coder':") and "no such route" in msg
    assert r.headers["content-type"] == "application/json"


# ── disconnects ──

def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_client_hanging_up_mid_stream_aborts_upstream(proxy, upstream):
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                      json=chat(stream=True, max_tokens=100, token_delay=0.1)) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    assert wait_for(lambda: upstream.stats()["aborted"] == 1)
    assert upstream.stats()["running"] == 0
    assert wait_for(lambda: proxy.backend.in_flight == 0)


def test_client_hanging_up_before_the_first_token_aborts_upstream(proxy, upstream):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/v1/chat/completions", headers=AUTH, timeout=0.5,
                   json=chat(stream=True, first_delay=10))
    assert wait_for(lambda: upstream.stats()["aborted"] == 1)


def test_client_hanging_up_on_a_non_streaming_request_aborts_upstream(proxy, upstream):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/v1/chat/completions", headers=AUTH, timeout=0.5,
                   json=chat(max_tokens=10, token_delay=1))
    assert wait_for(lambda: upstream.stats()["aborted"] == 1)
    assert wait_for(lambda: proxy.backend.in_flight == 0)


def test_metrics_count_requests_by_model_and_status(proxy):
    httpx.post(proxy.url + "/v1/chat/completions", json=chat(), headers=AUTH)
    httpx.post(proxy.url + "/v1/chat/completions", json=chat(fail_with=400), headers=AUTH)
    needles = ('llmctl_requests_total{model="fake-coder",status="200"} 1.0',
               'llmctl_requests_total{model="fake-coder",status="400"} 1.0',
               "llmctl_time_to_first_byte_seconds_bucket",
               'llmctl_requests_in_flight{model="fake-coder"} 0.0')
    # Counted just after the last byte is sent: the client may ask a moment before that.
    assert wait_for(lambda: all(n in httpx.get(proxy.url + "/metrics", headers=AUTH).text
                                for n in needles)), \
        httpx.get(proxy.url + "/metrics", headers=AUTH).text


def test_raw_garbage_on_the_socket_does_not_break_the_proxy(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"\x00\x01GARBAGE\r\n\r\n")
        s.recv(1024)
    assert httpx.get(proxy.url + "/health").status_code == 200


def test_one_log_line_per_request_with_tokens_and_never_the_key(proxy, caplog):
    import logging

    from llmctl.proxy.callers import fingerprint

    caplog.set_level(logging.INFO, logger="llmctl.proxy")
    httpx.post(proxy.url + "/v1/chat/completions", json=chat(max_tokens=3),
               headers={**AUTH, "X-Request-ID": "rid-1"})
    httpx.post(proxy.url + "/v1/chat/completions", json=chat(max_tokens=4, stream=True),
               headers={**AUTH, "X-Request-ID": "rid-2"})

    def lines(rid):
        return [r.getMessage() for r in caplog.records
                if r.name == "llmctl.proxy" and f"id={rid} " in r.getMessage()]

    assert wait_for(lambda: lines("rid-1") and lines("rid-2"))
    [one] = lines("rid-1")
    assert "status=200" in one and "model=fake-coder" in one
    assert "prompt_tokens=3 completion_tokens=3" in one
    assert f"key={fingerprint(KEY)}" in one and KEY not in one
    assert "ttfb_ms=" in one
    [two] = lines("rid-2")
    assert "completion_tokens=~4" in two  # no usage in this stream: its 4 events, marked ~
    assert all(KEY not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path", ["/v1/%00", "/v1/a%20b", "/v1/..", "/v1/x/%2e%2e/models",
                                  "/v1//chat"])
def test_odd_paths_are_404_and_never_reach_a_backend(proxy, upstream, path):
    seen = upstream.stats()["seen"]
    # The raw target, as sent: httpx would normalise "/v1/.." to "/" otherwise.
    with httpx.Client() as c:
        r = c.post(proxy.url + "/v1/x", json=chat(), headers=AUTH,
                   extensions={"target": path.encode()})
    assert_openai_error(r, 404)
    assert upstream.stats()["seen"] == seen


def test_cors_preflight_and_headers_for_configured_origins(upstream, make_proxy):
    p = make_proxy([FakeBackend(model_for(upstream))], cors_origins=("http://ide.local",))
    pre = httpx.options(p.url + "/v1/chat/completions", headers={
        "Origin": "http://ide.local", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://ide.local"
    assert pre.headers.get("x-request-id")
    r = httpx.post(p.url + "/v1/chat/completions", json=chat(),
                   headers={**AUTH, "Origin": "http://ide.local", "X-Request-ID": "cors-1"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://ide.local"
    assert r.headers["x-request-id"] == "cors-1"
    assert r.headers.get_list("x-request-id") == ["cors-1"]  # stamped once
    other = httpx.options(p.url + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers


def test_one_model_by_name_or_alias_as_the_openai_sdk_retrieves_it(proxy):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=proxy.url + "/v1", api_key=KEY)
    for name in ("fake-coder", "code"):
        m = client.models.retrieve(name)
        assert m.id == "fake-coder" and m.object == "model"
    with pytest.raises(NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert "known models: fake-coder" in str(e.value)
    assert httpx.get(proxy.url + "/v1/models/fake-coder").status_code == 401
