"""The only rich importer: consoles, tables, errors. stdout is data, stderr is talk.

May import: errors, lifecycle, plan, report. Respects NO_COLOR (rich does).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from .lifecycle import State
from .plan import KV_TOLERANCE, cores_spec, kv_difference
from .report import BackendReport, StackReport, StackStatus

# Memory used beyond the plan by less than this is normal (allocator slack, the
# tokenizer, Python objects): `status` says nothing of it.
USED_MARGIN = 0.10

# One colour per state, for every view that shows one.
STATE_COLORS = {State.RUNNING: "green", State.FATAL: "red", State.BACKOFF: "yellow",
                State.STARTING: "cyan", State.ORPHANED: "red", State.SLEEPING: "blue"}

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


def show_status(st: StackStatus, *, as_json: bool) -> None:
    """`status`: what was cleaned on stderr, then the data as JSON or a table."""
    for line in st.cleaned:
        note(line)
    if as_json:
        data(st.as_dict())
    else:
        status_table(st)


def status_table(st: StackStatus, console: Console | None = None) -> None:
    con = console or out
    d = st.daemon
    if d.running:
        con.print(f"daemon  running (pid {d.pid}, up {_age(d.uptime_s)})  "
                  f"proxy {st.proxy_url}  device {st.device}")
    else:
        con.print("daemon  not running" + (f"  (last error: {d.error})" if d.error else ""))
    if st.backends:
        rows = []
        import time

        now = time.time()
        demand = any(s.report.start == "on-demand" or s.report.group
                     for s in st.backends.values())
        for key, s in st.backends.items():
            b = s.report
            color = STATE_COLORS.get(b.state, "")
            state = str(b.state)
            if b.resting and state == State.STOPPED:
                state += " (on demand)"
            last = b.last_request_at
            planned = getattr(b, "kv_tokens_planned", None)
            reported = getattr(b, "kv_tokens_reported", None)
            row = {
                "MODEL": _escape(key), "NAME": _escape(b.name or "-"),
                "STATE": f"[{color}]{_escape(state)}[/{color}]" if color else _escape(state),
                "PORT": _escape(str(b.port or b.url or "-")),
                "CONTEXT": f"{b.max_model_len:,}" if b.max_model_len else "-",
                "MEMORY": _bytes(s.used_bytes),
                "UPTIME": _age(s.uptime_s), "IN FLIGHT": str(b.in_flight),
                "LAST REQUEST": f"{_age(max(now - last, 0))} ago" if last else "-"}
            if demand:
                row["IDLE STOP"] = f"in {_age(max(b.stops_at - now, 0))}" if b.stops_at else "-"
            rows.append({
                **row,
                "PID": str(b.pid or "-"), "RESTARTS": str(b.restarts),
                "PLANNED": _bytes(b.planned_bytes),
                "KV TOKENS": f"{planned:,}" if planned else "-",
                "VLLM KV": _kv_cell(reported, kv_difference(planned, reported)),
                "FIM": b.fim or "-",
                # one column for both (status is wide already): `hermes (untrained)`,
                # `hermes · thinks qwen3`
                "TOOLS": _escape(_tools_cell(b.tools, b.tool_trained)
                                 + (f" · thinks {b.reasoning}" if b.reasoning else "")),
                "WEIGHTS": _escape(_weights(b.weights))})
        fitted(rows, keep=("MODEL", "NAME", "STATE", "PORT"), more="llmctl status --json",
               console=con)
        for key, s in st.backends.items():
            b, used = s.report, s.used_bytes
            if used and b.planned_bytes and used > b.planned_bytes * (1 + USED_MARGIN):
                con.print(f"  {key}: uses {_bytes(used)}, "
                          f"{used / b.planned_bytes - 1:.0%} more than the planned "
                          f"{_bytes(b.planned_bytes)} (over the {USED_MARGIN:.0%} margin): "
                          "`llmctl plan` shows what the plan counted", soft_wrap=True)
            planned = getattr(b, "kv_tokens_planned", None)
            reported = getattr(b, "kv_tokens_reported", None)
            diff = kv_difference(planned, reported)
            if diff is not None and abs(diff) > KV_TOLERANCE:
                con.print(f"  {key}: vLLM reports {reported:,} KV tokens, "
                          f"{abs(diff):.0%} {'below' if diff < 0 else 'above'} the planned "
                          f"{planned:,}", soft_wrap=True)
            if b.reason and b.state != State.RUNNING:
                con.print(f"  {key}: {_escape(b.reason)}")
            for line in s.log_tail or []:
                con.print(f"    [dim]{_escape(line)}[/dim]")
    if st.leftovers:
        con.print(f"[red]left over from a dead daemon:[/red] process groups "
                  f"{', '.join(map(str, st.leftovers))} — `llmctl down` cleans them")


def _tools_cell(parser: str | None, trained: bool | None) -> str:
    """A model's tool calling in one cell: its parser, and whether `auto` tool use works."""
    if not parser:
        return "-"
    return parser + {True: "", False: " (untrained)", None: ""}[trained]


