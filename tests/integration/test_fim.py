"""Fill-in-the-middle through the proxy, against the stand-in upstream: the exact prompt
forwarded per family, `suffix` never forwarded, stop strings merged, streaming and not,
llama.cpp's /infill, and the 400 for a model without a template."""

from __future__ import annotations

import json

import httpx
import pytest

from llmctl import fim

from .conftest import KEY, FakeBackend, model_for

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def proxy(upstream, make_proxy):
    plain = FakeBackend(model_for(upstream, key="general", name="fake-coder", aliases=()))
    p = make_proxy([plain])
    p.backend = plain
    return p


def forwarded(upstream) -> dict:
    return json.loads(upstream.stats()["last_body"])


@pytest.mark.parametrize("family", fim.FAMILIES)
@pytest.mark.parametrize("prefix, suffix", [("def añadir(x):\n    ", "\n    return y  # ✓\n"),
                                            ("", "tail"), ("head", "")])
def test_each_family_is_rendered_and_suffix_never_reaches_vllm(proxy, upstream, family,
                                                                prefix, suffix):
    proxy.backend.fim = family
    r = httpx.post(proxy.url + "/v1/completions", headers=AUTH, json={
        "model": "fake-coder", "prompt": prefix, "suffix": suffix, "max_tokens": 2,
        "stop": ["\n\n"]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "tok0 tok1 "  # the answer, unchanged
    sent = forwarded(upstream)
    assert "suffix" not in sent
    assert sent["prompt"] == fim.TEMPLATES[family].render(prefix, suffix)
    # The client's own stop first, then the family's, within the limit of 4 vLLM enforces.
    assert sent["stop"] == ["\n\n", *fim.TEMPLATES[family].stop][:fim.MAX_STOP]


def test_streaming_fim(proxy, upstream):
    proxy.backend.fim = "deepseek"
    with httpx.stream("POST", proxy.url + "/v1/completions", headers=AUTH, json={
            "model": "fake-coder", "prompt": "a", "suffix": "b", "max_tokens": 3,
            "stream": True}) as r:
        events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "data: [DONE]" and len(events) == 4
    assert forwarded(upstream)["prompt"] == "<｜fim▁begin｜>a<｜fim▁hole｜>b<｜fim▁end｜>"


def test_a_model_without_a_template_gets_a_400_that_says_how_to_set_one(proxy, upstream):
    seen = upstream.stats()["seen"]
    r = httpx.post(proxy.url + "/v1/completions", headers=AUTH, json={
        "model": "fake-coder", "prompt": "a", "suffix": "b"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "fim_not_supported" and err["param"] == "suffix"
    assert "[models.general]" in err["message"] and "fim = " in err["message"]
    assert upstream.stats()["seen"] == seen  # vLLM's own refusal is never what the IDE sees
    r = httpx.post(proxy.url + "/infill", headers=AUTH, json={"input_prefix": "a"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "fim_not_supported"


def test_infill_is_mapped_both_ways(proxy, upstream):
    proxy.backend.fim = "qwen"
    r = httpx.post(proxy.url + "/infill", headers=AUTH, json={
        "input_prefix": "x = ", "input_suffix": "\ny = 2", "n_predict": 2,
        "input_extra": [{"filename": "a.py", "text": "import os\n"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"content": "tok0 tok1 ", "stop": True, "model": "fake-coder",
                        "tokens_predicted": 2, "tokens_evaluated": 3}
    sent = forwarded(upstream)
    assert sent["model"] == "fake-coder" and sent["max_tokens"] == 2
    assert sent["prompt"] == ("<|file_sep|>a.py\nimport os\n<|fim_prefix|>x = "
                              "<|fim_suffix|>\ny = 2<|fim_middle|>")
    with httpx.stream("POST", proxy.url + "/infill", headers=AUTH, json={
            "input_prefix": "x", "input_suffix": "", "n_predict": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    assert "".join(c["content"] for c in chunks) == "tok0 tok1 tok2 "
    # One last event says stop (vLLM ends with a finish reason, then the usage: one event).
    assert [c["stop"] for c in chunks] == [False, False, True]
    assert chunks[-1]["tokens_predicted"] == 3


def test_models_say_which_take_fim(proxy):
    proxy.backend.fim = "starcoder"
    data = httpx.get(proxy.url + "/v1/models", headers=AUTH).json()["data"]
    assert data[0]["fim"] == "starcoder"
