"""The shipped dashboards against the real thing: a real Prometheus (Debian's package, our
own instance on a free port, configured by `llmctl monitor prometheus-config`) scrapes the
demo stack's proxy each second under a small load; then every PromQL expression of every
dashboard `llmctl monitor dashboards` wrote, with the dashboard variables substituted as
Grafana would, runs without error through Prometheus's HTTP API and returns series, and
every metric it names is in the proxy's scrape, except the declared conditional ones
(GPU readings; tests/unit/test_dashboards.py shows each with fake NVML readings).
A dashboard that names a metric the stack does not export — vLLM renamed one — fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl import monitor

from .conftest import KEY, Stack, free_ports

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {KEY}"}
# What Grafana puts in for the variables: every model and key, a rate window that spans
# several 1 s scrapes, the dashboard's time range.
VARIABLES = {"$__rate_interval": "20s", "$__range": "5m", "$model": ".*", "$key": ".*"}
SCRAPES = 25  # seconds of scraping under load before the queries


def substitute(expr: str) -> str:
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def load(stack: Stack, stop: threading.Event) -> None:
    """A small, steady load on both always-on models: chat (streamed and not) and text."""
    bodies = [("/v1/chat/completions", {"model": "smollm2-coder", "max_tokens": 16,
                                        "messages": [{"role": "user", "content": "Say hi."}]}),
              ("/v1/chat/completions", {"model": "smollm2-general", "max_tokens": 16,
                                        "stream": True,
                                        "messages": [{"role": "user", "content": "Count."}]}),
              ("/v1/completions", {"model": "smollm2-general", "max_tokens": 8,
                                   "prompt": "def add(a, b):"})]
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=60) as c:
        i = 0
        while not stop.is_set():
            path, body = bodies[i % len(bodies)]
            c.post(path, json=body).read()
            i += 1


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not on PATH: `bash scripts/setup.sh --dev` installs "
                    "Debian's package")
    r = stack.llmctl("monitor", "prometheus-config", "--interval", "1s")
    assert r.returncode == 0, r.stderr
    (tmp_path / "prometheus.yml").write_text(r.stdout)
    [port] = free_ports(1)
    p = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                          f"--storage.tsdb.path={tmp_path / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
                         start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                targets = httpx.get(url + "/api/v1/targets").json()["data"]["activeTargets"]
                if targets and targets[0]["health"] == "up":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the proxy was not scraped: {targets}"
            time.sleep(0.5)
        yield url, r.stdout
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)


def query(url: str, expr: str) -> list:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=30).json()
    assert r["status"] == "success", f"{expr}: {r.get('error')}"
    return r["data"]["result"]


def test_every_dashboard_query_runs_and_every_metric_it_names_is_scraped(stack, prometheus,
                                                                          tmp_path):
    url, scrape_config = prometheus
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(stack, stop), daemon=True)
    worker.start()
    try:
        time.sleep(SCRAPES)
    finally:
        stop.set()
        worker.join(timeout=120)
    time.sleep(2)  # a scrape after the last request

    # The user's path: the files as the command writes them.
    folder = tmp_path / "dashboards"
    r = stack.llmctl("monitor", "dashboards", str(folder))
    assert r.returncode == 0, r.stderr
    files = sorted(folder.glob("*.json"))
    assert len(files) == len(monitor.NAMES)

    # What the proxy exports, read with the scrape config's own key (a metrics key).
    credential = next(line.split(":", 1)[1].strip() for line in scrape_config.splitlines()
                      if "credentials:" in line)
    text = httpx.get(stack.url + "/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {credential}"}).text
    exported = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}

    missing, empty, ran = [], [], 0
    for f in files:
        d = json.loads(f.read_text())
        for v in d["templating"]["list"]:
            if v["type"] == "query":  # label_values(metric, label): values exist
                metric, label = v["query"]["query"][len("label_values("):-1].split(", ")
                got = httpx.get(url + f"/api/v1/label/{label}/values",
                                params={"match[]": metric}).json()["data"]
                assert got, f"{f.name}: variable {v['name']} has no values"
        for title, expr in monitor.expressions(d):
            result = query(url, substitute(expr))
            ran += 1
            named = monitor.metric_names(expr)
            assert named, f"{f.name} / {title}: names no metric: {expr}"
            if named & set(monitor.CONDITIONAL):
                continue
            missing += [f"{f.name} / {title}: {n}" for n in sorted(named - exported)]
            if not result:
                empty.append(f"{f.name} / {title}: {expr}")
    assert not missing, "metrics the dashboards name that the stack does not export:\n" + \
        "\n".join(missing)
    assert not empty, "queries with no series (\"no data\" on a dashboard):\n" + "\n".join(empty)
    assert ran >= 30

    # The scrape carried the load: the proxy's counters and vLLM's engines moved.
    requests = query(url, 'sum by (model) (increase(llmctl_requests_total{status="200"}[1m]))')
    assert {x["metric"]["model"] for x in requests if float(x["value"][1]) > 0} >= \
        {"smollm2-coder", "smollm2-general"}
    tokens = query(url, "sum(increase(vllm:generation_tokens_total[1m]))")
    assert float(tokens[0]["value"][1]) > 0
