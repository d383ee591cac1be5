"""Issue 23's rough edges in what a user reads: tables that fit the terminal, a command
list of one line per command, and exit codes. Real `llmctl` processes; no stack runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli_plan import write_config


def llmctl(home: Path, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "NO_COLOR": "1", "COLUMNS": str(columns),
           "HF_HUB_OFFLINE": "1"}
    for k in ("LLMCTL_CONFIG", "LLMCTL_API_KEY", "LLMCTL_MODELS"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "llmctl", *args], env=env,
                          capture_output=True, text=True, timeout=60)


# ── exit codes ──


def test_a_name_that_is_taken_is_a_conflict_not_a_usage_error(tmp_path):
    assert llmctl(tmp_path, "keys", "add", "alice").returncode == 0
    r = llmctl(tmp_path, "keys", "add", "alice")
    assert r.stderr.startswith("error: a key named 'alice' exists")
    assert r.returncode == 1  # 2 is for what cannot be read as typed
    r = llmctl(tmp_path, "keys", "add", "no spaces")
    assert r.returncode == 2 and "is not a valid name" in r.stderr


# ── tables that fit the terminal ──

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
CODER, GENERAL = "TheBloke/deepseek-coder-33B-instruct-AWQ", "TheBloke/Mistral-7B-Instruct-v0.2-AWQ"


def fits(stdout: str, width: int) -> list[str]:
    lines = stdout.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), \
        [line for line in lines if len(line.rstrip()) > width]
    return lines


def columns_of(line: str) -> list[str]:
    """A table's column names, from its header line: two spaces or more apart."""
    return re.split(r" {2,}", line.strip())


@pytest.fixture
def stack_home(tmp_path) -> Path:
    """Two configured models with the weights in the store, as `pull` leaves them."""
    for repo, folder in ((CODER, "deepseek-coder-33B-instruct-AWQ"),
                         (GENERAL, "Mistral-7B-Instruct-v0.2-AWQ")):
        shutil.copytree(FIXTURES / folder, tmp_path / "models" / repo.replace("/", "--"))
    write_config(tmp_path, CODER, GENERAL)
    return tmp_path


@pytest.mark.parametrize("width", [80, 120])
def test_keys_list_fits_and_every_row_says_whose_key_it_is(stack_home, width):
    for args in (["alice", "--models", "coder,general", "--rpm", "30", "--tpm", "10000",
                  "--max-concurrent", "4", "--expires", "30d"],
                 ["ci-runner-for-the-build-farm"]):
        assert llmctl(stack_home, "keys", "add", *args).returncode == 0
    r = llmctl(stack_home, "keys", "list", columns=width)
    assert r.returncode == 0, r.stderr
    lines = fits(r.stdout, width)
    # Whose key, which one, for what, until when: first; its limits and use as room allows.
    assert columns_of(lines[0]) == (["NAME", "KEY", "MODELS", "EXPIRES"] if width == 80 else
                                    ["NAME", "KEY", "MODELS", "LIMITS", "EXPIRES", "LAST USED"])
    assert lines[1].startswith("alice ") and "coder, general" in lines[1]
    assert lines[2].startswith("ci-runner-for-the-build-farm ") and lines[2].rstrip().endswith(
        "never" if width == 80 else "-")
    # The only "…" is the one that marks a key's first characters.
    assert re.sub(r"sk-llmctl-\S{4}…", "", r.stdout).count("…") == 0
    hidden = 5 if width == 80 else 3
    assert f"({hidden} more columns in a wider terminal, or `llmctl keys list --json`)" \
        in r.stdout
    if width == 120:
        assert "30 rpm, 10000 tpm, 4 at once" in lines[1]


@pytest.mark.parametrize("width", [80, 120])
def test_models_fits_and_never_wraps_a_repo_name(stack_home, width):
    r = llmctl(stack_home, "models", columns=width)
    assert r.returncode == 0, r.stderr
    lines = fits(r.stdout, width)
    assert columns_of(lines[0])[:3] == ["MODEL", "REVISION", "SIZE"]
    assert any(x.startswith(CODER + " ") and "coder" in x for x in lines)
    assert any(x.startswith(GENERAL + " ") and "general" in x for x in lines)
    assert "…" not in r.stdout
    assert "more column" in r.stdout and "`llmctl models --json`" in r.stdout  # PATH, at least


