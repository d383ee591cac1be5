"""One scrape target: the proxy's /metrics carries each running backend's own series,
labelled with the model; a backend whose /metrics hangs or answers garbage leaves the
scrape fast and valid, and is counted."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl import config

from .conftest import KEY, FakeBackend, start_upstream

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def two(make_proxy):
    ups = [start_upstream(n) for n in ("fake-coder", "fake-general")]
    backends = [FakeBackend(config.ModelConfig(key=k, name=u.name, source="org/weights",
                                               port=u.port))
                for u, k in zip(ups, ("coder", "general"), strict=True)]
    p = make_proxy(backends)
    p.ups = ups
    yield p
    for u in ups:
        u.stop()


def scrape(p) -> tuple[float, dict[str, list]]:
    t0 = time.monotonic()
    r = httpx.get(p.url + "/metrics", headers=AUTH, timeout=30)
    took = time.monotonic() - t0
    assert r.status_code == 200
    samples: dict[str, list] = {}
    for fam in text_string_to_metric_families(r.text):  # the whole scrape parses
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return took, samples


def models_of(samples, name: str) -> set[str]:
    return {s.labels.get("model") for s in samples.get(name, [])}


def test_the_backends_series_come_labelled_with_their_model(two):
    httpx.post(two.url + "/v1/chat/completions", headers=AUTH, json={
        "model": "fake-general", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    _, samples = scrape(two)
    assert models_of(samples, "vllm:num_requests_running") == {"fake-coder", "fake-general"}
    assert models_of(samples, "vllm:time_to_first_token_seconds_bucket") == \
        {"fake-coder", "fake-general"}
    [general] = [s for s in samples["vllm:prompt_tokens_total"]
                 if s.labels["model"] == "fake-general"]
    assert general.value == 3.0  # the request it served
    # The proxy's own series are there too, and its failures counter starts at 0.
    assert samples["llmctl_requests_total"]
    assert {s.labels["model"]: s.value for s in
            samples["llmctl_backend_scrape_failures_total"]} == {"fake-coder": 0.0,
                                                                 "fake-general": 0.0}


@pytest.mark.parametrize("fault", ["metrics-hang", "metrics-garbage"])
def test_a_backend_that_hangs_or_sends_garbage_is_left_out_and_counted(two, fault):
    httpx.post(two.ups[0].url + f"/control/{fault}")
    took, samples = scrape(two)
    assert took < 5  # the scrape timeout (2 s), not the hang (an hour)
    assert models_of(samples, "vllm:num_requests_running") == {"fake-general"}
    failures = {s.labels["model"]: s.value
                for s in samples["llmctl_backend_scrape_failures_total"]}
    assert failures == {"fake-coder": 1.0, "fake-general": 0.0}
    httpx.post(two.ups[0].url + "/control/metrics-ok")
    _, samples = scrape(two)
    assert models_of(samples, "vllm:num_requests_running") == {"fake-coder", "fake-general"}


def test_a_hung_backend_costs_less_than_the_scrapers_own_timeout(two):
    """Prometheus says how long it waits (its scrape_timeout, e.g. 1 s at a 1 s
    interval): the proxy gives up on a hung backend before that, so the scrape still
    lands instead of failing whole."""
    httpx.post(two.ups[0].url + "/control/metrics-hang")
    t0 = time.monotonic()
    r = httpx.get(two.url + "/metrics", headers={**AUTH,
                  "X-Prometheus-Scrape-Timeout-Seconds": "1"}, timeout=30)
    took = time.monotonic() - t0
    assert r.status_code == 200 and took < 1.0, took
    assert 'vllm:num_requests_running{' in r.text and 'model="fake-general"' in r.text
    httpx.post(two.ups[0].url + "/control/metrics-ok")


def test_a_quiet_stack_shows_zeros_for_every_model_and_key(two):
    """Label sets known in advance exist from the first scrape at 0 (Prometheus's
    instrumentation guide), so a dashboard shows 0, not "no data": each model's requests
    by status class, latencies and failures; each key's requests and tokens."""
    _, samples = scrape(two)
    requests = {(s.labels["model"], s.labels["status"]): s.value
                for s in samples["llmctl_requests_total"]}
    for m in ("fake-coder", "fake-general"):
        assert {requests[(m, c)] for c in ("200", "429", "500", "503", "504")} == {0.0}
        assert models_of(samples, "llmctl_time_to_first_byte_seconds_bucket") >= {m}
        assert models_of(samples, "llmctl_request_duration_seconds_count") >= {m}
        assert models_of(samples, "llmctl_requests_in_flight") >= {m}
        assert models_of(samples, "llmctl_upstream_errors_total") >= {m}
    keys = {(s.labels["key"], s.labels["model"], s.labels["kind"])
            for s in samples["llmctl_key_tokens_total"]}
    assert ("admin", "fake-coder", "completion") in keys
    assert {s.labels["key"] for s in samples["llmctl_key_requests_total"]} == {"admin"}


