"""The daemon's background jobs: each survives its own failures."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llmctl.daemon import every


def test_a_job_that_fails_is_logged_once_and_run_again(caplog):
    results = iter([ValueError("disk"), ValueError("disk"), None, OSError("fd"), None])
    runs = []

    async def job():
        runs.append(1)
        r = next(results)
        if r is not None:
            raise r

    async def sleep(_s):
        if len(runs) == 5:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    caplog.set_level(logging.INFO, "llmctl.daemon")
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(every(1.0, "the job", job, sleep=sleep))
    assert len(runs) == 5  # it went on after each failure
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["the job failed (ValueError: disk); trying again every 1s",
                     "the job works again",
                     "the job failed (OSError: fd); trying again every 1s",
                     "the job works again"]