def fitted(rows: list[dict[str, str]], *, keep: Sequence[str], more: str,
           gives_way: Sequence[str] | None = None, right: Sequence[str] = (),
           console: Console | None = None) -> None:
    """Print a table of `rows` (column → cell markup, in the order shown) that fits the
    console, every cell whole: columns give way, the first of `gives_way` first (default:
    the last column shown), until the rest fit, and a note says how many are left out
    and where they all are (`more`, a command). The `keep` columns — names a user reads
    or copies — never give way; in a terminal too narrow even for them, they fold onto
    a second line rather than lose their end."""
    con = console or out
    table, note = fit(rows, con.size.width, keep=keep, more=more, gives_way=gives_way,
                      right=right)
    con.print(table)
    if note:
        con.print(note)


def fit(rows: list[dict[str, str]], width: int, *, keep: Sequence[str], more: str | None,
        gives_way: Sequence[str] | None = None, right: Sequence[str] = ()
        ) -> tuple[Table, str | None]:
    """`fitted`'s table for `width` columns, and its note (markup) when columns gave way;
    for a view that draws itself (`top`) rather than print."""
    from rich.cells import cell_len
    from rich.text import Text

    cols = list(rows[0])
    order = [c for c in (gives_way if gives_way is not None else reversed(cols))
             if c not in keep]
    widths = {c: max(cell_len(c), *(cell_len(Text.from_markup(r[c]).plain) for r in rows))
              for c in cols}
    # box=None, pad_edge=False: one space each side of a cell, none at the table's edges.
    while sum(widths[c] + 2 for c in cols) - 2 > width and order:
        cols.remove(order.pop(0))
    t = Table(box=None, pad_edge=False)
    for c in cols:
        t.add_column(c, justify="right" if c in right else "left",
                     no_wrap=c not in keep, overflow="fold")
    for r in rows:
        t.add_row(*(r[c] for c in cols))
    hidden = len(rows[0]) - len(cols)
    note = None
    if hidden:
        note = (f"[dim]({hidden} more column{'s' if hidden > 1 else ''} in a wider terminal"
                + (f", or `{more}`)" if more else ")") + "[/dim]")
    return t, note


# A snapshot in a Hugging Face cache: the repo and the commit say it in a fifth of the width.
_SNAPSHOT = re.compile(r"/models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{12})[0-9a-f]*/?$")


def _weights(path: str | None) -> str:
    """A backend's weights as `status` shows them: `org/name@commit` for a snapshot in a
    Hugging Face cache (as `models` shows a revision), else the folder, with ~ for home."""
    if not path:
        return "-"
    if m := _SNAPSHOT.search(path):
        return f"{m[1]}/{m[2]}@{m[3]}"
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home != "/" and path.startswith(home + "/") else path


def _kv_cell(reported: int | None, diff: float | None) -> str:
    if reported is None:
        return "-"
    if diff is not None and abs(diff) > KV_TOLERANCE:
        return f"[red]{reported:,} ({diff:+.0%})[/red]"
    return f"{reported:,}"


