"""The walking skeleton, used the way a user uses it: up, chat, curl-like requests, down.

Tests share one stack and may run in any order (conftest.py's `stack` waits until both
models are RUNNING); the one that stops it is marked and always runs last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from llmctl import procs as st
from llmctl.logs import log_tail

from .conftest import KEY, LLMCTL

pytestmark = pytest.mark.e2e

QUESTION = "Write a Python function that returns the nth Fibonacci number."


def test_up_brings_both_backends_to_running(stack):
    assert f"{stack.url}/v1" in stack.up_result.stderr  # tells the user where the proxy is
    status = stack.status()
    assert status["daemon"]["running"] is True
    assert status["proxy_url"] == stack.url
    cores = {}
    for key in ("coder", "general"):
        b = status["backends"][key]
        assert b["state"] == "RUNNING", b
        assert b["alive"] and b["pid"] and b["rss_bytes"] > 100 * 1024**2
        # Each server is bound to its own core(s), as vLLM itself reports them.
        log = open(b["log"]).read()
        cores[key] = re.findall(r"core ids=\[([0-9, ]+)\]", log)[-1]
    assert cores["coder"] != cores["general"], cores


def test_planned_kv_cache_agrees_with_what_vllm_reports(stack):
    """Issue 8: the planner's KV tokens against vLLM's own "CPU KV cache size" line, within
    5 %, and `status` (table and JSON) and `plan` show both."""
    import subprocess

    s = stack.status()
    env = {**stack.env, "COLUMNS": "200"}
    table = subprocess.run([*LLMCTL, "status"], env=env, capture_output=True, text=True,
                           timeout=60).stdout
    plan = json.loads(stack.llmctl("plan", "--json").stdout)
    for key in ("coder", "general"):
        b = s["backends"][key]
        planned, reported = b["kv_tokens_planned"], b["kv_tokens_reported"]
        print(f"\n[e2e] {key}: planned {planned:,} KV tokens, vLLM reported {reported:,}")
        assert planned and reported, b
        assert abs(reported - planned) / planned <= 0.05
        assert f"{planned:,}" in table and f"{reported:,}" in table
        assert plan["models"][key]["kv_tokens"] == planned
        assert plan["models"][key]["kv_tokens_reported"] == reported


def test_models_shows_the_demo_served_and_rm_refuses_to_remove_it(stack):
    """Issue 9: the store as the user sees it while the stack runs."""
    data = json.loads(stack.llmctl("models", "--json").stdout)
    [demo] = [m for m in data["models"] if m["source"] == "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert demo["complete"] and demo["bytes"] > 200 * 1024**2
    assert demo["configured"] == ["coder", "general", "demo-a", "demo-b"]
    # Served: what runs now; a demo member too if a request started it earlier.
    # (stack.json lists backends sorted by key, so this is a set)
    assert {"coder", "general"} <= set(demo["served"]) <= {"coder", "general", "demo-a",
                                                           "demo-b"}
    assert len(demo["served"]) <= 3  # never both members of the group
    assert demo["quantization"] == "bfloat16"
    r = stack.llmctl("rm", "HuggingFaceTB/SmolLM2-135M-Instruct", "--force")
    assert r.returncode == 1 and "in use by the running stack" in r.stderr
    assert Path(demo["path"], "config.json").is_file()  # nothing was removed
    # The facts `plan` uses before the first `up` are those of the folder it made.
    from llmctl import hub

    assert hub.facts(Path(demo["path"])) == hub.DEMO_FACTS


def test_bench_against_the_stack_writes_a_result_vllms_reader_reads(stack, tmp_path):
    """Issue 10: a short `llmctl bench` through the proxy, its file read back."""
    from llmctl.bench import load_result

    out = tmp_path / "bench.json"
    r = stack.llmctl("bench", "--num-prompts", "6", "--max-concurrency", "2", "--input-len",
                     "32", "--output-len", "16", "--save-json", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    res = load_result(out)
    assert (res["completed"], res["failed"]) == (6, 0)
    assert res["total_output_tokens"] == 6 * 16  # ignore_eos: exactly --output-len each
    assert res["total_input_tokens"] >= 6 * 32  # counted by vLLM (chat template not used)
    assert res["mean_ttft_ms"] > 0 and res["mean_tpot_ms"] > 0 and res["model_id"]
    print(f"\n[e2e] bench c=2: TTFT p50 {res['median_ttft_ms']:.0f} ms, TPOT p50 "
          f"{res['median_tpot_ms']:.1f} ms, {res['output_throughput']:.1f} tok/s")
    cmp = stack.llmctl("bench", "--compare-direct", "--num-prompts", "4", "--output-len", "8",
                       "--input-len", "16", timeout=300)
    assert cmp.returncode == 0, cmp.stderr
    assert "direct" in cmp.stdout and "proxy − direct: TTFT p50" in cmp.stdout


def test_fim_that_vllm_refuses_is_answered_through_the_proxy(stack):
    """Issue 12: `suffix` on /v1/completions: vLLM itself says 400; the proxy renders the
    configured template and vLLM answers."""
    body = {"model": "smollm2-coder", "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n",
            "max_tokens": 12, "temperature": 0}
    # Past the proxy a backend takes only the key of its start (issue 23): none, 401.
    url = f"http://127.0.0.1:{stack.coder_port}/v1/completions"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    backend_key = json.loads((stack.home / "state" / "backend-keys.json").read_text())["coder"]
    direct = httpx.post(url, json=body, timeout=60,
                        headers={"Authorization": f"Bearer {backend_key}"})
    assert direct.status_code == 400 and "suffix" in direct.text
    r = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"].strip()
    s = stack.status()
    assert s["backends"]["coder"]["fim"] == "starcoder" and s["backends"]["general"]["fim"] is None
    # As the README says: the demo's own tokenizer has no FIM tokens (fim = "auto" finds
    # none), so autocomplete on it is a 400 that says what to do.
    r = httpx.post(f"{stack.url}/v1/completions", json={**body, "model": "smollm2-general"},
                   timeout=60, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "fim_not_supported"


def test_streamed_chat_through_the_proxy_with_the_key(stack):
    body = {"model": "smollm2-coder", "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": QUESTION}]}
    chunks, text = 0, []
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("x-request-id")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            for c in json.loads(line[6:])["choices"]:
                text.append(c["delta"].get("content") or "")
    answer = "".join(text)
    assert chunks > 5, "the answer should arrive in many SSE chunks"
    assert len(answer.strip()) > 20, answer


def test_non_streaming_completion_by_alias(stack):
    # The section name is an alias: IDE configs can say "general" on any machine.
    r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "general", "max_tokens": 24,
                         "messages": [{"role": "user", "content": "Name a colour."}]})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == "smollm2-general"
    assert data["choices"][0]["message"]["content"].strip()
    assert data["usage"]["completion_tokens"] > 0


def test_vllm_tokenize_is_routed_by_model(stack):
    r = httpx.post(f"{stack.url}/tokenize", timeout=30, headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "coder", "prompt": "def fib(n):"})
    assert r.status_code == 200, r.text
    assert len(r.json()["tokens"]) >= 3


def test_wrong_or_missing_key_is_401_in_openai_shape(stack):
    body = {"model": "smollm2-coder", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({"Authorization": "Bearer sk-wrong"}, {}):
        r = httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers,
                       timeout=30)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404_listing_the_known_ones(stack):
    r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "gpt-4", "messages": []})
    assert r.status_code == 404
    msg = r.json()["error"]["message"]
    assert "smollm2-coder" in msg and "smollm2-general" in msg


def test_ready_and_models(stack):
    r = httpx.get(f"{stack.url}/ready", timeout=10)
    assert r.status_code == 200
    models = r.json()["models"]
    assert models["smollm2-coder"] == models["smollm2-general"] == "RUNNING"
    r = httpx.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                  timeout=10)
    assert [m["id"] for m in r.json()["data"]] == ["smollm2-coder", "smollm2-general",
                                                   "smollm2-demo-a", "smollm2-demo-b"]


def test_chat_one_shot_from_a_pipe(stack):
    r = stack.llmctl("chat", "--model", "coder", "--max-tokens", "40", input=QUESTION + "\n")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 20, r.stdout


def test_up_again_says_already_up(stack):
    r = stack.llmctl("up", timeout=60)
    assert r.returncode == 0
    assert "already up" in r.stderr


def vllm_metric(port: int, name: str) -> float:
    """Sum of one vLLM metric over its label sets, read from the backend's own /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")))