def test_a_key_added_to_a_running_stack_has_its_series_at_once(tmp_path, make_proxy):
    from llmctl import keys as keymod

    up = start_upstream("fake-solo")
    try:
        keys_path = tmp_path / "keys.toml"
        p = make_proxy([FakeBackend(config.ModelConfig(key="solo", name="fake-solo",
                                                       source="org/w", port=up.port))],
                       keys_path=keys_path)
        _, samples = scrape(p)
        assert {s.labels["key"] for s in samples["llmctl_key_requests_total"]} == {"admin"}
        keymod.add("alice", p=keys_path)
        httpx.get(p.url + "/health")  # any request reads the key file again when it changed
        _, samples = scrape(p)
        assert ("alice", "fake-solo", "200") in {
            (s.labels["key"], s.labels["model"], s.labels["status"])
            for s in samples["llmctl_key_requests_total"]}
    finally:
        up.stop()


def test_a_url_model_or_one_at_rest_is_not_scraped(two):
    two.backends[0].state = "STOPPED"
    _, samples = scrape(two)
    assert models_of(samples, "vllm:num_requests_running") == {"fake-general"}


def test_the_daemons_one_scrape_target_carries_engines_processes_and_states(tmp_path):
    """The whole daemon, two started models (stand-in vLLM servers as processes): one
    scrape of the proxy has their engine series, their process groups' memory and CPU
    time, every state at 0 or 1, and nothing for a GPU this machine has not."""
    from .test_cli_stack import KEY as STACK_KEY
    from .test_cli_stack import Env

    e = Env(tmp_path)
    try:
        assert e.run("up", "--timeout", "60").returncode == 0
        r = httpx.get(e.url + "/metrics", headers={"Authorization": f"Bearer {STACK_KEY}"},
                      timeout=30)
        assert r.status_code == 200
        got: dict[tuple, float] = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                got[(s.name, s.labels.get("model"), s.labels.get("state"))] = s.value
        for model in ("fake-coder", "fake-general"):
            assert got[("llmctl_backend_state", model, "RUNNING")] == 1.0
            assert got[("llmctl_backend_state", model, "STOPPED")] == 0.0
            assert got[("llmctl_backend_resident_bytes", model, None)] > 1_000_000
            assert got[("llmctl_backend_cpu_seconds_total", model, None)] > 0
            assert got[("llmctl_backend_starts_total", model, None)] == 1.0
            assert ("vllm:num_requests_running", model, None) in got
        assert not any(k[0].startswith("llmctl_gpu_") for k in got)
    finally:
        e.run("down")


def test_prometheus_config_has_a_key_that_reads_metrics_and_nothing_else(tmp_path):
    import yaml

    from .test_cli_stack import KEY as STACK_KEY
    from .test_cli_stack import Env

    up = start_upstream("fake-general")
    e = Env(tmp_path)
    e.url_models({"general": ("fake-general", up.url)})
    try:
        assert e.run("up", "--timeout", "30").returncode == 0
        r = e.run("monitor", "prometheus-config", "--interval", "5s")
        assert r.returncode == 0, r.stderr
        job = yaml.safe_load(r.stdout)["scrape_configs"][0]
        assert job["scrape_interval"] == "5s" and job["metrics_path"] == "/metrics"
        assert job["static_configs"][0]["targets"] == [e.url.removeprefix("http://")]
        key = job["authorization"]["credentials"]
        assert key != STACK_KEY and key.startswith("sk-llmctl-")  # never the admin key
        h = {"Authorization": f"Bearer {key}"}
        assert httpx.get(e.url + "/metrics", headers=h).status_code == 200
        chat = httpx.post(e.url + "/v1/chat/completions", headers=h, json={
            "model": "fake-general", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 403 and "reads /metrics" in chat.json()["error"]["message"]
        assert httpx.get(e.url + "/v1/models", headers=h).status_code == 403
        assert httpx.get(e.url + "/api/status", headers=h).status_code == 403
        # Again: a new secret for the same key; the old one stops working.
        again = yaml.safe_load(e.run("monitor", "prometheus-config").stdout)
        assert httpx.get(e.url + "/metrics", headers=h).status_code == 401
        new = again["scrape_configs"][0]["authorization"]["credentials"]
        assert httpx.get(e.url + "/metrics", headers={"Authorization": f"Bearer {new}"}
                         ).status_code == 200
        # A request key of that name is not turned into a metrics key.
        assert e.run("keys", "add", "alice").returncode == 0
        r = e.run("monitor", "prometheus-config", "--key-name", "alice")
        assert r.returncode == 1 and "not a metrics key" in r.stderr
    finally:
        e.run("down")
        up.stop()