def plan_view(p: dict[str, Any]) -> None:
    """`llmctl plan`: the machine, one row per model, then each model's arithmetic."""
    head = f"device {p['device']}"
    if p.get("assumed"):
        head += f" (assumed: {p['assumed']})"
    if p.get("driver_version"):
        head += f" · driver {p['driver_version']} · CUDA {p.get('cuda_version') or '?'}"
    if p["device"] == "cpu":
        head += f" · {_bytes(p['ram_available_bytes'])} of {_bytes(p['ram_total_bytes'])} RAM " \
                f"free · {p['cores']} cores"
    out.print(_escape(head))
    for g in p["gpus"]:
        out.print(f"GPU {g['index']}  {_escape(g['name'])}  {_bytes(g['total_bytes'])} total, "
                  f"{_bytes(g['free_bytes'])} free; planned {_bytes(g['planned_bytes'])} + "
                  f"headroom {_bytes(g['headroom_bytes'])}"
                  + (f" → {', '.join(g['models'])}" if g["models"] else ""))
        for proc in g["processes"]:
            who = f"{proc['name']} (pid {proc['pid']})" if proc["pid"] else proc["name"]
            out.print(f"  held by {_escape(who)}: {_bytes(proc['used_bytes'])}")
    rows = []
    for key, m in p["models"].items():
        runs = "always" if m.get("start", "always") == "always" else "on demand"
        if m.get("group"):
            runs += f", group {m['group']}"
        if m["device"] == "cuda":
            where = "GPU " + ",".join(map(str, m["devices"])) + (
                f" (TP {m['tensor_parallel']})" if m["tensor_parallel"] > 1 else "")
            memory = f"{m['gpu_memory_utilization']:.3f} of the card"
            if any("facts unknown" in w for w in m["why"]):
                memory = "? (facts unknown)"  # an even split is a guess, not a plan
        else:
            where = f"cores {cores_spec(m['cores'])}"
            memory = f"KV {m['kv_cache_gib']} GiB"
        able = m.get("abilities") or {}
        rows.append({
            "MODEL": _escape(key), "WHERE": where, "MEMORY": memory, "RUNS": _escape(runs),
            "MAX LEN": str(m["max_model_len"]), "SEQS": str(m["max_num_seqs"]),
            "KV TOKENS": f"{m['kv_tokens']:,}" if m["kv_tokens"] is not None else "?",
            "FULL-LENGTH SEQS": f"{m['concurrency']:.2f}" if m["concurrency"] is not None
            else "?",
            "VLLM REPORTED": _kv_cell(m.get("kv_tokens_reported"), m.get("kv_difference")),
            "FIM": _escape(m.get("fim") or "-"),
            "TOOLS": _escape(_tools_cell(able.get("tools"), able.get("tool_trained"))),
            "REASONING": _escape(able.get("reasoning") or "-")})
    if rows:
        # The split first; what vLLM reported exists only while the stack runs.
        fitted(rows, keep=("MODEL", "WHERE", "MEMORY"), more="llmctl plan --json",
               gives_way=("VLLM REPORTED", "REASONING", "FIM", "RUNS", "SEQS", "TOOLS",
                          "MAX LEN", "FULL-LENGTH SEQS", "KV TOKENS"))
    for key, m in p["models"].items():
        out.print(f"[bold]{key}[/bold]" + (f"  ({_escape(m['facts']['quant_text'])}, "
                                           f"{_bytes(m['facts']['weight_bytes'])} of weights)"
                                           if m.get("facts") else ""))
        for line in m["why"]:
            out.print(f"    {_escape(line)}", soft_wrap=True)
        if (able := m.get("abilities")) and able.get("why"):
            out.print(f"    tools: {_escape(able['why'])}"
                      + (f"; reasoning: {able['reasoning']}" if able.get("reasoning") else ""),
                      soft_wrap=True)
    for note in p["notes"]:
        out.print(f"[yellow]note:[/yellow] {_escape(note)}", soft_wrap=True)


def check_table(rows: list[Any], url: str | None, console: Console | None = None) -> None:
    """`llmctl check`: a row per check, PASS / FAIL / skip, then the verdict."""
    t = Table(box=None, pad_edge=False)
    t.add_column("CHECK", no_wrap=True)  # a name: whole; the detail is prose, and wraps
    t.add_column("RESULT", no_wrap=True)
    t.add_column("DETAIL")
    for r in rows:
        result = "[green]PASS[/green]" if r.ok else ("[red]FAIL[/red]" if r.ok is False
                                                    else "[dim]skip[/dim]")
        t.add_row(_escape(r.name), result, _escape(r.detail))
    (console or out).print(t)
    failed = [r.name for r in rows if r.ok is False]
    if failed:
        fail(f"{len(failed)} of {len(rows)} checks failed: {', '.join(failed)}",
             "`llmctl status` and `llmctl logs NAME` show more; docs/troubleshooting.md")
    else:
        ok(f"all {sum(r.ok is True for r in rows)} checks passed"
           + (f" against {url}" if url else ""))


def keys_table(rows: list[dict[str, Any]]) -> None:
    """`llmctl keys list`."""
    import time

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"

    def tally(u: dict[str, int] | None) -> str:
        if not u:
            return "-"
        return f"{u['requests']:,} req, {u['prompt_tokens'] + u['completion_tokens']:,} tok" \
            + (f", {u['errors']:,} err" if u["errors"] else "")

    table = []
    for r in rows:
        limits = ", ".join(f"{r[k]} {label}" for k, label in (
            ("rpm", "rpm"), ("tpm", "tpm"), ("max_concurrent", "at once")) if r.get(k)) or "-"
        if r.get("revoked_or_admin"):
            shown, models, expires = "(config key or revoked)", "-", "-"
        else:
            shown = r["shown"] + "…"
            models = ", ".join(r["models"]) or "all"
            expires = ("[red]expired[/red] " if r["expired"] else "") + when(r["expires"]) \
                if r["expires"] else "never"
        table.append({"NAME": _escape(r["name"]), "KEY": _escape(shown),
                      "MODELS": _escape(models), "LIMITS": limits,
                      "CREATED": when(r.get("created")), "EXPIRES": expires,
                      "LAST USED": when(r["last_used"]), "TODAY": tally(r["today"]),
                      "TOTAL": tally(r["total"])})
    # Whose key, which, for what: always; then its limits and use; when it was made last.
    fitted(table, keep=("NAME", "KEY", "MODELS"), more="llmctl keys list --json",
           gives_way=("CREATED", "TOTAL", "TODAY", "LAST USED", "LIMITS", "EXPIRES"))


