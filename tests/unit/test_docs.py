import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_and_completions_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


HEAVY = ("vllm", "torch", "transformers", "fastapi", "uvicorn", "huggingface_hub", "pynvml",
         "aiohttp", "httpx")


def modules_after(argv: list[str], tmp_path, *, typer_app: bool = False
                  ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the `llmctl` entry point (or, with `typer_app`, the typer app itself) with
    `argv` in a fresh interpreter; which top-level modules it imported."""
    import os

    call = "from llmctl.cli import app as main" if typer_app else "from llmctl.__main__ import main"
    code = (f"import sys\n{call}\n"
            f"sys.argv = ['llmctl', *{argv!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('MODULES', sorted(m for m in sys.modules if '.' not in m), file=sys.stderr)\n")
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, r.stderr
    return r, eval(line[0][8:])  # a list literal printed by the child


def test_help_does_not_import_heavy_modules(tmp_path):
    r, mods = modules_after(["--help"], tmp_path)
    assert "status" in r.stdout and "typer" in mods  # it ran, through the typer app
    assert not set(HEAVY) & set(mods), set(HEAVY) & set(mods)


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"]])
def test_status_runs_without_heavy_modules_or_typer(tmp_path, argv):
    """The `llmctl` entry point answers status without the typer app (and its pydantic)."""
    r, mods = modules_after(argv, tmp_path)
    assert not (set(HEAVY) | {"typer", "pydantic"}) & set(mods)
    assert ('"running": false' if "--json" in argv else "daemon  not running") in r.stdout


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_the_fast_status_and_the_typer_command_print_the_same(tmp_path, json_flag, monkeypatch):
    """Both paths over a stack report that names a (dead) daemon and a backend."""
    import json as jsonlib

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "stack.json").write_text(jsonlib.dumps({
        "pid": 999999, "started_at": 1.0, "device": "cpu", "proxy_url": "http://x:1",
        "error": "it broke", "backends": {"coder": {
            "name": "c", "state": "FATAL", "pid": None, "pgid": None, "port": 9, "restarts": 2,
            "reason": "exited while starting", "planned_bytes": 2 ** 30}}}))
    monkeypatch.setenv("COLUMNS", "150")
    fast, fast_mods = modules_after(["status", *json_flag], tmp_path)
    typed, typed_mods = modules_after(["status", *json_flag], tmp_path, typer_app=True)
    assert "typer" not in fast_mods and "typer" in typed_mods
    assert fast.stdout == typed.stdout
    assert "STOPPED" in fast.stdout and "it broke" in fast.stdout


def test_config_reference_documents_every_key_and_environment_variable():
    """What the user reads, checked against the code itself, not the generator's output."""
    import dataclasses
    import re

    from llmctl import config

    doc = (ROOT / "docs" / "config.md").read_text()
    for title, cls in config.SECTIONS.items():
        section = doc.split(f"## `[{title}]`", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            if f.metadata.get("toml", True):
                assert f"| `{f.name}` |" in section, f"{title}.{f.name}"
    read = set()
    for p in (ROOT / "llmctl").glob("*.py"):
        # env.get("X"), env["X"] (not an assignment: that is written for vLLM), envvar="X"
        read |= set(re.findall(r"(?:environ|env)(?:\.get\(\"([A-Z_]+)\"|\[\"([A-Z_]+)\"\](?!\s*=[^=]))"
                               r"|envvar=\"([A-Z_]+)\"", p.read_text()))
    read = {a or b or c for a, b, c in read}
    read -= {"XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"}  # the XDG paths, named above
    assert read, "the scan found no environment variable at all"
    missing = read - set(config.ENV_VARS)
    assert not missing, f"read by llmctl but not in config.ENV_VARS: {missing}"
    for name in config.ENV_VARS:
        assert f"| `{name}` |" in doc, name


def test_cli_reference_has_every_command():
    import typer

    from llmctl.cli import app

    def names(cmd, path):
        yield path
        for n, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from names(sub, f"{path} {n}")

    commands = list(names(typer.main.get_command(app), "llmctl"))
    assert len(commands) > 8, commands
    doc = (ROOT / "docs" / "cli.md").read_text()
    for c in commands:
        assert f"## `{c}`" in doc, c


@pytest.mark.parametrize("typed, want", [("stat", ["status"]), ("pu", ["pull"]),
                                         ("", ["up", "down", "status", "bench", "chat"])])
def test_the_shipped_bash_completion_completes_in_a_real_bash(typed, want):
    """What the user gets: completions/llmctl.bash sourced in bash, `llmctl <typed><TAB>`."""
    import os
    import shutil

    bash = shutil.which("bash")
    assert bash, "bash is needed for this test"
    script = (f"source {ROOT / 'completions' / 'llmctl.bash'}\n"
              "fn=$(complete -p llmctl | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n"
              f"COMP_WORDS=(llmctl '{typed}'); COMP_CWORD=1; COMP_LINE='llmctl {typed}'\n"
              "COMP_POINT=${#COMP_LINE}\n"
              f"$fn llmctl '{typed}' llmctl\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run([bash, "-c", script], capture_output=True, text=True, env=env,
                       timeout=30)
    got = r.stdout.split()
    assert all(w in got for w in want), (got, r.stderr)
    if typed:
        assert all(w.startswith(typed) for w in got), got


@pytest.mark.parametrize("columns", ["80", "120"])
def test_status_fits_the_terminal_without_cutting_a_name(tmp_path, columns):
    import json as jsonlib
    import os

    (tmp_path / "state").mkdir()
    rows = {k: {"name": f"smollm2-{k}-with-a-long-name", "state": "BACKOFF", "port": 8000 + i,
                "restarts": 3, "planned_bytes": 3 * 2 ** 30, "kv_tokens_planned": 46592,
                "kv_tokens_reported": 46592, "fim": "starcoder"}
            for i, k in enumerate(("coder", "general"))}
    (tmp_path / "state" / "stack.json").write_text(jsonlib.dumps(
        {"pid": 999999, "device": "cpu", "backends": rows}))
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path), "NO_COLOR": "1", "COLUMNS": columns}
    r = subprocess.run([sys.executable, "-m", "llmctl", "status"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    assert "smollm2-general-with-a-long-name" in r.stdout and "8001" in r.stdout
    assert all(len(line) <= int(columns) for line in r.stdout.splitlines())
    if columns == "80":
        assert "more columns in a wider terminal" in r.stdout and "status --json" in r.stdout


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_the_shipped_zsh_and_fish_completions_complete_in_the_real_shells(shell):
    """completions/_llmctl in an interactive zsh with compinit (driven through a
    pseudo-terminal), completions/llmctl.fish in fish: `llmctl stat<TAB>` → `status`.
    scripts/setup.sh --dev installs both shells; a missing one fails here."""
    import os
    import re
    import shutil

    exe = shutil.which(shell)
    assert exe, f"{shell} is needed for this test (scripts/setup.sh --dev installs it)"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if shell == "fish":
        r = subprocess.run([exe, "-c", f"source {ROOT / 'completions' / 'llmctl.fish'}; "
                                       "complete -C 'llmctl stat'"],
                           capture_output=True, text=True, env=env, timeout=30)
        assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["status"], r
        return
    r = subprocess.run([exe, "-f", str(ROOT / "tests" / "fixtures" / "zsh-complete.zsh"),
                        str(ROOT / "completions"), "stat"],
                       capture_output=True, text=True, env=env, timeout=60)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|.\x08|\r", "", r.stdout)
    assert "llmctl status" in screen, (screen[-500:], r.stderr)


def test_every_option_of_every_command_is_in_its_section_of_the_reference():
    """Not the generator against itself: the CLI's own parameters against the doc."""
    import typer

    from llmctl.cli import app

    doc = (ROOT / "docs" / "cli.md").read_text()

    def walk(cmd, path):
        yield path, cmd
        for n, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, f"{path} {n}")

    checked = 0
    for path, cmd in walk(typer.main.get_command(app), "llmctl"):
        start = doc.index(f"## `{path}`\n")
        end = doc.find("\n## `", start + 1)
        section = doc[start:end if end > 0 else None]
        for param in cmd.params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("-"):
                    assert f"{flag}" in section, (path, flag)
                    checked += 1
    assert checked > 40, checked
