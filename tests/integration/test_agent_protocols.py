"""The agents' APIs through the proxy, driven by the real SDKs: Anthropic's Messages (what
Claude Code speaks) and OpenAI's Responses (what Codex speaks), with the same keys,
limits, usage and routing as chat completions, and errors each SDK turns into its own
exception types."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from llmctl import keys

from .conftest import KEY, FakeBackend, model_for, start_upstream

AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def pair(make_proxy, tmp_path, monkeypatch):
    """Two models on two stand-ins that keep their responses (as vLLM with
    VLLM_ENABLE_RESPONSES_API_STORE=1), a named key with limits, the proxy."""
    monkeypatch.setenv("VLLM_ENABLE_RESPONSES_API_STORE", "1")
    ups = [start_upstream(name, "--max-model-len", "2048")
           for name in ("fake-coder", "fake-general")]
    path = tmp_path / "keys.toml"
    named, _ = keys.add("agent", p=path, rpm=1000)
    limited, _ = keys.add("slow", p=path, rpm=1)
    backends = [FakeBackend(model_for(u, key=k), served={"max_model_len": 2048})
                for u, k in zip(ups, ("coder", "general"), strict=True)]
    p = make_proxy(backends, keys_path=path)
    p.ups, p.named, p.limited = ups, named, limited
    yield p
    for u in ups:
        u.stop()


def claude(p, key: str = KEY, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url, api_key=key, max_retries=0, **kw)


# ── Anthropic Messages ──

@pytest.mark.parametrize("form", ["x-api-key", "bearer"])
def test_messages_with_the_anthropic_sdk_either_key_form(pair, form):
    client = anthropic.Anthropic(base_url=pair.url, max_retries=0,
                                 **({"api_key": pair.named} if form == "x-api-key"
                                    else {"auth_token": pair.named}))
    msg = client.messages.create(model="fake-coder", max_tokens=3, messages=HI)
    assert msg.content[0].text == "tok0 tok1 tok2 " and msg.usage.output_tokens == 3
    sent = pair.ups[0].stats()["last_headers"]
    # The client's key never goes upstream, in either form.
    assert pair.named not in json.dumps(sent)
    with client.messages.stream(model="fake-general", max_tokens=4, messages=HI) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 " and final.usage.output_tokens == 4
    n = client.messages.count_tokens(model="fake-coder", messages=HI)
    assert n.input_tokens > 0


def test_messages_usage_counts_for_the_key(pair):
    client = claude(pair, pair.named)
    client.messages.create(model="fake-coder", max_tokens=5, messages=HI)
    with client.messages.stream(model="fake-coder", max_tokens=2, messages=HI) as s:
        s.until_done()
    metrics = httpx.get(pair.url + "/metrics", headers=AUTH).text
    assert 'llmctl_key_tokens_total{key="agent",kind="completion",model="fake-coder"} 7.0' \
        in metrics
    assert 'llmctl_key_tokens_total{key="agent",kind="prompt",model="fake-coder"} 6.0' in metrics


def test_the_query_string_claude_code_adds_is_passed_on(pair):
    r = httpx.post(pair.url + "/v1/messages?beta=true", headers={"x-api-key": KEY},
                   json={"model": "fake-coder", "max_tokens": 1, "messages": HI})
    assert r.status_code == 200, r.text
    assert pair.ups[0].stats()["last_path"] == "/v1/messages?beta=true"


def test_errors_on_messages_are_the_anthropic_sdks_own(pair):
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(pair, "sk-wrong").messages.create(model="fake-coder", max_tokens=1, messages=HI)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        claude(pair).messages.create(model="nope", max_tokens=1, messages=HI)
    assert "fake-coder" in e.value.body["error"]["message"]  # the known models
    slow = claude(pair, pair.limited)
    slow.messages.create(model="fake-coder", max_tokens=1, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as e:
        slow.messages.create(model="fake-coder", max_tokens=1, messages=HI)
    assert e.value.response.headers["retry-after"]
    # A backend's own error comes in the same shape.
    with pytest.raises(anthropic.BadRequestError):
        claude(pair).messages.create(model="fake-coder", max_tokens=1, messages=HI,
                                     extra_body={"fail_with": 400})


def test_a_model_stopped_is_an_anthropic_error_that_says_so(pair):
    pair.backends[0].state = "STOPPED"
    pair.backends[0].held = True
    with pytest.raises(anthropic.InternalServerError) as e:
        claude(pair).messages.create(model="fake-coder", max_tokens=1, messages=HI)
    assert e.value.status_code == 503 and e.value.body["type"] == "error"
    assert "llmctl start coder" in e.value.body["error"]["message"]


def test_a_forced_tool_call_through_messages(pair):
    tool = {"name": "read_file", "description": "read a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}
    for choice in ({"type": "any"}, {"type": "tool", "name": "read_file"}):
        msg = claude(pair).messages.create(model="fake-coder", max_tokens=50, messages=HI,
                                           tools=[tool], tool_choice=choice)
        assert msg.stop_reason == "tool_use" and msg.content[0].name == "read_file"


# ── output budgets ──

@pytest.mark.parametrize("path,field,body", [
    ("/v1/messages", "max_tokens", {"messages": HI}),
    ("/v1/chat/completions", "max_tokens", {"messages": HI}),
    ("/v1/chat/completions", "max_completion_tokens", {"messages": HI}),
    ("/v1/responses", "max_output_tokens", {"input": "hi"}),
])
def test_an_agents_32000_output_budget_is_lowered_to_the_context_and_said(pair, path, field,
                                                                          body):
    """vLLM refuses an output budget over max_model_len (the stand-in too); the proxy lowers
    it to the context, which vLLM then fits beside the prompt by itself."""
    direct = httpx.post(pair.ups[0].url + path, json={"model": "fake-coder", field: 32000,
                                                      **body})
    assert direct.status_code == 400 and "max_model_len" in direct.text
    r = httpx.post(pair.url + path, headers=AUTH, json={"model": "fake-coder", field: 32000,
                                                        **body})
    assert r.status_code == 200, r.text
    assert r.headers["x-llmctl-capped"] == f"{field}=32000->2048"
    assert json.loads(pair.ups[0].stats()["last_body"])[field] == 2048


# ── OpenAI Responses ──

def test_responses_with_the_openai_sdk_and_calls_by_id_reach_their_backend(pair):
    client = openai.OpenAI(base_url=pair.url + "/v1", api_key=pair.named, max_retries=0)
    made = client.responses.create(model="fake-general", input="hi", max_output_tokens=3)
    assert made.output_text == "tok0 tok1 tok2 " and made.usage.output_tokens == 3
    with client.responses.stream(model="fake-general", input="hi",
                                 max_output_tokens=2) as s:
        streamed = s.get_final_response()
    assert streamed.output_text == "tok0 tok1 "
    # By id: to the backend that made it (the general model's stand-in), not the other.
    got = client.responses.retrieve(streamed.id)
    assert got.id == streamed.id
    assert pair.ups[1].stats()["by_id"] == 1 and pair.ups[0].stats()["by_id"] == 0
    cancelled = client.responses.cancel(made.id)
    assert cancelled.status == "cancelled"
    # Another key cannot address it; an unknown id is a 404 that says why.
    other = openai.OpenAI(base_url=pair.url + "/v1", api_key=pair.limited, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve("resp_nope")
    assert "made it" in e.value.body["message"]
    # Usage of both counts for the key.
    metrics = httpx.get(pair.url + "/metrics", headers=AUTH).text
    assert 'llmctl_key_tokens_total{key="agent",kind="completion",model="fake-general"} 5.0' \
        in metrics


@pytest.mark.parametrize("method,suffix", [("DELETE", ""), ("GET", "/input_items"),
                                           ("POST", "")])
def test_responses_calls_vllm_lacks_are_404_not_supported(pair, method, suffix):
    made = httpx.post(pair.url + "/v1/responses", headers=AUTH,
                      json={"model": "fake-coder", "input": "hi", "max_output_tokens": 1})
    rid = made.json()["id"]
    r = httpx.request(method, f"{pair.url}/v1/responses/{rid}{suffix}", headers=AUTH)
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "not_supported" and set(err) == {"message", "type", "param", "code"}