@pytest.mark.parametrize("width", [80, 120])
def test_plan_table_fits_with_its_header_whole(stack_home, width):
    r = llmctl(stack_home, "plan", "--assume", "1x96GiB", columns=width)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    top = next(i for i, x in enumerate(lines) if x.startswith("MODEL "))
    table = lines[top:top + 3]
    fits("\n".join(table), width)
    names = columns_of(table[0])
    assert names[:3] == ["MODEL", "WHERE", "MEMORY"]
    assert set(names) <= {"MODEL", "RUNS", "WHERE", "MEMORY", "MAX LEN", "SEQS", "KV TOKENS",
                          "FULL-LENGTH SEQS", "VLLM REPORTED", "FIM", "TOOLS", "REASONING"}
    assert table[1].startswith("coder ") and "0.549 of the card" in table[1]
    assert table[2].startswith("general ") and "0.420 of the card" in table[2]
    assert "…" not in "\n".join(table)
    if width == 80:
        assert lines[top + 3].startswith("(") and "more columns in a wider terminal, or " \
            "`llmctl plan --json`" in lines[top + 3]


SNAPSHOT = ("/home/someone/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct"
            "/snapshots/12fd25f77366fa6b3b4b768ec3050bf629380bac")


def status_home(tmp_path: Path) -> Path:
    """A stack as `status` reads it (the daemon gone, so no process is asked)."""
    (tmp_path / "state").mkdir()
    rows = {k: {"name": f"smollm2-{k}", "state": "RUNNING", "port": 8000 + i, "restarts": 0,
                "planned_bytes": 3 * 2 ** 30, "kv_tokens_planned": 46592,
                "kv_tokens_reported": 46592, "fim": "starcoder", "max_model_len": 8192,
                "weights": SNAPSHOT, "tools": "hermes", "tool_trained": False}
            for i, k in enumerate(("coder", "general"))}
    (tmp_path / "state" / "stack.json").write_text(json.dumps(
        {"pid": 999999, "device": "cpu", "backends": rows}))
    return tmp_path


def test_status_shows_every_column_at_230_and_counts_what_it_leaves_out(tmp_path):
    home = status_home(tmp_path)
    r = llmctl(home, "status", columns=230)
    assert r.returncode == 0, r.stderr
    assert "more column" not in r.stdout
    # The weights as `models` names a revision: the repo and the commit.
    assert "HuggingFaceTB/SmolLM2-135M-Instruct@12fd25f77366" in r.stdout
    widest = max(len(line.rstrip()) for line in r.stdout.splitlines())
    # Exactly as wide as the table: all of it (the width arithmetic is the table's own).
    assert "more column" not in llmctl(home, "status", columns=widest).stdout
    one_less = llmctl(home, "status", columns=widest - 1)
    fits(one_less.stdout, widest - 1)
    assert "(1 more column in a wider terminal, or `llmctl status --json`)" in one_less.stdout
    narrow = llmctl(home, "status", columns=80).stdout
    fits(narrow, 80)
    assert re.search(r"\(\d+ more columns in a wider terminal", narrow)


# ── help: a list, then the detail ──


def command_paths() -> list[list[str]]:
    import typer

    from llmctl.cli import app

    def walk(cmd, path):
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            yield [*path, name]
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def help_at_80(*path: str) -> str:
    from typer.testing import CliRunner

    from llmctl.cli import app

    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("group", [[], ["config"], ["keys"], ["service"], ["export"]],
                         ids=lambda g: " ".join(g) or "llmctl")
def test_the_command_list_is_one_line_per_command(group):
    out = help_at_80(*group)
    assert all(len(line) <= 80 for line in out.splitlines())
    panel = out[out.index("─ Commands ─"):].splitlines()[1:]
    rows = [line.strip("│ ") for line in panel[:panel.index(next(x for x in panel
                                                                  if x.startswith("╰")))]]
    names = sorted(p[-1] for p in command_paths() if p[:-1] == group)
    # A line per command: each starts with its name (none is a summary's second line),
    # and each summary is a whole sentence.
    assert sorted(row.split()[0] for row in rows) == names, rows
    assert all(row.endswith(".") for row in rows), rows


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_the_detail_of_each_command_is_not_broken_again_at_80_columns(path):
    import inspect

    import typer

    from llmctl.cli import app

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    shown = {line.strip() for line in help_at_80(*path).splitlines()}
    for line in inspect.cleandoc(cmd.help or "").splitlines():
        assert line.strip() in shown or not line.strip(), line
