"""A small stand-in for the model hub's file protocol, over real sockets, for tests that
run the real huggingface_hub client against it (`HF_ENDPOINT=http://127.0.0.1:PORT`).

    python tests/fakes/hub.py --port 9001 --repo org/name=FOLDER [--repo …]
        [--gated org/name=TOKEN] [--slow BYTES_PER_S] [--declare org/name:FILE=SIZE]

It serves each folder as a repo at one fixed commit (revisions "main" and the commit):
  GET  /api/models/{repo}[/revision/{rev}]       model info: sha, siblings with size,
                                                 blobId and, for LFS-style files (weights
                                                 and anything over 1 MiB), lfs.sha256
  HEAD|GET /{repo}/resolve/{rev}/{path}          the file, with X-Repo-Commit, ETag
                                                 (sha256 for LFS files, git's blob id
                                                 otherwise) and X-Linked-Size; a Range
                                                 request gets 206
  GET  /control/log                              the file requests seen: [path, range]
Errors are the hub's: 404 with X-Error-Code RepoNotFound, RevisionNotFound or
EntryNotFound; a gated repo without its Bearer token is 401 with GatedRepo.
--slow sends file bodies requested without a Range at that rate (so a test can kill a
pull mid-file); resumed requests get full speed. --declare makes model info claim a
size a file does not have (for the disk-space check).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPOS: dict[str, Path] = {}
GATED: dict[str, str] = {}
DECLARED: dict[tuple[str, str], int] = {}
LOG: list[tuple[str, str | None]] = []
LOCK = threading.Lock()
SLOW = 0


_HASHES: dict[tuple[Path, float], tuple[str, str]] = {}


def hashes(p: Path, data: bytes) -> tuple[str, str]:
    """(sha256, git blob id) of a file, computed once per version of it."""
    key = (p, p.stat().st_mtime)
    if key not in _HASHES:
        _HASHES[key] = (hashlib.sha256(data).hexdigest(),
                        hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
    return _HASHES[key]


def lfs(name: str, size: int) -> bool:
    return name.endswith((".safetensors", ".bin", ".gguf", ".pth", ".onnx")) or size > 1 << 20


def etag(p: Path, name: str, data: bytes) -> str:
    sha256, blob_id = hashes(p, data)
    return sha256 if lfs(name, len(data)) else blob_id


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _allowed(self, repo: str) -> bool:
        token = GATED.get(repo)
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            self._error(401, "GatedRepo")
            return False
        return True

    def _info(self, repo: str, rev: str | None) -> None:
        if repo not in REPOS:
            return self._error(401, "RepoNotFound")  # the hub's answer to missing and private
        if not self._allowed(repo):
            return
        if rev not in (None, "main", COMMIT):
            return self._error(404, "RevisionNotFound")
        siblings = []
        for p in sorted(x for x in REPOS[repo].rglob("*") if x.is_file()):
            name, data = str(p.relative_to(REPOS[repo])), p.read_bytes()
            size = DECLARED.get((repo, name), len(data))
            sha256, blob_id = hashes(p, data)
            entry = {"rfilename": name, "size": size, "blobId": blob_id}
            if lfs(name, len(data)):
                entry["lfs"] = {"size": size, "sha256": sha256, "pointerSize": 134}
            siblings.append(entry)
        self._json({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings,
                    "private": False, "gated": "manual" if repo in GATED else False})

    def _file(self, body: bool) -> None:
        m = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
        if not m or m.group(1) not in REPOS:
            return self._error(401, "RepoNotFound")
        repo, rev, name = m.groups()
        if not self._allowed(repo):
            return
        if rev not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        f = REPOS[repo] / name
        if not f.is_file():
            return self._error(404, "EntryNotFound")
        data = f.read_bytes()
        start, end = 0, len(data) - 1
        header = self.headers.get("Range")
        rng = re.match(r"bytes=(\d+)-(\d*)", header or "")
        if body:
            with LOCK:
                LOG.append((name, header))
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else end, len(data) - 1)
        chunk = data[start:end + 1]
        self.send_response(206 if rng else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag(f, name, data)}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(chunk)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if SLOW and not rng:
            step = max(1, SLOW // 20)
            for i in range(0, len(chunk), step):
                self.wfile.write(chunk[i:i + step])
                self.wfile.flush()
                time.sleep(step / SLOW)
        else:
            self.wfile.write(chunk)

    def do_HEAD(self) -> None:
        self._file(body=False)

    def do_GET(self) -> None:
        if self.path.startswith("/control/log"):
            with LOCK:
                return self._json(LOG)
        m = re.match(r"^/api/models/([^/?]+/[^/?]+)(?:/revision/([^/?]+))?", self.path)
        if m:
            return self._info(m.group(1), m.group(2))
        self._file(body=True)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-file (a killed pull) is expected, not a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def main() -> None:
    global SLOW
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--repo", action="append", default=[], help="org/name=FOLDER")
    ap.add_argument("--gated", action="append", default=[], help="org/name=TOKEN")
    ap.add_argument("--declare", action="append", default=[], help="org/name:FILE=SIZE")
    ap.add_argument("--slow", type=int, default=0, help="bytes per second")
    args = ap.parse_args()
    for spec in args.repo:
        name, _, folder = spec.partition("=")
        REPOS[name] = Path(folder)
    for spec in args.gated:
        name, _, token = spec.partition("=")
        GATED[name] = token
    for spec in args.declare:
        where, _, size = spec.partition("=")
        repo, _, name = where.partition(":")
        DECLARED[(repo, name)] = int(size)
    SLOW = args.slow
    Server(("127.0.0.1", args.port), Hub).serve_forever()


if __name__ == "__main__":
    main()
