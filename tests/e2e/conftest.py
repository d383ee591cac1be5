"""One real stack per test session: vLLM (CPU build) serving the SmolLM2 demo model as the
always-on coder and general models, and as two on-demand models in one group (demo-a and
demo-b, started by their first request, one at a time).

The stack is started the way a user starts it — `llmctl up` in a subprocess — in a
temporary LLMCTL_HOME on free ports. Tests do not depend on each other's order: each
takes the stack through the `stack` fixture, which waits until both models are
RUNNING again (a test that killed one leaves it restarting); the one test that stops
the stack is marked `stops_the_stack` and always runs last, and the session's
teardown runs `llmctl down` whatever happened.
The converted demo weights are kept in .test-models/ between local runs (CI starts
from a clean clone and converts them once).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LLMCTL = [sys.executable, "-m", "llmctl"]
KEY = "sk-e2e-test-key-0123456789"
UP_TIMEOUT = 1500  # a cold torch.compile of two servers on one core each takes minutes


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Stack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.proxy_port, self.coder_port, self.general_port, self.a_port, self.b_port = \
            free_ports(5)
        self.env = {**os.environ, "LLMCTL_HOME": str(home),
                    "LLMCTL_MODELS": os.environ.get("LLMCTL_MODELS", str(ROOT / ".test-models")),
                    "NO_COLOR": "1"}
        self.env.pop("LLMCTL_CONFIG", None)
        self.env.pop("LLMCTL_API_KEY", None)
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.up_seconds: float | None = None
        self.up_result: subprocess.CompletedProcess[str] | None = None

    def write_config(self) -> None:
        (self.home / "config.toml").write_text(f"""
[proxy]
port = {self.proxy_port}
api_keys = ["{KEY}"]

[engine]
device = "cpu"

[models.coder]
name = "smollm2-coder"
source = "HuggingFaceTB/SmolLM2-135M-Instruct"
port = {self.coder_port}
max_model_len = 2048
max_num_seqs = 16
fim = "starcoder"                 # set by hand: the demo model has no FIM tokens
# Greedy with a light repetition penalty as the server's defaults (a request that sets its
# own wins): Claude Code sends no temperature, and the 135M model, sampled at 1.0 or
# greedy alone, loops on its message layout until the output budget, which Claude Code
# takes for an error (measured: 512 tokens of "I'm a bit of a creative AI…"; with these,
# 45 tokens and end_turn).
args = ["--override-generation-config", '{{"temperature": 0.0, "repetition_penalty": 1.1}}']

[models.general]
name = "smollm2-general"
source = "HuggingFaceTB/SmolLM2-135M-Instruct"
port = {self.general_port}
max_model_len = 2048
max_num_seqs = 16
""" + "".join(f"""
[models.demo-{x}]
name = "smollm2-demo-{x}"
source = "HuggingFaceTB/SmolLM2-135M-Instruct"
port = {port}
max_model_len = 2048
max_num_seqs = 16
start = "on-demand"
group = "demo"
""" for x, port in (("a", self.a_port), ("b", self.b_port))))

    def llmctl(self, *args: str, input: str | None = None, timeout: float = 120,
               ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LLMCTL, *args], env=self.env, input=input, text=True,
                              capture_output=True, timeout=timeout, cwd=ROOT)

    def status(self) -> dict:
        r = self.llmctl("status", "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def wait_ready(self, timeout: float = 300) -> dict:
        """The status once coder and general are RUNNING (the on-demand models may be in
        any state: tests do not depend on whether a swap happened before them); fails,
        naming the states, when they are not within `timeout` (a backend restarting after
        a SIGKILL takes ~70 s)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.status()
            states = {k: b["state"] for k, b in s["backends"].items()}
            if s["daemon"]["running"] and states.get("coder") == states.get("general") \
                    == "RUNNING" and all(not k.startswith("demo") or state != "STARTING"
                                         for k, state in states.items()):
                return s
            assert time.monotonic() < deadline, f"the stack is not ready: {states}"
            time.sleep(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever the file order, the test that stops the shared stack runs last among the
    e2e tests (and not after the rest of the suite: the stack would stay up meanwhile)."""
    e2e = [i for i, item in enumerate(items) if item.get_closest_marker("e2e")]
    if not e2e:
        return
    block = items[e2e[0]:e2e[-1] + 1]
    block.sort(key=lambda item: item.get_closest_marker("stops_the_stack") is not None)
    items[e2e[0]:e2e[-1] + 1] = block


@pytest.fixture(scope="package")  # torn down once the e2e tests are done, not at session end
def shared_stack(tmp_path_factory: pytest.TempPathFactory):
    s = Stack(tmp_path_factory.mktemp("llmctl-home"))
    s.write_config()
    t0 = time.monotonic()
    s.up_result = s.llmctl("up", "--timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 300)
    s.up_seconds = time.monotonic() - t0
    print(f"\n[e2e] llmctl up: exit {s.up_result.returncode} after {s.up_seconds:.0f} s",
          file=sys.stderr)
    try:
        yield s
    finally:
        # Whatever happened above, leave nothing running.
        s.llmctl("down", timeout=180)


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """The shared stack with coder and general RUNNING, whatever the test before did to it."""
    r = shared_stack.up_result
    assert r is not None and r.returncode == 0, f"llmctl up failed:\n{r.stderr[-3000:] if r else ''}"
    shared_stack.wait_ready()
    return shared_stack
