"""The local model store: which models are on disk, complete, and what they hold.

May import: config, errors, fetch (a name), files. Reads and writes no network. A hub
model is complete when llmctl's pull record (`pulls.json` in the store) says so and every recorded file
is there at its recorded size; the record is written "pulling" before the first byte
and "complete" after the last, so an interrupted pull is never taken for a model
(`up` pulls it again, and the pull resumes the parts it left: fetch.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import models_dir
from .fetch import SUFFIX as PARTIAL
from .files import write_atomic

RECORDS = "pulls.json"


def hub_cache() -> Path:
    """Where hub downloads go: the Hugging Face cache (shared with vLLM and `hf`), or
    `models/hub` in the store when LLMCTL_HOME or LLMCTL_MODELS is set."""
    if os.environ.get("LLMCTL_HOME") or os.environ.get("LLMCTL_MODELS"):
        return models_dir() / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(hf_home) / "hub"


def repo_folder(repo: str) -> Path:
    """The Hugging Face cache's folder for one repo (every revision, blobs and refs)."""
    return hub_cache() / ("models--" + repo.replace("/", "--"))


def store_folder(source: str) -> Path:
    """Where llmctl keeps a model it prepared itself (the converted demo)."""
    return models_dir() / source.replace("/", "--")


@dataclass(frozen=True)
class FileRecord:
    name: str
    size: int
    sha256: str | None = None  # LFS files: the hub's sha256 of the content
    blob_id: str | None = None  # other files: git's blob id (sha1 of "blob N\0" + content)


def _records_path() -> Path:
    return models_dir() / RECORDS


def records() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_records_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(data: dict[str, Any]) -> None:
    write_atomic(_records_path(), json.dumps(data, indent=2, sort_keys=True))


def record(repo: str, *, status: str, revision: str, commit: str, path: Path,
           files: list[FileRecord]) -> None:
    data = records()
    data[repo] = {"status": status, "revision": revision, "commit": commit, "path": str(path),
                  "files": {f.name: {"size": f.size, "sha256": f.sha256, "blob_id": f.blob_id}
                            for f in files},
                  "at": time.time()}
    _write(data)


def forget(repo: str) -> None:
    data = records()
    if data.pop(repo, None) is not None:
        _write(data)


def complete(repo: str, revision: str = "main") -> Path | None:
    """The snapshot folder of a completely pulled repo, else None."""
    rec = records().get(repo)
    if rec is None:
        return cached_snapshot(repo, revision)
    if rec.get("status") != "complete" or revision not in (rec.get("revision"),
                                                           rec.get("commit")):
        return None  # interrupted, or another revision than the one asked for
    path = Path(rec["path"])
    for name, f in rec["files"].items():
        p = path / name
        try:
            if p.stat().st_size != f["size"]:
                return None
        except OSError:
            return None
    return path


def cached_snapshot(repo: str, revision: str = "main") -> Path | None:
    """A snapshot another tool (`hf download`, vLLM, an older llmctl) left in the Hugging
    Face cache, for a repo llmctl has no record of: used when it looks whole — config.json,
    every weights shard its index names (or one safetensors file), no partial download."""
    root = repo_folder(repo)
    try:
        commit = (root / "refs" / revision).read_text().strip()
    except OSError:
        commit = revision  # a commit hash given as the revision
    snap = root / "snapshots" / commit
    blobs = root / "blobs"
    if not (snap / "config.json").is_file() or any(blobs.glob("*.incomplete")) or any(
            blobs.glob("*" + PARTIAL)):  # a pull of ours under way or killed
        return None
    index = snap / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        return snap if all((snap / s).is_file() for s in shards) else None
    return snap if any(snap.glob("*.safetensors")) else None


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_ok(path: Path, f: dict[str, Any]) -> bool:
    """The file's content against the hub's hash for it (sha256 for LFS, git's blob id)."""
    try:
        if path.stat().st_size != f["size"]:
            return False
        if f.get("sha256"):
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            return h.hexdigest() == f["sha256"]
        if f.get("blob_id"):
            return git_blob_id(path.read_bytes()) == f["blob_id"]
    except OSError:
        return False
    return True  # the hub gave no hash for it: its size is all there is to check


def verify(repo: str) -> list[str]:
    """Files of a pulled repo whose content does not match the hub's hashes."""
    rec = records().get(repo)
    if not rec:
        return []
    path = Path(rec["path"])
    return [name for name, f in rec["files"].items() if not file_ok(path / name, f)]


def drop_file(repo: str, name: str) -> None:
    """Remove one file of a pulled repo (its snapshot link and the blob behind it), so the
    next download fetches it again."""
    rec = records().get(repo)
    if not rec:
        return
    link = Path(rec["path"]) / name
    target = link.resolve() if link.is_symlink() else None
    link.unlink(missing_ok=True)
    if target is not None:
        target.unlink(missing_ok=True)


def disk_bytes(folder: Path) -> int:
    """Bytes on disk of a model folder (links followed once: the cache's blobs)."""
    total = 0
    seen = set()
    for p in folder.rglob("*"):
        try:
            real = p.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            total += real.stat().st_size
        except OSError:
            continue
    return total


def remove(repo: str) -> tuple[Path, int] | None:
    """Delete a hub repo's cache folder (every revision) and its record, or a prepared
    model's store folder: (the folder, the bytes it held), or None when there was none."""
    for folder in (repo_folder(repo), store_folder(repo)):
        if folder.exists():
            size = disk_bytes(folder)
            shutil.rmtree(folder)
            forget(repo)
            return folder, size
    forget(repo)
    return None


def free_bytes(where: Path) -> int:
    """Free space on the filesystem that holds `where` (or its closest existing parent)."""
    p = where
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
