"""A flood of connections against the whole daemon, with its file-descriptor limit lowered
so the flood reaches it: idle sockets, heads that never finish, a 64 MiB header. The
proxy keeps answering /health and real requests, and nothing it runs gives up."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import start_upstream
from .test_cli_stack import KEY, Env

FD_LIMIT = 300  # the daemon's: room for (300 - 128) // 2 = 86 client connections


def low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture
def flooded(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:  # this test's own sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    up = start_upstream("fake-general")
    e = Env(tmp_path)
    socks: list[socket.socket] = []
    try:
        e.url_models({"general": ("fake-general", up.url)}, proxy="header_timeout = 1.5")
        r = subprocess.run([sys.executable, "-m", "llmctl", "up", "--timeout", "30"],
                           env=e.env, text=True, capture_output=True, timeout=60,
                           preexec_fn=low_fd_limit)
        assert r.returncode == 0, r.stderr
        yield e, socks
    finally:
        for s in socks:
            s.close()
        e.run("down")
        up.stop()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\0" * 8)
    return s


def test_idle_and_half_sent_connections_cannot_starve_the_proxy(flooded):
    e, socks = flooded
    port = int(e.url.rsplit(":", 1)[1])
    for i in range(400):  # far past what the daemon's descriptors allow
        s = connect(port)
        if i % 4 == 0:  # a head that never ends
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        socks.append(s)
    t0 = time.monotonic()
    assert httpx.get(e.url + "/health", timeout=5).status_code == 200
    assert time.monotonic() - t0 < 2
    r = httpx.post(e.url + "/v1/chat/completions", timeout=10,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "fake-general", "max_tokens": 2,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    # The daemon holds no more descriptors than its limit allows, and still works after.
    pid = e.status()["daemon"]["pid"]
    assert len(list((__import__("pathlib").Path(f"/proc/{pid}/fd")).iterdir())) < FD_LIMIT
    key = e.run("keys", "add", "after-the-flood").stdout.strip()
    assert httpx.post(e.url + "/v1/chat/completions", timeout=10,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "fake-general", "max_tokens": 1,
                            "messages": [{"role": "user", "content": "hi"}]}).status_code == 200


def test_a_head_that_does_not_arrive_in_time_is_closed(flooded):
    e, socks = flooded
    port = int(e.url.rsplit(":", 1)[1])
    s = connect(port)
    socks.append(s)
    t0 = time.monotonic()
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for _ in range(10):  # a byte now and then: never a whole head
        try:
            s.sendall(b"a")
        except OSError:
            break
        time.sleep(0.3)
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                break
        except TimeoutError:
            pass
        except OSError:
            break
    assert 1.4 < time.monotonic() - t0 < 2.5  # header_timeout = 1.5 in this config


def test_a_64_mib_header_is_refused_early(flooded):
    e, socks = flooded
    port = int(e.url.rsplit(":", 1)[1])
    s = connect(port)
    socks.append(s)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, chunk = 0, b"a" * 65536
    t0 = time.monotonic()
    try:
        while sent < 64 << 20:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    assert sent < 8 << 20  # closed long before the 64 MiB were taken
    s.settimeout(5)
    try:
        head = s.recv(4096)
    except OSError:
        head = b""  # the reset can come before the 431 is read
    assert head == b"" or head.startswith(b"HTTP/1.1 431")
    assert time.monotonic() - t0 < 5
    assert httpx.get(e.url + "/health", timeout=5).status_code == 200
