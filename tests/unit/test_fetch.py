"""fetch.py's pure parts: how a file is cut into parts, how long a 429 is waited out,
and what a killed pull's leftovers are trusted for. The transfers themselves run against
the fake hub over real sockets in tests/integration/test_cli_pull.py."""

from __future__ import annotations

import json

import pytest

from llmctl import config, fetch

MiB = fetch.MiB


@pytest.mark.parametrize("size, connections, parts", [
    (0, 8, [(0, 0)]),
    (31 * MiB, 8, [(0, 31 * MiB)]),  # under two parts: one stream
    (32 * MiB, 8, [(0, 16 * MiB), (16 * MiB, 32 * MiB)]),
    (48 * MiB + 5, 8, [(0, 16 * MiB), (16 * MiB, 32 * MiB), (32 * MiB, 48 * MiB),
                       (48 * MiB, 48 * MiB + 5)]),
    (512 * MiB, 8, [(i * 64 * MiB, (i + 1) * 64 * MiB) for i in range(8)]),
    (200 * MiB, 8, [(i * 25 * MiB, (i + 1) * 25 * MiB) for i in range(8)]),
    (5 * 1024 * MiB, 8, [(i * 64 * MiB, (i + 1) * 64 * MiB) for i in range(80)]),
    (512 * MiB, 1, [(0, 512 * MiB)]),  # one connection: one stream, resumed with Range
])
def test_layout(size, connections, parts):
    assert fetch.layout(size, connections) == parts


@pytest.mark.parametrize("value, tries, wait", [
    ("3", 1, 3.0), ("0", 1, 0.0), ("1e6", 1, fetch.MAX_WAIT), ("-4", 1, 0.0),
    (None, 1, 1.0), (None, 3, 4.0), (None, 9, 30.0), ("soon", 2, 2.0),
    ("Wed, 21 Oct 2015 07:28:10 GMT", 1, 10.0),  # an HTTP date, 10 s after "now"
])
def test_retry_after(value, tries, wait):
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    assert fetch.retry_after(value, tries, now=now) == wait


def _want(tmp_path, size=64 * MiB):
    return fetch.Want("w", "http://127.0.0.1:9/w", tmp_path / "blob", size, "ab" * 32)


def test_a_map_that_does_not_tile_the_file_is_dropped_with_its_part_file(tmp_path):
    w = _want(tmp_path)
    w.work.write_bytes(b"x")
    w.map.write_text(json.dumps({"size": w.size, "sha256": w.sha256,
                                 "parts": [[0, 16 * MiB, 5, 0], [20 * MiB, w.size, 0, 0]]}))
    f = fetch.Fetcher([w])
    f._load(f.files[0])
    assert not w.work.exists() and not w.map.exists()
    assert [(p.start, p.end, p.state) for p in f.files[0].parts] == \
        [(a, b, (0, 0)) for a, b in fetch.layout(w.size, fetch.CONNECTIONS)]


def test_a_map_of_another_version_of_the_file_is_not_trusted(tmp_path):
    w = _want(tmp_path)
    w.work.write_bytes(b"x")
    w.map.write_text(json.dumps({"size": w.size, "sha256": "cd" * 32,
                                 "parts": [[0, w.size, 7, 0]]}))
    assert fetch.held(w) == 0
    f = fetch.Fetcher([w])
    f._load(f.files[0])
    assert not w.work.exists()


def test_an_older_llmctls_partial_file_is_adopted_as_the_first_bytes(tmp_path):
    w = fetch.Want("w", "http://127.0.0.1:9/w", tmp_path / "blob", 64 * MiB, "ab" * 32,
                   legacy=tmp_path / "blob.incomplete")
    w.legacy.write_bytes(b"y" * (20 * MiB))
    assert fetch.held(w) == 20 * MiB
    f = fetch.Fetcher([w], connections=4)
    f._load(f.files[0])
    assert not w.legacy.exists() and w.work.exists()
    held = [p.state[0] for p in f.files[0].parts]
    assert held == [16 * MiB, 4 * MiB, 0, 0]
    assert fetch.held(w) == 20 * MiB


