import subprocess
import sys
from pathlib import Path

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


def test_status_runs_without_heavy_modules(tmp_path):
    import os

    code = ("import sys\nfrom llmctl.cli import main\nsys.argv = ['llmctl', 'status']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('vllm', 'torch', 'transformers', 'fastapi', 'uvicorn', "
            "'huggingface_hub', 'aiohttp') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "daemon  not running" in r.stdout
    assert "HEAVY []" in r.stderr, r.stderr