def size(n: int | None) -> str:
    return _bytes(n) if n else "0 MiB"


def models_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.print("no local models (`llmctl pull` downloads the configured ones)")
        return
    table = []
    for r in rows:
        rev = (r["commit"] or "")[:12] or "-"
        if r["revision"] and r["revision"] not in ("main", r["commit"]):
            rev = f"{r['revision']} ({rev})"
        model = _escape(str(r["source"]))
        if not r["complete"]:  # said beside the name: the revision may give way
            model += " [yellow](incomplete)[/yellow]"
        table.append({"MODEL": model, "REVISION": _escape(rev), "SIZE": _bytes(int(r["bytes"])),
                      "QUANTIZATION": _escape(str(r["quantization"] or "-")),
                      "CONFIGURED": _escape(", ".join(r["configured"]) or "-"),
                      "SERVED": _escape(", ".join(r["served"]) or "-"),
                      "PATH": _escape(str(r["path"]))})
    fitted(table, keep=("MODEL", "SIZE"), more="llmctl models --json",
           gives_way=("PATH", "QUANTIZATION", "REVISION", "SERVED", "CONFIGURED"))
    out.print(f"total {_bytes(sum(int(r['bytes']) for r in rows))} on disk")
    for r in rows:
        for name in r.get("mismatched") or []:
            out.print(f"[red]mismatch:[/red] {_escape(str(r['source']))}: {_escape(name)}")