def test_the_connections_come_from_the_file_then_the_environment():
    assert config.parse({}).pull.connections == config.PULL_CONNECTIONS == fetch.CONNECTIONS
    assert config.parse({"pull": {"connections": 3}}).pull.connections == 3
    cfg = config.parse({"pull": {"connections": 3}}, env={"LLMCTL_PULL_CONNECTIONS": "12"})
    assert cfg.pull.connections == 12
    with pytest.raises(config.ConfigError, match="'pull.connections' must be a number of "
                                                 "connections 1-64, not 0"):
        config.parse({"pull": {"connections": 0}})
    with pytest.raises(config.ConfigError, match="LLMCTL_PULL_CONNECTIONS must be a number of "
                                                 "connections 1-64, not 'lots'") as e:
        config.parse({}, env={"LLMCTL_PULL_CONNECTIONS": "lots"})
    assert "pull.connections" in (e.value.hint or "")


MB16 = 16 * MiB


@pytest.mark.parametrize("value, end", [
    (f"bytes {MB16}-{2 * MB16 - 1}/{4 * MB16}", 2 * MB16),  # the part, whole
    (f"bytes {MB16}-{MB16 + 99}/{4 * MB16}", MB16 + 100),  # shorter: the rest asked next
    (f"bytes {MB16}-{2 * MB16 - 1}/*", 2 * MB16),  # size unknown to the server
    (f" bytes {MB16}-{MB16}/{4 * MB16} ", MB16 + 1),
])
def test_a_content_range_within_the_part_says_where_the_body_ends(value, end):
    assert fetch.content_range(value, MB16, 2 * MB16, 4 * MB16) == end


@pytest.mark.parametrize("value", [
    None, "", "bytes */67108864", f"bytes 0-{MB16 - 1}/{4 * MB16}",  # not where asked
    f"bytes {MB16}-{2 * MB16}/{4 * MB16}",  # past the part
    f"bytes {MB16}-{MB16 - 1}/{4 * MB16}",  # ends before it starts
    f"bytes {MB16}-{2 * MB16 - 1}/{5 * MB16}",  # another file's size
    f"bytes {MB16}-{2 * MB16 - 1}/{4 * MB16}, bytes 0-1/{4 * MB16}", "items 16-31/64",
])
def test_a_content_range_other_than_asked_is_a_dropped_connection(value):
    with pytest.raises(fetch.http.client.HTTPException, match="a range other than the one"):
        fetch.content_range(value, MB16, 2 * MB16, 4 * MB16)


def test_a_burst_of_429s_halves_the_pool_once():
    f = fetch.Fetcher([], connections=8)
    for _ in range(6):  # six requests sent together, six answers
        f._busy(2.0)
    assert f.allowed == 4
    f.pause_until = 0.0  # the pause is over: the next 429 is news
    f._busy(2.0)
    assert f.allowed == 2


@pytest.mark.parametrize("parts", [
    [],  # no parts at all
    [[0, 16 * MiB, 99 * MiB, 0], [16 * MiB, 64 * MiB, 0, 0]],  # holds more than it spans
    [[0, 64 * MiB, 5, "crc"]],  # a crc that is no number
    [[0, 64 * MiB, 5]],
])
def test_a_broken_map_is_dropped_and_not_counted_as_held(tmp_path, parts):
    w = _want(tmp_path)
    w.work.write_bytes(b"x")
    w.map.write_text(json.dumps({"size": w.size, "sha256": w.sha256, "parts": parts}))
    assert fetch.held(w) == 0
    f = fetch.Fetcher([w])
    f._load(f.files[0])
    assert not w.work.exists() and not w.map.exists()


def _proxy_answering_407():
    """A proxy on a local port that wants credentials from everyone."""
    import socketserver
    import threading

    class Deny(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.wfile.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Deny)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("scheme", ["https", "http"])  # CONNECT, and a plain proxied GET
def test_a_proxy_that_wants_credentials_is_one_line_at_once(tmp_path, monkeypatch, scheme):
    server = _proxy_answering_407()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(f"{scheme}_proxy", f"http://127.0.0.1:{server.server_address[1]}")
    w = fetch.Want("w", f"{scheme}://hub.invalid/w", tmp_path / "blob", 10, None)
    try:
        with pytest.raises(fetch.ModelError, match="w: the proxy wants credentials") as e:
            fetch.Fetcher([w], connections=1).run()
        assert "USER:PASSWORD@" in (e.value.hint or "")
    finally:
        server.shutdown()
        server.server_close()


def test_an_https_proxy_is_refused_in_one_line(tmp_path, monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "https://proxy.invalid:8443")
    w = fetch.Want("w", "https://hub.invalid/w", tmp_path / "blob", 10, None)
    with pytest.raises(fetch.ModelError, match="HTTPS_PROXY is https://proxy.invalid:8443, "
                                               "which `llmctl pull` cannot talk to") as e:
        fetch.Fetcher([w], connections=1).run()
    assert "http://" in (e.value.hint or "")