def test_client_hang_up_aborts_the_vllm_request(stack):
    """Issue 3: closing the stream at the proxy makes vLLM stop generating within 2 s."""
    port, max_tokens, held = stack.general_port, 1500, 16
    tokens_before = vllm_metric(port, "vllm:generation_tokens_total")
    body = {"model": "smollm2-general", "stream": True, "max_tokens": max_tokens,
            "ignore_eos": True, "messages": [{"role": "user", "content": QUESTION}]}
    chunks, last, t_start = 0, "", time.monotonic()
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200, r.read()
        # Tokens arriving are the proof that vLLM is generating this request right now.
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks, last = chunks + 1, line
                if chunks >= held:
                    break
        assert chunks >= held, (
            f"the stream ended after {chunks} chunks in {time.monotonic() - t_start:.1f} s, "
            f"last {last[:300]!r}\n"
            + "\n".join(log_tail(Path(stack.status()["backends"]["general"]["log"]), 15)))
    # Hung up. vLLM has stopped when nothing runs and its token counter stands still
    # between two reads; `waited` is the time of that second read, an upper bound.
    t0 = time.monotonic()
    prev = vllm_metric(port, "vllm:generation_tokens_total")
    while True:
        time.sleep(0.3)
        now = vllm_metric(port, "vllm:generation_tokens_total")
        waited = time.monotonic() - t0
        if now == prev and vllm_metric(port, "vllm:num_requests_running") == 0:
            break
        assert waited < 10, f"vLLM still generating 10 s after the hang-up ({now:.0f} tokens)"
        prev = now
    generated = now - tokens_before
    print(f"\n[e2e] vLLM stopped generating within {waited:.2f} s of the client hanging up "
          f"({generated:.0f} of {max_tokens} tokens generated)")
    # The counter saw this request's tokens, and stopped far short of max_tokens.
    assert held - 1 <= generated < max_tokens / 3, f"{generated:.0f} tokens counted"
    assert waited < 2.0