class PullProgress:
    """`pull`'s display on stderr: the whole model (bytes, speed, time left) and a row for
    each file under way (several at once). Without a terminal it prints a line per file
    instead."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.total: Any = None
        self.rows: dict[str, tuple[Any, int]] = {}  # file → (its task, bytes shown)

    def __enter__(self) -> PullProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end()

    def begin(self, repo: str, files: list[tuple[str, int]], present: int) -> None:
        if not self.enabled:
            return
        size = sum(n for _, n in files)
        if not err.is_terminal:
            say(f"{repo}: {len(files)} files, {_bytes(size)}"
                + (f" ({_bytes(present)} already here)" if present else ""))
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column
        from rich.text import Text

        class Speed(ProgressColumn):  # rich's TransferSpeedColumn has decimal units only
            def render(self, task: Any) -> Text:
                rate = task.finished_speed or task.speed
                return Text("?" if rate is None else f"{rate / 2**20:.1f} MiB/s",
                            style="progress.data.speed")

        # Binary units throughout, as the line at the end and `models` say (MiB, GiB).
        # Figures never wrap; at 80 columns the bar gives way first, then long names end
        # in "…".
        self.progress = Progress(
            TextColumn("{task.description}", table_column=Column(
                no_wrap=True, overflow="ellipsis", ratio=3, min_width=12)),
            BarColumn(bar_width=None, table_column=Column(ratio=2, min_width=6)),
            DownloadColumn(binary_units=True, table_column=Column(no_wrap=True)),
            Speed(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(table_column=Column(no_wrap=True)),
            console=err, transient=False, expand=True)
        self.progress.start()
        self.total = self.progress.add_task(_escape(repo), total=size, completed=present)

    def file(self, name: str, size: int, already: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            say(f"  {name} ({_bytes(size)}" + (f", resuming at {_bytes(already)})" if already
                                                 else ")"))
            return
        if name in self.rows:  # starting over (the server ignored Range): take back its bytes
            task, shown = self.rows.pop(name)
            self.progress.advance(self.total, -shown)
            self.progress.remove_task(task)
        self.progress.advance(self.total, already)
        task = self.progress.add_task(f"  {_escape(name)}", total=size, completed=already)
        self.rows[name] = (task, already)

    def advance(self, n: int, name: str) -> None:
        if self.progress is not None:
            self.progress.advance(self.total, n)
            if name in self.rows:
                task, shown = self.rows[name]
                self.progress.advance(task, n)
                self.rows[name] = (task, shown + n)

    def done(self, name: str) -> None:
        if self.progress is not None and name in self.rows:
            self.progress.remove_task(self.rows.pop(name)[0])

    def end(self) -> None:
        if self.progress is not None:
            for task, _ in self.rows.values():
                self.progress.remove_task(task)
            self.rows.clear()
            self.progress.stop()
            self.progress = None


def split_blocks(text: str) -> tuple[list[str], str]:
    """Markdown blocks that are complete (ended by a blank line outside a code fence, or
    by the fence's closing line) and the rest, still being written."""
    blocks, start, fence, pos = [], 0, False, 0
    lines = text.split("\n")
    for line in lines[:-1]:  # the last piece has no newline yet
        end = pos + len(line) + 1
        if line.lstrip().startswith("```"):
            fence = not fence
            if not fence:  # the closing fence ends its block
                blocks.append(text[start:end])
                start = end
        elif not fence and not line.strip():
            if text[start:pos].strip():
                blocks.append(text[start:end])
            start = end  # blank lines between blocks belong to neither
        pos = end
    return [b for b in blocks if b.strip()], text[start:]


class ChatView:
    """How the chat shows an answer: on a terminal, each finished Markdown block is
    rendered once (code highlighted) while the block being written streams as text
    below it, so nothing long is drawn twice; `plain` (and any stdout that is not a
    terminal) writes the text as it comes. Talk — stats, notes, errors — goes to stderr."""

    def __init__(self, plain: bool = False) -> None:
        self.plain = plain or not out.is_terminal
        self.buf = ""
        self.live: Any = None
        self.wait_shown = False
        self.saved_tty: Any = None
        self.wrote = False

    def begin(self) -> None:
        self.buf = ""
        self.wrote = False
        self._quiet_keyboard()

    def _quiet_keyboard(self) -> None:
        """While an answer streams, keys typed are not echoed into it (they would break
        the display and read as part of the answer); Ctrl-C still stops the answer."""
        if not sys.stdin.isatty() or self.saved_tty is not None:
            return
        import termios

        fd = sys.stdin.fileno()
        self.saved_tty = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ECHO | termios.ICANON)
        termios.tcsetattr(fd, termios.TCSANOW, quiet)

    def _restore_keyboard(self) -> None:
        if self.saved_tty is None:
            return
        import termios

        fd = sys.stdin.fileno()
        termios.tcsetattr(fd, termios.TCSANOW, self.saved_tty)
        termios.tcflush(fd, termios.TCIFLUSH)  # what was typed meanwhile is dropped
        self.saved_tty = None

    def write(self, text: str) -> None:
        self.wrote = True
        if self.plain:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        from rich.text import Text

        self.buf += text
        done, self.buf = split_blocks(self.buf)
        if self.live is None:
            from rich.live import Live

            self.live = Live(console=out, refresh_per_second=12, transient=True,
                             vertical_overflow="visible")
            self.live.start()
        for block in done:
            self.live.console.print(self._markdown(block))
        # Only the tail of the block being written: a region taller than the terminal
        # cannot be redrawn in place, and would pile copies into the scrollback.
        lines = self.buf.split("\n")
        room = max(3, out.size.height - 4)
        self.live.update(Text("\n".join(lines[-room:])))

    @staticmethod
    def _markdown(block: str) -> Any:
        from rich.markdown import Markdown

        return Markdown(block, code_theme="monokai")

    def end(self, interrupted: bool) -> None:
        self._restore_keyboard()
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.plain and self.wrote:
            sys.stdout.write("\n")
            sys.stdout.flush()
        elif self.buf.strip():
            out.print(self._markdown(self.buf))
        self.buf = ""
        if interrupted:
            err.print("[dim]stopped[/dim]")

    def stats(self, text: str) -> None:
        err.print(f"[dim]{_escape(text)}[/dim]")

    def info(self, text: str) -> None:
        err.print(_escape(text), soft_wrap=True)

    def error(self, message: str, hint: str | None) -> None:
        fail(message, hint)

    def waiting(self, text: str | None) -> None:
        if text and not self.wait_shown:
            err.print(f"[dim]{_escape(text)}[/dim]")
        self.wait_shown = bool(text)


class _LiveView:
    """A view redrawn in place on stderr when it is a terminal (rich's Live); the
    subclass prints lines itself otherwise. `transient` views vanish when done."""

    transient = False

    def __init__(self) -> None:
        self.live: Any = None

    def __enter__(self) -> Any:
        if err.is_terminal:
            from rich.live import Live

            self.live = Live(console=err, refresh_per_second=4, transient=self.transient)
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()


