"""The backends' own metrics merged into the proxy's exposition: every sample labelled with
its model, each family's comments once, valid text format (read back with
prometheus_client's own parser), garbage refused."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.proxy.federate import Garbage, merge, split

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 30.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="m"} 1.7e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 1.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 3.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 3.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 1.5
process_open_fds 12.0
"""


def test_two_backends_merge_into_one_valid_exposition():
    text = merge([split(VLLM, "coder"), split(VLLM, 'gen"eral')])
    parsed = list(text_string_to_metric_families(text))
    fams = {f.name: f for f in parsed}
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    running = fams["vllm:num_requests_running"]
    assert {s.labels["model"] for s in running.samples} == {"coder", 'gen"eral'}
    assert running.samples[0].labels == {"model": "coder", "engine": "0", "model_name": "m"}
    latency = fams["vllm:e2e_request_latency_seconds"]
    assert latency.type == "histogram" and len(latency.samples) == 8
    # (The parser makes a family of each untyped sample.)
    assert {s.labels["model"] for f in parsed if f.name == "process_open_fds"
            for s in f.samples} == {"coder", 'gen"eral'}
    # Every sample of the input is there, once per backend.
    samples = [ln for ln in VLLM.splitlines() if not ln.startswith("#")]
    assert sum(len(f.samples) for f in parsed) == 2 * len(samples)


@pytest.mark.parametrize("garbage", ["<html>not metrics</html>", "a b c d e",
                                     "vllm:x{unclosed 1"])
def test_what_is_not_the_text_format_is_refused(garbage):
    with pytest.raises(Garbage):
        split(garbage + "\n", "coder")


def test_nothing_merges_to_nothing():
    assert merge([]) == "" and merge([split("", "coder")]) == ""


def test_a_backend_that_drips_its_answer_is_left_out_at_the_deadline():
    """httpx's timeout is per read: a server sending a line every 0.1 s would hold a scrape
    for as long as it likes. The deadline covers the whole answer."""
    import asyncio
    import time

    import httpx

    from llmctl.proxy.federate import scrape

    class Drip(httpx.AsyncByteStream):
        async def __aiter__(self):
            for i in range(100):
                await asyncio.sleep(0.1)
                yield f"vllm:num_requests_running{{engine=\"{i}\"}} 0.0\n".encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "slow":
            return httpx.Response(200, stream=Drip())
        return httpx.Response(200, text=VLLM)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            t0 = time.monotonic()
            text, failed = await scrape(c, [("a", "http://slow"), ("b", "http://fast")], 0.5)
            return time.monotonic() - t0, text, failed

    took, text, failed = asyncio.run(go())
    assert failed == ["a"] and 'model="b"' in text and 'model="a"' not in text
    assert took < 2  # the deadline (0.5 s), not the ten seconds the drip would take
