"""The web page, in a real headless browser (Debian's Chromium driven by Playwright),
against a real daemon whose models are `url` backends on local stand-in upstreams (and,
for the status view's history, models it starts: the stand-in with vLLM-like metrics);
and its security headers and path handling over plain HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import start_upstream
from .test_cli_stack import KEY, Env

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`llmctl up` with two url models on slow-ish stand-ins (a stop button needs time)."""
    tmp = tmp_path_factory.mktemp("web")
    a = start_upstream("alpha", "--token-delay", "0.05")
    b = start_upstream("beta", "--token-delay", "0.05")
    e = Env(tmp)
    e.url_models({"general": ("alpha", a.url), "coder": ("beta", b.url)})
    r = e.run("up", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    try:
        yield e, a, b
    finally:
        e.run("down")
        a.stop()
        b.stop()


@contextlib.contextmanager
def browser_page():
    """A fresh headless Chromium page (its own storage); fails the test on any script
    error or CSP violation."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and
              "401" not in m.text else None)
        yield pg
        browser.close()
        assert errors == [], errors  # no script error, no CSP violation


@pytest.fixture
def page(site):
    with browser_page() as pg:
        yield pg


def test_chat_stop_switch_reload_and_status_in_a_browser(site, page):
    from playwright.sync_api import expect

    e, alpha, beta = site
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(e.url + "/")
    # A wrong key is a clear message, not a blank page.
    page.fill("#key-input", "sk-wrong")
    page.click("#key-form button")
    expect(page.locator("#key-error")).to_contain_text("refused (401)")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#model option")).to_have_count(2)
    expect(page.locator("#model")).to_have_value("alpha")  # the general model
    # A streamed answer, with its stats line.
    page.locator("details.settings summary").click()
    page.fill("#max-tokens", "6")
    page.fill("#prompt", "hello")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .stats").last).to_contain_text("first token",
                                                                      timeout=15000)
    expect(page.locator(".msg.assistant .body").last).to_contain_text("tok0 tok1 tok2 tok3")
    # A long one, stopped mid-answer: the request is closed, the upstream aborts it.
    aborted = alpha.stats()["aborted"]
    page.fill("#max-tokens", "400")
    page.fill("#prompt", "tell me everything")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .body").last).to_contain_text("tok5", timeout=15000)
    page.click("#stop")
    expect(page.locator(".msg.assistant .stats").last).to_contain_text("stopped")
    page.wait_for_function("1", timeout=1000)
    deadline_stats = [alpha.stats()["aborted"] for _ in range(50)
                      if alpha.stats()["aborted"] == aborted]
    assert alpha.stats()["aborted"] == aborted + 1, deadline_stats
    # Another model, in the same conversation.
    asked = beta.stats()["requests"]
    page.select_option("#model", "beta")
    page.fill("#max-tokens", "3")
    page.fill("#prompt", "and you?")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .stats").last).to_contain_text("3 tokens",
                                                                      timeout=15000)
    assert beta.stats()["requests"] == asked + 1
    page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)
    # A reload: the key and the conversation are still there.
    page.reload()
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#messages .msg")).to_have_count(6)
    expect(page.locator("#conversations .title")).to_have_text("hello")
    # The status view: both backends, live.
    page.click("#tab-status")
    expect(page.locator("#backends tbody tr")).to_have_count(2)
    expect(page.locator("#backends td.state.RUNNING")).to_have_count(2)
    expect(page.locator("#status-head")).to_contain_text("daemon up")
    page.wait_for_timeout(2500)  # another of the proxy's points, so the charts have rates
    page.screenshot(path=str(ARTIFACTS / "web-status.png"), full_page=True)
    assert (ARTIFACTS / "web-status.png").stat().st_size > 10_000


def test_security_headers_and_nothing_outside_the_page(site):
    e, _, _ = site
    r = httpx.get(e.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/app.js">' in r.text and "<script>" not in r.text
    assert httpx.get(e.url + "/static/app.js").headers["content-type"].startswith(
        "text/javascript")
    with httpx.Client() as c:
        for target in (b"/static/../config.py", b"/static/%2e%2e/cli.py", b"/static/",
                       b"/static", b"//etc/passwd", b"/static/..%2f..%2fpyproject.toml",
                       b"/web/app.js", b"/static/app.js/../../proxy.py", b"/etc/passwd"):
            r = c.get(e.url + "/", extensions={"target": target})
            assert r.status_code == 404, (target, r.status_code)
            assert "import" not in r.text and "root:" not in r.text
    # The API's status for the page and for scripts: the same data as `status --json`.
    assert httpx.get(e.url + "/api/status").status_code == 401
    s = httpx.get(e.url + "/api/status", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert set(s["backends"]) == {"general", "coder"} and s["daemon"]["running"]
    assert {"requests", "tokens"} <= set(s["proxy_counters"])


def load(url: str, key: str, model: str, stop: threading.Event, sent: list[int]) -> None:
    """Chats one after another, each streaming a few tokens 20 ms apart."""
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        while not stop.is_set():
            r = http.post(url + "/v1/chat/completions", json={
                "model": model, "max_tokens": 4, "token_delay": 0.02,
                "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            sent.append(1)


def drawn(page, chart: str) -> dict[str, int]:
    """Each line of a chart (by its series) and how many points it joins."""
    return page.eval_on_selector_all(
        f"#chart-{chart} path.line",
        "ps => Object.fromEntries(ps.map(p => [p.dataset.series, "
        "(p.getAttribute('d').match(/[ML]/g) || []).length]))")


def texts(page, chart: str) -> list[str]:
    return page.locator(f"#chart-{chart} svg text").all_text_contents()


def test_the_status_view_opens_on_the_history_the_proxy_kept(tmp_path):
    """Models the daemon starts (vLLM-like metrics), a few seconds of load before anyone
    looks: the status view's first drawing already has those seconds, with axes and
    units; a key limited to one model sees that model and its own key only."""
    from playwright.sync_api import expect

    from llmctl import keys

    e = Env(tmp_path)
    assert e.run("up", "--timeout", "60").returncode == 0
    named, _ = keys.add("ci", models=("fake-general",), p=e.home / "keys.toml")
    stop, sent = threading.Event(), []
    workers = [threading.Thread(target=load, args=a, daemon=True) for a in (
        (e.url, KEY, "fake-coder", stop, sent), (e.url, KEY, "fake-general", stop, sent),
        (e.url, named, "fake-general", stop, sent))]
    try:
        for w in workers:
            w.start()
        time.sleep(9)  # four or five of the sampler's rounds, nobody watching
        admin = {"Authorization": f"Bearer {KEY}"}
        h = httpx.get(e.url + "/api/history", headers=admin).json()
        assert len(h["points"]) >= 3 and h["interval_s"] == 2 and h["span_s"] == 600
        last = h["points"][-1]
        assert last["models"]["general"]["req_s"] > 0 and last["models"]["coder"]["tok_s"] > 0
        assert set(last["keys"]) == {"admin", "ci"} and last["keys"]["ci"]["requests"] > 0
        # What came after a point the page has, and nonsense refused in OpenAI's shape.
        newer = httpx.get(e.url + "/api/history", params={"since": last["t"]},
                          headers=admin).json()["points"]
        assert all(p["t"] > last["t"] for p in newer)
        bad = httpx.get(e.url + "/api/history?since=yesterday", headers=admin)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
        assert httpx.get(e.url + "/api/history").status_code == 401
        # A key limited to one model: that model, its own row, no machine readings.
        theirs = httpx.get(e.url + "/api/history",
                           headers={"Authorization": f"Bearer {named}"}).json()["points"]
        assert theirs and all(set(p["models"]) == {"general"} and set(p["keys"]) <= {"ci"}
                              and p["gpus"] == [] and p["cpus"] == {} for p in theirs)

        with browser_page() as page:
            page.goto(e.url + "/")
            page.fill("#key-input", KEY)
            page.click("#key-form button")
            expect(page.locator("#app")).to_be_visible()
            page.click("#tab-status")
            page.wait_for_selector("#chart-req path.line")
            # The first drawing, from one request: points the proxy kept before the view
            # opened (the page alone would have one).
            first = drawn(page, "req")
            assert set(first) == {"coder", "general"} and min(first.values()) >= 3, first
            assert min(drawn(page, "tok").values()) >= 2
            for chart, unit in (("req", "req/s"), ("tok", "tokens/s"), ("ttft", "ms"),
                                ("kv", "%"), ("mem", "GiB"), ("load", "requests"),
                                ("cpu", "cores")):
                labels = texts(page, chart)
                assert unit in labels and "now" in labels, (chart, labels)
                assert any(re.fullmatch(r"−\d+ s", t) for t in labels), (chart, labels)
                assert drawn(page, chart), chart  # a line, not an empty frame
            assert page.locator("#chart-gpu").count() == 0  # no GPU on this machine
            expect(page.locator("#chart-req figcaption")).to_have_text("Requests (req/s)")
            expect(page.locator("#history-note")).to_contain_text("a point every 2 s")
            # Each key's last minute beside its totals; each model's processes (a CPU
            # machine: no GPU table).
            admin_row = page.locator("#keys tbody tr", has_text="admin")
            expect(admin_row).to_have_count(1)
            assert int(admin_row.locator("td").nth(1).inner_text().replace(",", "")) > 0
            expect(page.locator("#machine thead")).to_contain_text("CPU (cores busy)")
            expect(page.locator("#machine tbody tr")).to_have_count(2)
            page.set_viewport_size({"width": 1280, "height": 1500})  # the whole view
            page.screenshot(path="/tmp/webhist.png", full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-history.png"), full_page=True)

        with browser_page() as page:
            page.goto(e.url + "/")
            page.fill("#key-input", named)
            page.click("#key-form button")
            expect(page.locator("#app")).to_be_visible()
            page.click("#tab-status")
            page.wait_for_selector("#chart-req path.line")
            assert set(drawn(page, "req")) == {"general"}
            assert set(drawn(page, "tok")) == {"general"}
            expect(page.locator("#backends tbody tr")).to_have_count(1)
            expect(page.locator("#keys tbody tr")).to_have_count(1)
            expect(page.locator("#keys tbody tr td").first).to_have_text("ci")
            expect(page.locator("#machine-wrap")).to_be_hidden()
            assert page.locator("#chart-cpu").count() == 0
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
        e.run("down")


def test_on_a_gpu_machine_the_view_draws_the_cards(site, page):
    """No GPU here: the proxy's answer is replaced by one from a machine with two cards
    (as the sampler writes it), and the page draws those."""
    import json

    from playwright.sync_api import expect

    e, _, _ = site
    now = time.time()
    points = [{"t": now - 20 + 2 * i, "window_s": 2.0 * i, "keys": {}, "cpus": {},
               "models": {"general": {"name": "alpha", "state": "RUNNING", "req_s": 1.0}},
               "gpus": [{"gpu": "0", "used_bytes": 8e10, "total_bytes": 8.5e10,
                         "util": 0.05 * i, "temp_c": 60.0, "power_w": 300.0},
                        {"gpu": "1", "used_bytes": 1e9, "total_bytes": 8.5e10, "util": 0.0}]}
              for i in range(10)]

    def history(route):  # everything first, then nothing new
        new = [] if "since=" in route.request.url else points
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"now": now, "interval_s": 2.0, "span_s": 600.0, "points": new}))

    page.route("**/api/history*", history)
    page.goto(e.url + "/")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.click("#tab-status")
    page.wait_for_selector("#chart-gpu path.line")
    assert drawn(page, "gpu") == {"GPU 0": 10, "GPU 1": 10}
    assert "%" in texts(page, "gpu") and page.locator("#chart-cpu").count() == 0
    expect(page.locator("#machine thead")).to_contain_text("Busy")
    expect(page.locator("#machine tbody tr").first).to_contain_text("74.51 GiB of 79.16 GiB")
    expect(page.locator("#machine tbody tr").first).to_contain_text("45 %")


def test_the_page_can_be_turned_off(tmp_path):
    up = start_upstream("alpha")
    e = Env(tmp_path)
    e.url_models({"general": ("alpha", up.url)}, proxy="web = false")
    try:
        assert e.run("up", "--timeout", "30").returncode == 0
        assert httpx.get(e.url + "/").status_code == 404
        assert httpx.get(e.url + "/health").status_code == 200
    finally:
        e.run("down")
        up.stop()


if not os.path.exists(CHROMIUM):  # the set-up installs it (scripts/setup.sh --dev)
    raise RuntimeError(f"no Chromium at {CHROMIUM}: run `bash scripts/setup.sh --dev`")