class BenchProgress(_LiveView):
    """`bench`'s live line on stderr: sent, done, failed, in flight, tokens, elapsed."""

    transient = True

    def __init__(self, total: int | None) -> None:
        import time

        super().__init__()
        self.total = total
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, label: str, live: Any) -> None:
        import time

        now = time.monotonic()
        if now - self.last < 0.25 and live.active:
            return
        self.last = now
        text = (f"{label + '  ' if label else ''}sent {live.sent}"
                + (f"/{self.total}" if self.total else "")
                + f" · done {live.done} · failed {live.failed} · in flight {live.active}"
                  f" · {live.tokens} tokens · {now - self.t0:.0f} s")
        if self.live is not None:
            self.live.update(text)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def bench_report(runs: list[Any], pcts: tuple[float, ...], console: Console | None = None
                 ) -> None:
    """vLLM's result layout for one run; a row per run for a sweep or a comparison."""
    con = console or out
    words = [str(int(p)) if int(p) == p else str(p) for p in pcts]
    if len(runs) == 1 and not runs[0].label:
        r = runs[0].result
        rows = [("Successful requests", str(r["completed"])),
                ("Failed requests", str(r["failed"])),
                # vLLM's figure counts each one-second bucket: beside it, the true peak.
                ("Peak requests in flight", str(r.get("peak_in_flight_requests", "-"))),
                ("Peak concurrent requests (vLLM, per 1 s)", str(r["max_concurrent_requests"])),
                ("Benchmark duration (s)", f"{r['duration']:.2f}"),
                ("Total input tokens", str(r["total_input_tokens"])),
                ("Total generated tokens", str(r["total_output_tokens"])),
                ("Request throughput (req/s)", f"{r['request_throughput']:.2f}")]
        if r.get("request_goodput") is not None:
            rows.append(("Request goodput (req/s)", f"{r['request_goodput']:.2f}"))
        rows += [("Output token throughput (tok/s)", f"{r['output_throughput']:.2f}"),
                 ("Peak output token throughput (tok/s)", f"{r['max_output_tokens_per_s']:.2f}"),
                 ("Total token throughput (tok/s)", f"{r['total_token_throughput']:.2f}")]
        for key, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL")):
            rows += [(f"Mean {name} (ms)", _ms(r[f"mean_{key}_ms"])),
                     (f"Median {name} (ms)", _ms(r[f"median_{key}_ms"]))]
            rows += [(f"P{w} {name} (ms)", _ms(r[f"p{w}_{key}_ms"])) for w in words]
        t = Table(box=None, show_header=False, pad_edge=False)
        t.add_column(justify="left")
        t.add_column(justify="right")
        for k, v in rows:
            t.add_row(k, v)
        con.print(t)
    else:
        w = words[-1]
        peak = max((r.result["output_throughput"] for r in runs), default=0) or 1
        table = []
        for run in runs:
            r = run.result
            bar = "█" * max(1, round(20 * r["output_throughput"] / peak))
            table.append({
                "RUN": _escape(run.label), "DONE": str(r["completed"]),
                "FAILED": str(r["failed"]), "REQ/S": f"{r['request_throughput']:.2f}",
                "OUT TOK/S": f"{r['output_throughput']:.1f}",
                "TTFT P50": _ms(r["median_ttft_ms"]), f"TTFT P{w}": _ms(r[f"p{w}_ttft_ms"]),
                "TPOT P50": _ms(r["median_tpot_ms"]), "ITL P50": _ms(r["median_itl_ms"]),
                "E2EL P50": _ms(r["median_e2el_ms"]), "": f"[cyan]{bar}[/cyan]"})
        fitted(table, keep=("RUN", "DONE", "FAILED", "OUT TOK/S"),
               more="llmctl bench --save-json FILE", console=con,
               right=[c for c in table[0] if c not in ("RUN", "")],
               gives_way=("", "ITL P50", "E2EL P50", "TPOT P50", f"TTFT P{w}", "REQ/S",
                          "TTFT P50"))
        labels = [run.label for run in runs]
        if labels[:2] == ["direct", "proxy"] and len(runs) == 2:
            d, p = runs[0].result, runs[1].result
            con.print(f"proxy − direct: TTFT p50 {p['median_ttft_ms'] - d['median_ttft_ms']:+.2f}"
                      f" ms, TTFT p{w} {p[f'p{w}_ttft_ms'] - d[f'p{w}_ttft_ms']:+.2f} ms, TPOT "
                      f"p50 {p['median_tpot_ms'] - d['median_tpot_ms']:+.2f} ms, output "
                      f"throughput {p['output_throughput'] / (d['output_throughput'] or 1):.1%}"
                      " of direct", soft_wrap=True)
    if any(run.interrupted for run in runs):
        con.print("[yellow]interrupted: the figures cover the requests that finished[/yellow]")


