"""One scrape target: each running backend's own `/metrics` (vLLM's engine series), labelled
with the llmctl model name and merged into the proxy's exposition, so Prometheus scrapes
the proxy alone.

May import: nothing of the package (httpx). The merge works on the text format line by
line — no parser builds objects per sample — so one scrape of two vLLM servers costs the
event loop about a millisecond (tests/perf/bench_proxy.py measures it): each family's
`# HELP`/`# TYPE` once, then its samples from every backend, each with `model="…"`
added. A backend that does not answer within the timeout, fails, or sends something
that is not the text format is left out of that scrape and counted
(`llmctl_backend_scrape_failures_total`), never an error for the whole scrape. The
timeout bounds each backend's whole answer, not each read: one that sends a byte now
and then cannot hold a scrape (or the status history's sampler) past it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

import httpx

# A sample line: a metric name, optional labels, a value, an optional timestamp.
_SAMPLE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?[ \t]+\S+(?:[ \t]+-?\d+)?")
_NAME_END = re.compile(r"[{ \t]")
# Histogram and summary samples belong to their family by these suffixes.
_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total", "_info", "_gcount", "_gsum")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Garbage(ValueError):
    """What a backend sent is not Prometheus's text format."""


def split(text: str, model: str) -> dict[str, tuple[list[str], list[str]]]:
    """One backend's exposition as family → (its comment lines, its samples with the
    `model` label added), in the order they came. Raises Garbage."""
    label = f'model="{_escape(model)}"'
    families: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] | None = None
    current_name = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if name != current_name:
                    current_name = name
                    current = families.setdefault(name, ([], []))
                current[0].append(line)  # type: ignore[index]
            continue
        if not _SAMPLE.fullmatch(line):
            raise Garbage(line[:80])
        end = _NAME_END.search(line)
        assert end is not None
        name = line[:end.start()]
        if current is None or not (name == current_name or (
                name.startswith(current_name) and name[len(current_name):] in _SUFFIXES)):
            # A sample with no comment lines before it: a family of its own.
            current_name = name
            current = families.setdefault(name, ([], []))
        if line[end.start()] == "{":
            rest = line[end.start() + 1:]
            line = f"{name}{{{label}{'' if rest.startswith('}') else ','}{rest}"
        else:
            line = f"{name}{{{label}}}{line[end.start():]}"
        current[1].append(line)
    return families


def merge(parts: Iterable[dict[str, tuple[list[str], list[str]]]]) -> str:
    """The backends' families together: each family's comment lines once (the first
    backend's), then the samples of all."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for fams in parts:
        for name, (comments, samples) in fams.items():
            have = out.get(name)
            if have is None:
                out[name] = (list(comments), list(samples))
            else:
                have[1].extend(samples)
    lines: list[str] = []
    for comments, samples in out.values():
        lines += comments
        lines += samples
    return "\n".join(lines) + ("\n" if lines else "")


async def scrape(client: httpx.AsyncClient, targets: list[tuple[str, str]],
                 timeout: float) -> tuple[str, list[str]]:
    """The backends' metrics, merged, and the models left out of this scrape.
    `targets`: (model name, its server's base URL)."""

    async def one(model: str, base: str) -> dict[str, tuple[list[str], list[str]]]:
        # httpx's timeout is per read; the deadline is for the whole answer.
        async with asyncio.timeout(timeout):
            r = await client.get(base.rstrip("/") + "/metrics", timeout=timeout)
        r.raise_for_status()
        return split(r.text, model)

    results = await asyncio.gather(*(one(m, u) for m, u in targets), return_exceptions=True)
    good, failed = [], []
    for (model, _), res in zip(targets, results, strict=True):
        if isinstance(res, BaseException):
            if isinstance(res, asyncio.CancelledError):
                raise res
            failed.append(model)
        else:
            good.append(res)
    return merge(good), failed
