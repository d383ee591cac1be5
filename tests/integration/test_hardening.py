"""What an attack on a running proxy tried, each closed: a reverse proxy on the same host
(everyone is loopback), cross-site posts to a proxy with no keys, path and header tricks,
bodies built to break the parser."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from llmctl import config, keys

from .conftest import KEY, FakeBackend, ProxyServer, free_port, model_for

AUTH = {"Authorization": f"Bearer {KEY}"}


def chat(**kw):
    return {"model": "fake-coder", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}], **kw}


class Relay:
    """A same-host TCP relay, as Caddy or nginx in front of the proxy: every client it
    passes on arrives from 127.0.0.1, and it says whom it relays (X-Forwarded-For)."""

    def __init__(self, target_port: int) -> None:
        self.target, self.port = target_port, free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(5)

    def _run(self) -> None:
        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        async def client(r, w):
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        async def main():
            await asyncio.start_server(client, "127.0.0.1", self.port)
            self.ready.set()
            await asyncio.Event().wait()

        self.loop.run_until_complete(main())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


VIA = {"X-Forwarded-For": "203.0.113.9"}  # what the relay adds


@pytest.fixture
def keyed(upstream, make_proxy, tmp_path):
    path = tmp_path / "keys.toml"
    named, _ = keys.add("alice", p=path)
    p = make_proxy([FakeBackend(model_for(upstream))], keys_path=path)
    return p, Relay(p.port), named


@pytest.fixture
def open_proxy(upstream):
    """A config with no keys at all."""
    cfg = config.ProxyConfig(port=free_port())
    with ProxyServer([FakeBackend(model_for(upstream))], cfg) as p:
        yield p


def test_metrics_take_an_admin_key_even_from_loopback(keyed):
    p, relay, named = keyed
    for base in (p.url, relay.url):  # direct, and everyone behind the reverse proxy
        r = httpx.get(base + "/metrics", headers=VIA if base == relay.url else {})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {named}"})
        assert r.status_code == 403 and "may not read /metrics" in r.json()["error"]["message"]
        r = httpx.get(base + "/metrics", headers=AUTH)
        assert r.status_code == 200 and "llmctl_requests" in r.text


def test_metrics_opened_by_the_config(upstream):
    cfg = config.ProxyConfig(port=free_port(), api_keys=(KEY,), open_metrics=True)
    with ProxyServer([FakeBackend(model_for(upstream))], cfg) as p:
        assert httpx.get(Relay(p.port).url + "/metrics", headers=VIA).status_code == 200
        assert httpx.get(p.url + "/v1/models").status_code == 401  # only /metrics is open


def test_starting_and_stopping_takes_an_admin_key_through_a_relay(keyed):
    p, relay, named = keyed
    url = relay.url + "/api/models/nope/stop"
    assert httpx.post(url, headers=VIA).status_code == 401
    r = httpx.post(url, headers={**VIA, "Authorization": f"Bearer {named}"})
    assert r.status_code == 403 and "may not start or stop" in r.json()["error"]["message"]
    r = httpx.post(url, headers={**VIA, **AUTH})
    assert r.status_code == 404  # past the key check: there is no model 'nope'


def test_with_no_keys_models_are_stopped_only_from_this_machine_not_through_a_relay(open_proxy):
    relay = Relay(open_proxy.port)
    r = httpx.post(relay.url + "/api/models/nope/stop", headers=VIA)
    assert r.status_code == 403 and "set api_keys" in r.json()["error"]["message"]
    assert httpx.post(open_proxy.url + "/api/models/nope/stop").status_code == 404


def test_a_cross_site_post_is_refused_without_keys(open_proxy, upstream):
    seen = upstream.stats()["requests"]
    # What a page on another site can send with no preflight: a "simple" text/plain post.
    r = httpx.post(open_proxy.url + "/v1/chat/completions", content=httpx.Request(
        "POST", "http://x", json=chat()).content,
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    r = httpx.post(open_proxy.url + "/api/models/nope/stop",
                   headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert upstream.stats()["requests"] == seen
    # The proxy's own page (same origin) and clients that send no Origin are served.
    own = {"Origin": open_proxy.url}
    assert httpx.post(open_proxy.url + "/v1/chat/completions", json=chat(),
                      headers=own).status_code == 200
    assert httpx.post(open_proxy.url + "/v1/chat/completions", json=chat()).status_code == 200


def test_an_origin_the_config_allows_is_served(upstream):
    cfg = config.ProxyConfig(port=free_port(), cors_origins=("https://app.example",))
    with ProxyServer([FakeBackend(model_for(upstream))], cfg) as p:
        r = httpx.post(p.url + "/v1/chat/completions", json=chat(),
                       headers={"Origin": "https://app.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while b"\r\n\r\n" not in out:
            out += s.recv(65536)
        return out


def test_a_path_with_a_trailing_newline_never_reaches_the_backend(keyed, upstream):
    p, _, _ = keyed
    seen = upstream.stats()["requests"]
    body = httpx.Request("POST", "http://x", json=chat()).content
    for path in (b"/v1/chat/completions%0A", b"/v1/chat/completions%0D%0A", b"/v1/a%0Ab"):
        head = raw(p.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                   + KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        assert head.startswith(b"HTTP/1.1 404"), head[:200]
    assert upstream.stats()["requests"] == seen


def test_a_body_nested_too_deeply_is_a_400(keyed):
    p, _, _ = keyed
    deep = b'{"model": "fake-coder", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(p.url + "/v1/chat/completions", content=deep, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "nested too deeply" in r.json()["error"]["message"]


@pytest.mark.parametrize("method,path", [("POST", "/v1/chat/completions"),
                                         ("GET", "/v1/models"), ("GET", "/api/status")])
def test_two_authorization_headers_are_refused_on_both_paths(keyed, method, path):
    p, _, named = keyed
    for pair in ([f"Bearer {named}", f"Bearer {KEY}"], [f"Bearer {KEY}", f"Bearer {named}"]):
        r = httpx.request(method, p.url + path, json=chat() if method == "POST" else None,
                          headers=[("Authorization", a) for a in pair])
        assert r.status_code == 400, (path, r.text)
        assert "more than one Authorization header" in r.json()["error"]["message"]


def test_route_corners_answer_what_they_are(keyed):
    p, _, _ = keyed
    r = httpx.get(p.url + "/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(p.url + "/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and "takes POST" in r.json()["error"]["message"]
    r = httpx.get(p.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