class StartProgress(_LiveView):
    """`up`'s live view: per backend, state, phase from its log, elapsed, estimate.

    On a terminal it redraws in place; otherwise it prints a line per change."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, tuple[Any, ...]] = {}

    @staticmethod
    def _line(key: str, b: BackendReport) -> tuple[str, str]:
        import time

        state = b.state or "?"
        detail = ""
        if b.resting:
            detail = b.reason or "on demand: its first request starts it"
        elif state == State.STOPPED and not b.reason:
            # Not started yet: vLLM sizes its memory at start, so servers start one by one.
            state, detail = "QUEUED", "starts when the one before it is ready"
        elif state == State.STARTING:
            elapsed = time.time() - b.started_at if b.started_at else 0
            est = b.expected_start_s
            detail = f"{b.phase or 'starting'}  {elapsed:.0f}s" + (
                f" (last start took {est:.0f}s)" if est else "")
        elif state == State.RUNNING and b.last_start_s:
            detail = f"ready in {b.last_start_s:.0f}s"
        elif b.reason:
            detail = b.reason
        return state, detail

    def update(self, stack: StackReport) -> None:
        backends = stack.backends
        if self.live is not None:
            t = Table(box=None, show_header=False, pad_edge=False)
            for key, b in backends.items():
                state, detail = self._line(key, b)
                c = STATE_COLORS.get(state, "white")
                t.add_row(f"  {key}", f"[{c}]{state}[/{c}]", _escape(detail))
            self.live.update(t)
            return
        for key, b in backends.items():
            sig = (b.state, b.phase, b.reason)
            if self.seen.get(key) != sig:
                self.seen[key] = sig
                state, detail = self._line(key, b)
                err.print(f"  {key:<10} {state:<9} {_escape(detail)}")


# ── top ──────────────────────────────────────────────────────────────────────

def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _count(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _seconds(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


# Columns of `top`'s models table that give way first in a narrow terminal: memory is in
# the hardware section too; what the models are doing now stays longest.
TOP_GIVES_WAY = ("MEM", "KV", "TTFT P50", "QUEUED", "TOK/S", "REQ/S", "IN FLIGHT")
TOP_KEYS_SHOWN = 8


def top_view(view: Any, width: int, interval: float = 1.0) -> Any:
    """One frame of `llmctl top` (a top.View) for a terminal `width` columns wide: the
    header, the models, the keys' last minute, the hardware, and how to leave."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = []
    head = f"[bold]llmctl top[/bold]  {_escape(view.url)}"
    if view.device:
        head += f"  device {_escape(view.device)}"
    if view.uptime_s is not None:
        head += f"  up {_age(view.uptime_s)}"
    parts.append(Text.from_markup(head))
    if not view.answering:
        age = f"; figures from {view.stale_s:.0f} s ago" if view.stale_s is not None else ""
        parts.append(Text.from_markup(f"[red]not answering[/red] ({_escape(view.problem or '')}"
                                      f"{age}); trying again"))
    elif view.problem:
        parts.append(Text.from_markup(f"[yellow]note:[/yellow] {_escape(view.problem)}"))
    parts.append(Text(""))
    if view.models:
        rows = []
        for m in view.models:
            color = STATE_COLORS.get(m.state, "")
            rows.append({
                "MODEL": _escape(m.key),
                "STATE": f"[{color}]{_escape(m.state)}[/{color}]" if color else _escape(m.state),
                "IN FLIGHT": _count(m.in_flight), "QUEUED": _count(m.queued),
                "REQ/S": _rate(m.req_s), "TOK/S": _rate(m.tok_s),
                "TTFT P50": _seconds(m.ttft_s), "KV": _share(m.kv), "MEM": _bytes(m.mem_bytes)})
        table, note = fit(rows, width, keep=("MODEL", "STATE"), more=None,
                          gives_way=TOP_GIVES_WAY, right=[c for c in rows[0] if c not in
                                                          ("MODEL", "STATE")])
        parts.append(table)
        if note:
            parts.append(Text.from_markup(note))
    elif view.answering:
        parts.append(Text("no models"))
    parts.append(Text(""))
    span = f"last {view.window_s:.0f} s" if view.window_s > 0 else "from the next refresh"
    parts.append(Text.from_markup(f"[bold]keys[/bold] [dim]({span})[/dim]"))
    if view.keys:
        shown = view.keys[:TOP_KEYS_SHOWN]
        rows = [{"KEY": _escape(k.name),
                 "REQ/MIN": _count(k.requests) if view.window_s > 0 else "-",
                 "TOK/MIN": _count(k.tokens) if view.window_s > 0 else "-"} for k in shown]
        table, _ = fit(rows, width, keep=("KEY",), more=None, right=("REQ/MIN", "TOK/MIN"))
        parts.append(table)
        if len(view.keys) > len(shown):
            parts.append(Text(f"({len(view.keys) - len(shown)} more keys)", style="dim"))
    else:
        parts.append(Text("no requests yet", style="dim"))
    parts.append(Text(""))
    if view.gpus:
        parts.append(Text.from_markup("[bold]GPUs[/bold]"))
        rows = [{"GPU": _escape(g.gpu),
                 "MEMORY": f"{_bytes(int(g.used or 0))} of {_bytes(int(g.total))}"
                 if g.total else _bytes(int(g.used or 0)),
                 "UTIL": _share(g.util),
                 "TEMP": "-" if g.temp_c is None else f"{g.temp_c:.0f}°C",
                 "POWER": "-" if g.power_w is None else f"{g.power_w:.0f} W"} for g in view.gpus]
        table, note = fit(rows, width, keep=("GPU", "MEMORY"), more=None,
                          right=("UTIL", "TEMP", "POWER"))
        parts += [table, *([Text.from_markup(note)] if note else [])]
    elif view.cpus:
        parts.append(Text.from_markup("[bold]CPU[/bold] [dim](per backend process group)[/dim]"))
        rows = [{"MODEL": _escape(c.model), "MEMORY": _bytes(int(c.rss or 0)),
                 "CPU": "-" if c.cpu is None else f"{c.cpu:.0%}"} for c in view.cpus]
        table, _ = fit(rows, width, keep=("MODEL",), more=None, right=("MEMORY", "CPU"))
        parts.append(table)
    parts.append(Text(""))
    parts.append(Text(f"q quits · every {interval:g} s", style="dim"))
    if not view.answering:  # the last figures, greyed: they are not now's
        for part in parts[2:-1]:
            part.style = "dim"
    return Group(*parts)


