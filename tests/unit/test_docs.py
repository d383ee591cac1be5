import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_and_completions_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_help_and_status_do_not_import_heavy_modules():
    code = ("import sys; import llmctl.cli; "
            "print(' '.join(m for m in ('vllm', 'torch', 'transformers', 'fastapi', 'uvicorn', "
            "'huggingface_hub', 'pynvml', 'aiohttp', 'httpx') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"]])
def test_status_runs_without_heavy_modules_or_typer(tmp_path, argv):
    """The `llmctl` entry point answers status without the typer app (and its pydantic)."""
    import os

    code = ("import sys\nfrom llmctl.__main__ import main\n"
            f"sys.argv = ['llmctl', *{argv!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('vllm', 'torch', 'transformers', 'fastapi', 'uvicorn', "
            "'huggingface_hub', 'aiohttp', 'httpx', 'typer', 'pydantic') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "HEAVY []" in r.stderr, r.stderr
    assert ('"running": false' if "--json" in argv else "daemon  not running") in r.stdout


def test_the_fast_status_and_the_typer_command_print_the_same(tmp_path):
    import os

    env = {**os.environ, "LLMCTL_HOME": str(tmp_path), "NO_COLOR": "1", "COLUMNS": "120"}
    fast = subprocess.run([sys.executable, "-m", "llmctl", "status", "--json"], env=env,
                          capture_output=True, text=True)
    # A repeated flag is not a fast-path command line: typer parses this one.
    typed = subprocess.run([sys.executable, "-m", "llmctl", "status", "--json", "--json"],
                           env=env, capture_output=True, text=True)
    assert fast.returncode == typed.returncode == 0, (fast.stderr, typed.stderr)
    assert fast.stdout == typed.stdout and '"daemon"' in fast.stdout


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
