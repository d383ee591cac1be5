"""Real local processes and sockets: a stand-in upstream (tests/fakes/upstream.py) and
the proxy served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from llmctl import config
from llmctl.proxy import Proxy
from llmctl.supervisor import Supervisor

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "upstream.py"
KEY = "sk-test-key"


def interruptible() -> None:
    """`preexec_fn` for a child a test sends SIGINT: a suite started from a background job
    (`cmd &` in a script) hands its children SIGINT ignored, and Python keeps it so, so the
    child's Ctrl-C handling never runs. The default first: Python then installs its own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(url)


@dataclass
class Upstream:
    port: int
    proc: subprocess.Popen
    name: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        return httpx.get(self.url + "/control/stats", timeout=5).json()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def start_upstream(name: str = "fake", *args: str) -> Upstream:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE), "--port", str(port), "--name", name,
                             *args], start_new_session=True)
    up = Upstream(port, proc, name)
    wait_http(up.url + "/v1/models")
    return up


@pytest.fixture
def upstream():
    up = start_upstream("fake-coder")
    yield up
    up.stop()


@dataclass
class FakeBackend:
    """What the proxy reads of a backend (`proxy.models.Routable`) and what the supervisor's
    admission keeps on it (supervisor.Backend has the same shape), in a state the test sets."""

    model: config.ModelConfig
    fim: str | None = None
    state: str = "RUNNING"
    reason: str | None = None
    served: dict[str, Any] = field(default_factory=dict)
    upstream_auth: bytes | None = None
    demandable: bool = False  # a request may not start it
    in_flight: int = 0
    queued: int = 0
    draining: bool = False
    last_request_at: float | None = None

    def __post_init__(self) -> None:
        if self.upstream_auth is None and self.model.api_key:  # as supervisor.Backend does
            self.upstream_auth = b"Bearer " + self.model.api_key.encode()


class FakeClock:
    """Time the test sets: what the proxy's limits and expiries read."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class ProxyServer:
    def __init__(self, backends, proxy_cfg: config.ProxyConfig, *, clock=None,
                 keys_path: Path | None = None) -> None:
        self.backends = backends
        self.supervisor = Supervisor(backends, max_queue=proxy_cfg.max_queue_per_model)
        self.app = Proxy(backends, proxy_cfg, self.supervisor, clock=clock, keys_path=keys_path)
        self.port = proxy_cfg.port
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        finally:
            await self.app.aclose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ProxyServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def model_for(up: Upstream | None, key: str = "coder", name: str | None = None,
              port: int | None = None, **kw) -> config.ModelConfig:
    url = up.url if up else f"http://127.0.0.1:{port or free_port()}"
    return config.ModelConfig(key=key, name=name or (up.name if up else key), url=url, **kw)


@pytest.fixture
def make_proxy():
    servers = []

    def make(backends, *, clock=None, keys_path=None, **proxy_kw) -> ProxyServer:
        cfg = config.ProxyConfig(port=free_port(), api_keys=(KEY, "sk-second"), **proxy_kw)
        s = ProxyServer(backends, cfg, clock=clock, keys_path=keys_path).__enter__()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.__exit__()
