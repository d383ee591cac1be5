"""`status` as a user reads it, rendered from a report (no stack needed)."""

import io

import pytest
from rich.console import Console

from llmctl import ui


def render(backends: dict, width: int = 200) -> str:
    buf = io.StringIO()
    old = ui.out
    ui.out = Console(file=buf, width=width, no_color=True, highlight=False)
    try:
        ui.status_table({"daemon": {"running": True, "pid": 1, "uptime_s": 5},
                         "proxy_url": "http://127.0.0.1:8080", "device": "cpu",
                         "backends": backends, "leftovers": []})
    finally:
        ui.out = old
    return buf.getvalue()


def row(used: int, planned: int) -> dict:
    return {"name": "m", "state": "RUNNING", "port": 8000, "rss_bytes": used,
            "planned_bytes": planned}


GIB = 2**30


@pytest.mark.parametrize("used, said", [(3.27 * GIB, False), (3.6 * GIB, True)])
def test_memory_over_the_plan_is_mentioned_only_past_the_margin(used, said):
    text = render({"coder": row(int(used), int(3.25 * GIB))})
    assert ("more than the planned 3.25 GiB" in text) is said
    if said:
        assert "coder: uses 3.60 GiB, 11% more" in text and "10% margin" in text
