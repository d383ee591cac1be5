"""A fuzz pass: malformed bodies, headers and paths thrown at a live proxy find no 500
and no hang."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as S

from .conftest import KEY, FakeBackend, model_for

json_values = S.recursive(
    S.none() | S.booleans() | S.integers() | S.floats(allow_nan=False) | S.text(max_size=20),
    lambda inner: S.lists(inner, max_size=4) | S.dictionaries(S.text(max_size=8), inner,
                                                             max_size=4),
    max_leaves=12)
bodies = S.one_of(
    S.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    S.dictionaries(S.sampled_from(["model", "messages", "stream", "max_tokens", "prompt"]),
                   json_values, max_size=5).map(lambda d: json.dumps(d).encode()),
    S.builds(lambda m, st: json.dumps({"model": m, "stream": st, "max_tokens": 2,
                                       "messages": []}).encode(),
             S.sampled_from(["fake-coder", "code", "coder", "nope", ""]), S.booleans()),
)
header_text = S.text(S.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip)
auth = S.one_of(S.just(f"Bearer {KEY}"), header_text,
               header_text.map(lambda t: ("Bearer " + t).strip()))
paths = S.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                        "/v1/x/../models", "/v1/", "/v1/%00", "/v1/tokenize"])


@pytest.fixture(scope="module")
def live(request):
    from .conftest import ProxyServer, free_port, start_upstream

    up = start_upstream("fake-coder")
    from llmctl import config

    cfg = config.ProxyConfig(port=free_port(), api_keys=(KEY,), max_body_bytes=200)
    server = ProxyServer([FakeBackend(model_for(up, aliases=("code",)))], cfg).__enter__()
    client = httpx.Client(timeout=5)
    yield server, client, up
    client.close()
    server.__exit__()
    up.stop()


@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(body=bodies, authorization=auth, path=paths,
       rid=S.one_of(S.none(), header_text), ctype=S.one_of(S.none(), header_text))
def test_no_500_and_no_hang(live, body, authorization, path, rid, ctype):
    server, client, up = live
    headers = {"authorization": authorization}
    if rid is not None:
        headers["x-request-id"] = rid
    if ctype is not None:
        headers["content-type"] = ctype
    seen = up.stats()["seen"]
    # The raw target as sent (httpx would normalise "/v1/x/../models"); times out in 5 s.
    r = client.post(server.url + "/v1/x", content=body, headers=headers,
                    extensions={"target": path.encode()})
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.headers.get("x-request-id")
    if up.stats()["seen"] == seen:
        # The proxy answered by itself: a refusal, in OpenAI's error shape, always.
        assert r.status_code >= 400, (r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
