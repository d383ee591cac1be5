"""`status` as a user reads it, rendered from a report (no stack needed)."""

import io

import pytest
from rich.console import Console

from llmctl import ui
from llmctl.report import BackendStatus, DaemonStatus, ManagedReport, StackStatus


def render(backends: dict, width: int = 200) -> str:
    buf = io.StringIO()
    ui.status_table(StackStatus(DaemonStatus(True, 1, 5), "http://127.0.0.1:8080", "cpu",
                                backends), Console(file=buf, width=width, no_color=True,
                                                   highlight=False))
    return buf.getvalue()


def row(used: int, planned: int) -> BackendStatus:
    return BackendStatus(ManagedReport("m", "RUNNING", port=8000, planned_bytes=planned),
                         True, rss_bytes=used)


GIB = 2**30


@pytest.mark.parametrize("used, said", [(3.27 * GIB, False), (3.6 * GIB, True)])
def test_memory_over_the_plan_is_mentioned_only_past_the_margin(used, said):
    text = render({"coder": row(int(used), int(3.25 * GIB))})
    assert ("more than the planned 3.25 GiB" in text) is said
    if said:
        assert "coder: uses 3.60 GiB, 11% more" in text and "10% margin" in text
