"""The only rich importer: consoles, tables, errors. stdout is data, stderr is talk.

May import: errors, lifecycle. Respects NO_COLOR (rich does).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from .lifecycle import State

# One colour per state, for every view that shows one.
STATE_COLORS = {State.RUNNING: "green", State.FATAL: "red", State.BACKOFF: "yellow",
                State.STARTING: "cyan", State.ORPHANED: "red"}

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


# soft_wrap: long lines (URLs, curl commands) are left whole for the terminal to wrap,
# so they can be copied; rich would break them at the console width.
def say(message: str) -> None:
    err.print(message, markup=False, soft_wrap=True)


def note(message: str) -> None:
    err.print(f"[dim]{_escape(message)}[/dim]", soft_wrap=True)


def ok(message: str) -> None:
    err.print(f"[green]✓[/green] {_escape(message)}", soft_wrap=True)


def fail(message: str, hint: str | None = None) -> None:
    err.print(f"[red]error:[/red] {_escape(message)}", soft_wrap=True)
    if hint:
        err.print(f"[yellow]hint:[/yellow] {_escape(hint)}", soft_wrap=True)


def data(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def text(s: str) -> None:
    sys.stdout.write(s if s.endswith("\n") else s + "\n")


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def _bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def show_status(st: dict[str, Any], *, as_json: bool) -> None:
    """`status`: what was cleaned on stderr, then the data as JSON or a table."""
    for line in st.get("cleaned") or []:
        note(line)
    if as_json:
        data(st)
    else:
        status_table(st)


def status_table(st: dict[str, Any]) -> None:
    d = st["daemon"]
    if d["running"]:
        out.print(f"daemon  running (pid {d['pid']}, up {_age(d['uptime_s'])})  "
                  f"proxy {st['proxy_url']}  device {st['device']}")
    else:
        out.print("daemon  not running" + (f"  (last error: {d['error']})" if d.get("error") else ""))
    if st["backends"]:
        t = Table(box=None, pad_edge=False)
        for col in ("MODEL", "NAME", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "MEMORY",
                    "PLANNED", "IN FLIGHT"):
            t.add_column(col)
        for key, b in st["backends"].items():
            color = STATE_COLORS.get(b["state"], "")
            state = f"[{color}]{b['state']}[/{color}]" if color else b["state"]
            t.add_row(key, b.get("name") or "-", state, str(b.get("pid") or "-"),
                      str(b.get("port") or b.get("url") or "-"), _age(b.get("uptime_s")),
                      str(b.get("restarts", 0)),
                      _bytes(b.get("gpu_bytes") if b.get("gpu_bytes") is not None
                             else b.get("rss_bytes")),
                      _bytes(b.get("planned_bytes")), str(b.get("in_flight", 0)))
        out.print(t)
        for key, b in st["backends"].items():
            if b.get("reason") and b["state"] != State.RUNNING:
                out.print(f"  {key}: {_escape(b['reason'])}")
            for line in b.get("log_tail") or []:
                out.print(f"    [dim]{_escape(line)}[/dim]")
    if st["leftovers"]:
        out.print(f"[red]left over from a dead daemon:[/red] process groups "
                  f"{', '.join(map(str, st['leftovers']))} — `llmctl down` cleans them")


class StartProgress:
    """`up`'s live view: per backend, state, phase from its log, elapsed, estimate.

    On a terminal it redraws in place; otherwise it prints a line per change."""

    def __init__(self) -> None:
        self.live: Any = None
        self.seen: dict[str, tuple[Any, ...]] = {}

    def __enter__(self) -> StartProgress:
        if err.is_terminal:
            from rich.live import Live

            self.live = Live(console=err, refresh_per_second=4, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()

    @staticmethod
    def _line(key: str, b: dict[str, Any]) -> tuple[str, str]:
        import time

        state = b.get("state") or "?"
        detail = ""
        if state == State.STARTING:
            elapsed = time.time() - b["started_at"] if b.get("started_at") else 0
            est = b.get("expected_start_s")
            detail = f"{b.get('phase') or 'starting'}  {elapsed:.0f}s" + (
                f" (last start took {est:.0f}s)" if est else "")
        elif state == State.RUNNING and b.get("last_start_s"):
            detail = f"ready in {b['last_start_s']:.0f}s"
        elif b.get("reason"):
            detail = b["reason"]
        return state, detail

    def update(self, stack: dict[str, Any]) -> None:
        backends = stack.get("backends") or {}
        if self.live is not None:
            t = Table(box=None, show_header=False, pad_edge=False)
            for key, b in backends.items():
                state, detail = self._line(key, b)
                c = STATE_COLORS.get(state, "white")
                t.add_row(f"  {key}", f"[{c}]{state}[/{c}]", _escape(detail))
            self.live.update(t)
            return
        for key, b in backends.items():
            sig = (b.get("state"), b.get("phase"), b.get("reason"))
            if self.seen.get(key) != sig:
                self.seen[key] = sig
                state, detail = self._line(key, b)
                err.print(f"  {key:<10} {state:<9} {_escape(detail)}")
