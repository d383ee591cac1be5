"""`llmctl check` against a stack of `url` models on local stand-in servers: every row
passes; then a wrong key and a backend that is down fail the right rows, exit 1."""

from __future__ import annotations

import json

import pytest

from .conftest import start_upstream
from .test_cli_stack import Env


@pytest.fixture
def cenv(tmp_path):
    ups = [start_upstream("fake-coder"), start_upstream("fake-general")]
    e = Env(tmp_path)
    e.url_models({"coder": ("fake-coder", ups[0].url), "general": ("fake-general", ups[1].url)})
    assert e.run("up", "--timeout", "30").returncode == 0
    yield e, ups
    e.run("down")
    for u in ups:
        u.stop()


def rows(r) -> dict[str, dict]:
    return {x["name"]: x for x in json.loads(r.stdout)["checks"]}


def test_every_row_passes_on_a_healthy_stack(cenv):
    e, _ = cenv
    r = e.run("check", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all" in r.stderr and "checks passed" in r.stderr and "FAIL" not in r.stdout
    got = rows(e.run("check", "--json", timeout=300))
    for name in ("vLLM and transformers import", "proxy answers /health", "wrong key refused",
                 "key accepted (/v1/models)", "chat: fake-coder", "chat: fake-general",
                 "streaming: fake-coder", "unknown model is 404", "malformed body is 400"):
        assert got[name]["ok"] is True, got[name]
    assert got["ports"]["ok"] is None  # held by the running stack


def test_a_wrong_key_and_a_backend_down_fail_the_right_rows(cenv):
    e, ups = cenv
    r = e.run("check", "--api-key", "sk-not-it", "--json", timeout=300)
    assert r.returncode == 1
    got = rows(r)
    assert got["key accepted (/v1/models)"]["ok"] is False
    assert got["proxy answers /health"]["ok"] is True  # the rest is told apart
    ups[1].stop()
    r = e.run("check", "--json", timeout=300)
    assert r.returncode == 1
    got = rows(r)
    assert got["chat: fake-general"]["ok"] is False and got["chat: fake-coder"]["ok"] is True
    table = e.run("check", timeout=300)
    assert "FAIL" in table.stdout and "checks failed: chat: fake-general" in table.stderr
