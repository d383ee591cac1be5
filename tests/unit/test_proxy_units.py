from llmctl.proxy.api import ipaddress_is_loopback
from llmctl.proxy.callers import fingerprint
from llmctl.proxy.stream import usage as _usage


def test_loopback_detection():
    for h in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"):
        assert ipaddress_is_loopback(h)
    for h in ("10.0.0.2", "192.168.1.4", "", "localhost-ish", "::ffff:10.0.0.1"):
        assert not ipaddress_is_loopback(h)


def test_usage_from_the_tail_of_an_answer():
    tail = b'..."usage":{"prompt_tokens":42,"total_tokens":170,"completion_tokens":128}}'
    assert _usage(tail) == (42, 128)
    assert _usage(b'data: {"choices": []}') is None


def test_fingerprint_is_short_and_stable():
    assert fingerprint("sk-a") == fingerprint("sk-a") != fingerprint("sk-b")
    assert len(fingerprint("sk-a")) == 8 and "sk-a" not in fingerprint("sk-a")


def test_metrics_need_an_admin_key_from_anywhere():
    import asyncio

    import httpx

    from llmctl import config
    from llmctl.proxy import Proxy
    from llmctl.supervisor import Supervisor

    app = Proxy([], config.ProxyConfig(api_keys=("sk-k",)), Supervisor([]))

    async def get(client_host, headers=None):
        t = httpx.ASGITransport(app=app, client=(client_host, 5000))
        async with httpx.AsyncClient(transport=t, base_url="http://proxy") as c:
            return await c.get("/metrics", headers=headers or {})

    assert asyncio.run(get("127.0.0.1")).status_code == 401
    assert asyncio.run(get("10.1.2.3")).status_code == 401
    assert asyncio.run(get("10.1.2.3", {"Authorization": "Bearer sk-k"})).status_code == 200


def test_a_group_is_signalled_only_when_it_is_still_ours():
    import os

    from llmctl import procs
    from llmctl.report import ManagedReport, StackReport
    from llmctl.stack import ours

    me = os.getpid()
    here = StackReport(boot_id=procs.boot_id())

    def group(pgid, start):
        return ManagedReport("m", pgid=pgid, pgid_start=start)

    assert ours(here, group(me, procs.start_ticks(me)))
    assert ours(here, group(999_999_999, 5))  # leader gone: its children
    assert not ours(here, group(me, procs.start_ticks(me) + 1))  # reused
    assert not ours(StackReport(boot_id="another-boot"), group(me, None))
    assert not ours(here, group(None, None))