def test_sigkill_of_one_backend_is_reaped_and_restarted_while_the_other_serves(stack):
    """Issue 4: the killed server's EngineCore/Worker are gone before the restart; the other
    model answers meanwhile; the killed one comes back RUNNING and answers."""
    before = stack.status()["backends"]["coder"]
    old_pid = before["pid"]
    old_group = st.group_pids(old_pid)
    assert len(old_group) >= 3, old_group  # API server, EngineCore, Worker
    t0 = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    new_pid = None
    served = refused = 0
    while time.monotonic() - t0 < 600:
        b = stack.status()["backends"]["coder"]
        if new_pid is None and b["pid"] not in (None, old_pid):
            new_pid = b["pid"]
            # The supervisor reaps the whole old group before it spawns the new server.
            assert st.group_pids(old_pid) == [], "EngineCore/Worker outlived the restart"
        if new_pid and b["state"] == "RUNNING":
            break
        r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "smollm2-general", "max_tokens": 4,
                             "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200, r.text
        served += 1
        # Meanwhile the restarting model says so: 503 with Retry-After, never a hang.
        r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "smollm2-coder", "max_tokens": 1,
                             "messages": [{"role": "user", "content": "Hi"}]})
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) > 0
            refused += 1
        else:
            assert r.status_code == 200, r.text  # it came back between the two requests
        time.sleep(0.5)
    back = time.monotonic() - t0
    b = stack.status()["backends"]["coder"]
    print(f"\n[e2e] SIGKILL → RUNNING again in {back:.0f} s; general answered {served} requests "
          f"meanwhile, coder refused {refused} with 503")
    assert refused > 0
    assert b["state"] == "RUNNING" and b["restarts"] == before["restarts"] + 1
    assert b["last_exit"] == "killed by SIGKILL"
    assert not any(st.pid_alive(p) for p in old_group)
    r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "smollm2-coder", "max_tokens": 8,
                         "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


@pytest.mark.stops_the_stack
def test_down_leaves_no_process_and_frees_the_ports(stack):
    before = stack.status()
    pgids = [b["pgid"] for b in before["backends"].values() if b["alive"]]
    daemon_pid = before["daemon"]["pid"]
    assert len(pgids) >= 2 and all(st.group_pids(g) for g in pgids)
    r = stack.llmctl("down", timeout=180)
    assert r.returncode == 0, r.stderr
    assert not st.pid_alive(daemon_pid)
    for g in pgids:
        assert st.group_pids(g) == [], f"processes of group {g} are still running"
    for port in (stack.proxy_port, stack.coder_port, stack.general_port, stack.a_port,
                 stack.b_port):
        assert st.port_free(port), port
    after = stack.status()
    assert after["daemon"]["running"] is False and after["backends"] == {}


def test_check_passes_every_row_on_the_running_stack(stack):
    """Issue 18: `llmctl check` against the real stack — install and client checks."""
    r = stack.llmctl("check", "--json", timeout=600)
    data = json.loads(r.stdout)
    failed = [c for c in data["checks"] if c["ok"] is False]
    assert r.returncode == 0 and not failed, failed
    names = {c["name"] for c in data["checks"] if c["ok"]}
    assert {"vLLM and transformers import", "chat: smollm2-coder", "chat: smollm2-general",
            "streaming: smollm2-coder", "wrong key refused", "weights: coder"} <= names
