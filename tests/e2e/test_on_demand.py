"""Issue 14 on the real demo stack: demo-a and demo-b are on-demand copies of the demo
model in one group, beside the always-on coder and general models. Requests to each in
turn start and swap them, coder and general keep answering throughout, and `status`
tells the truth at each step. Written to pass whatever state an earlier test (or an
earlier run of this one) left the group in."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import KEY, LLMCTL

pytestmark = pytest.mark.e2e
H = {"Authorization": f"Bearer {KEY}"}


def ask(stack, model: str, timeout: float = 600) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", headers=H, timeout=timeout,
                      json={"model": model, "max_tokens": 4,
                            "messages": [{"role": "user", "content": "Say hi"}]})


def keep_asking(stack, stop_at: list[bool]) -> list[int]:
    """coder and general, in turn, until told to stop: their status codes. Every few
    seconds, not back to back: on the 2-core machine the starting member shares a core
    with one of them, and a busy core makes its start several times slower."""
    codes = []
    while not stop_at:
        for model in ("smollm2-coder", "smollm2-general"):
            codes.append(ask(stack, model, timeout=120).status_code)
        for _ in range(10):
            if stop_at:
                break
            time.sleep(0.5)
    return codes


def states(stack) -> dict[str, str]:
    return {k: b["state"] for k, b in stack.status()["backends"].items()}


def test_requests_start_and_swap_the_group_while_the_others_keep_answering(stack):
    table = subprocess.run([*LLMCTL, "status"], env={**stack.env, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60).stdout
    before = states(stack)
    if before["demo-a"] != "RUNNING" and before["demo-b"] != "RUNNING":
        assert table.count("STOPPED (on demand)") == 2, table  # nothing asked for them yet
    first, second = ("demo-b", "demo-a") if before["demo-a"] == "RUNNING" else \
        ("demo-a", "demo-b")
    done: list[bool] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        others = pool.submit(keep_asking, stack, done)
        try:
            for key in (first, second):
                t0 = time.monotonic()
                r = ask(stack, f"smollm2-{key}")
                took = time.monotonic() - t0
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"]
                print(f"\n[e2e] first request to {key}: answered after {took:.0f} s "
                      "(a cold start, the other member swapped out)", file=sys.stderr)
                s = stack.status()["backends"]
                other = second if key == first else first
                assert s[key]["state"] == "RUNNING" and s[key]["alive"], s[key]
                assert s[other]["state"] == "STOPPED" and not s[other]["alive"], s[other]
                assert s["coder"]["state"] == s["general"]["state"] == "RUNNING"
                if s[other].get("reason"):  # it was running before: it was swapped out
                    assert f"swapped out for smollm2-{key}" in s[other]["reason"]
        finally:
            done.append(True)
        codes = others.result(timeout=300)
    assert codes and set(codes) == {200}, codes  # coder and general never missed a request
    # The table a user reads: one member running, the other resting on demand.
    table = subprocess.run([*LLMCTL, "status"], env={**stack.env, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60).stdout
    assert "STOPPED (on demand)" in table and "IDLE STOP" in table and "LAST REQUEST" in table
