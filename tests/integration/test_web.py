"""The web page, in a real headless browser (Debian's Chromium driven by Playwright),
against a real daemon whose models are `url` backends on local stand-in upstreams; and
its security headers and path handling over plain HTTP."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture
def page(site):
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
    page.wait_for_timeout(2500)  # a second sample, so the charts have a rate to draw
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
