"""Time as llmctl's logic sees it: one seam, passed to the constructors that need it.

May import: nothing of the package. The supervisor (starts, backoff, idle stops) and the
proxy (rate limits, key expiry, usage times) read time only through a `Clock`, so tests
pass one that never sleeps and give exact answers. Latency measurements use
`time.perf_counter` directly: they measure, they decide nothing.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