class _TopFrame:
    """A frame laid out when drawn, at the terminal's width then: a resize between two
    refreshes is followed at the next redraw."""

    def __init__(self, view: Any, interval: float) -> None:
        self.view, self.interval = view, interval

    def __rich_console__(self, console: Console, options: Any) -> Any:
        yield top_view(self.view, options.max_width, self.interval)


class TopScreen:
    """`top`'s terminal: the alternate screen (rich's Live, screen=True, cursor hidden) and
    the keyboard in cbreak mode without echo (a key is read as it is pressed; Ctrl-C still
    interrupts), both restored on the way out, whichever way that is — `q`, Ctrl-C, a
    SIGTERM or SIGHUP, an error. Without a terminal, a frame is printed per refresh."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.live: Any = None
        self.saved_tty: Any = None
        self.saved_signals: dict[int, Any] = {}
        self.keyboard = sys.stdin.isatty()

    def __enter__(self) -> TopScreen:
        import signal

        def leave(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self.saved_signals[sig] = signal.signal(sig, leave)
        if self.keyboard:
            import termios

            fd = sys.stdin.fileno()
            self.saved_tty = termios.tcgetattr(fd)
            quiet = termios.tcgetattr(fd)
            quiet[3] &= ~(termios.ECHO | termios.ICANON)
            quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
        if out.is_terminal:
            from rich.live import Live

            self.live = Live(console=out, screen=True, auto_refresh=True, refresh_per_second=4,
                             redirect_stdout=False, redirect_stderr=False)
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        try:
            if self.live is not None:
                self.live.stop()  # leaves the alternate screen, shows the cursor
                self.live = None
        finally:
            if self.saved_tty is not None:
                import termios

                fd = sys.stdin.fileno()
                termios.tcsetattr(fd, termios.TCSADRAIN, self.saved_tty)
                termios.tcflush(fd, termios.TCIFLUSH)  # keys pressed meanwhile are dropped
                self.saved_tty = None
            for sig, handler in self.saved_signals.items():
                signal.signal(sig, handler)

    def show(self, view: Any) -> None:
        frame = _TopFrame(view, self.interval)
        if self.live is not None:
            self.live.update(frame, refresh=True)
        else:
            out.print(frame)
            out.print()

    def key(self, timeout: float) -> str | None:
        import time

        if not self.keyboard:
            time.sleep(timeout)
            return None
        import select

        fd = sys.stdin.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        got = os.read(fd, 64)
        if not got:  # the terminal went away: wait out the refreshes
            self.keyboard = False
            return None
        return got.decode("utf-8", "replace")[:1]
