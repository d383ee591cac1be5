"""A small stand-in for the model hub's file protocol, over real sockets, for tests that
run the real huggingface_hub client against it (`HF_ENDPOINT=http://127.0.0.1:PORT`).

    python tests/fakes/hub.py --port 9001 --repo org/name=FOLDER [--repo …]
        [--gated org/name=TOKEN] [--declare org/name:FILE=SIZE]
        [--conn-rate BYTES_PER_S] [--total-rate BYTES_PER_S] [--no-range]
        [--busy N[:SECONDS]] [--fail N[:STATUS]] [--redirect URL] [--stall BYTES]
        [--cut BYTES] [--range-cap BYTES] [--ignore-range-at N] [--keep-alive SECONDS]

It serves each folder as a repo at one fixed commit (revisions "main" and the commit):
  GET  /api/models/{repo}[/revision/{rev}]       model info: sha, siblings with size,
                                                 blobId and, for LFS-style files (weights
                                                 and anything over 1 MiB), lfs.sha256
  HEAD|GET /{repo}/resolve/{rev}/{path}          the file, with X-Repo-Commit, ETag
                                                 (sha256 for LFS files, git's blob id
                                                 otherwise) and X-Linked-Size; a Range
                                                 request gets 206 (one range per request)
  GET  /api/models/{repo}/tree/{rev}             every file, as `hf download` lists them
  GET  /control/log                              every file GET: {name, range, status,
                                                 sent (body bytes), start, end (epoch s),
                                                 auth (its Authorization header or null)}
  GET  /control/set?stall=N                      change --stall while running (0: off)
Errors are the hub's: 404 with X-Error-Code RepoNotFound, RevisionNotFound or
EntryNotFound; a gated repo without its Bearer token is 401 with GatedRepo.

Bodies are sent from the file at the asked offset (os.sendfile: no file is read whole per
request), paced like a CDN: --conn-rate caps each connection, --total-rate all of them
together. --no-range answers every GET with the whole file (200), as servers without
Range do. --busy N[:S] answers the first N file GETs 429 with Retry-After S (default 1).
--declare makes model info claim a size a file does not have (for the disk-space check).

Faults a CDN shows, for the pull's recovery: --fail N[:STATUS] answers the first N file
GETs STATUS (default 502); --redirect URL sends every file GET to URL (another fake hub
serving the same folder: a second origin, like the hub's CDN) with a 302; --stall BYTES
sends that much of each body, then goes silent until the client hangs up; --range-cap
BYTES answers a range with at most that many bytes (a shorter 206, as the standard
allows); --ignore-range-at N answers the Nth ranged file GET with the whole file (200).
--cut BYTES closes the connection after that much of each body. --keep-alive S closes a
connection that waits S seconds for its next request, as servers do.
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
LOG: list[dict] = []
LOCK = threading.Lock()
CONN_RATE = 0
NO_RANGE = False
BUSY = [0, 1]  # 429s left to send, Retry-After seconds
FAIL = [0, 502]  # error answers left to send, their status
REDIRECT = ""  # another origin serving the same files
STALL = [0]  # body bytes sent before going silent (0: never)
CUT = 0  # body bytes sent before hanging up (0: never)
RANGE_CAP = 0  # the most bytes one 206 carries (0: no cap)
IGNORE_RANGE_AT = [0]  # ranged GETs left until the one answered 200 (0: none)
STEP = 256 * 1024  # bytes per paced send


class Pace:
    """The total cap as a clock: each send books its bytes' time on the shared clock and
    waits for it (a connection's own cap is the same clock, per connection)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.at = 0.0
        self.lock = threading.Lock()

    def book(self, n: int, not_before: float = 0.0) -> float:
        """When `n` more bytes may be sent, no sooner than `not_before`."""
        if not self.rate:
            return not_before
        with self.lock:
            self.at = max(self.at, time.monotonic(), not_before) + n / self.rate
            return self.at - n / self.rate


TOTAL = Pace(0)


_HASHES: dict[tuple[Path, float, int], tuple[str, str]] = {}


def hashes(p: Path) -> tuple[str, str]:
    """(sha256, git blob id) of a file, computed once per version of it, read in blocks."""
    st = p.stat()
    key = (p, st.st_mtime, st.st_size)
    if key not in _HASHES:
        sha, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % st.st_size)
        with open(p, "rb") as f:
            while block := f.read(8 << 20):
                sha.update(block)
                blob.update(block)
        _HASHES[key] = (sha.hexdigest(), blob.hexdigest())
    return _HASHES[key]


def lfs(name: str, size: int) -> bool:
    return name.endswith((".safetensors", ".bin", ".gguf", ".pth", ".onnx")) or size > 1 << 20


def etag(p: Path, name: str) -> str:
    sha256, blob_id = hashes(p)
    return sha256 if lfs(name, p.stat().st_size) else blob_id


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
            name, real = str(p.relative_to(REPOS[repo])), p.stat().st_size
            size = DECLARED.get((repo, name), real)
            sha256, blob_id = hashes(p)
            entry = {"rfilename": name, "size": size, "blobId": blob_id}
            if lfs(name, real):
                entry["lfs"] = {"size": size, "sha256": sha256, "pointerSize": 134}
            siblings.append(entry)
        self._json({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings,
                    "private": False, "gated": "manual" if repo in GATED else False})

    def _tree(self, repo: str, rev: str) -> None:
        """The repo's files as `list_repo_tree` (and so `hf download`) reads them; every
        file, whatever path or recursion is asked."""
        if repo not in REPOS:
            return self._error(401, "RepoNotFound")
        if not self._allowed(repo):
            return
        if rev not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        out = []
        for p in sorted(x for x in REPOS[repo].rglob("*") if x.is_file()):
            name, size = str(p.relative_to(REPOS[repo])), p.stat().st_size
            sha256, blob_id = hashes(p)
            entry = {"type": "file", "path": name, "size": size, "oid": blob_id}
            if lfs(name, size):
                entry["lfs"] = {"oid": sha256, "size": size, "pointerSize": 134}
            out.append(entry)
        self._json(out)

    def _file(self, body: bool) -> None:
        m = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
        if not m or m.group(1) not in REPOS:
            return self._error(401, "RepoNotFound")
        repo, rev, name = m.groups()
        if not self._allowed(repo):
            return
        if rev not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        if REDIRECT and body:
            with LOCK:
                LOG.append({"name": name, "range": self.headers.get("Range"), "status": 302,
                            "sent": 0, "start": time.time(), "end": time.time(),
                            "auth": self.headers.get("Authorization")})
            self.send_response(302)
            self.send_header("Location", REDIRECT + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        f = REPOS[repo] / name
        if not f.is_file():
            return self._error(404, "EntryNotFound")
        size = f.stat().st_size
        start, end = 0, size - 1
        header = self.headers.get("Range")
        rng = None if NO_RANGE else re.match(r"bytes=(\d+)-(\d*)$", header or "")
        entry = {"name": name, "range": header, "status": 200, "sent": 0,
                 "start": time.time(), "end": None, "auth": self.headers.get("Authorization")}
        if body:
            with LOCK:
                LOG.append(entry)
                busy = BUSY[0] > 0
                BUSY[0] -= busy
                fail = FAIL[0] > 0
                FAIL[0] -= fail
                if rng and IGNORE_RANGE_AT[0] > 0:
                    IGNORE_RANGE_AT[0] -= 1
                    if not IGNORE_RANGE_AT[0]:
                        rng = None
            if fail:
                entry["status"] = FAIL[1]
                entry["end"] = time.time()
                return self._error(FAIL[1], "Unavailable")
            if busy:
                entry["status"] = 429
                entry["end"] = time.time()
                self.send_response(429)
                self.send_header("Retry-After", str(BUSY[1]))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else end, size - 1)
            if start >= size or start > end:
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            entry["status"] = 206
            if RANGE_CAP:
                end = min(end, start + RANGE_CAP - 1)
        self.send_response(206 if rng else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag(f, name)}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "none" if NO_RANGE else "bytes")
        self.send_header("Content-Length", str(end + 1 - start))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        self.wfile.flush()
        try:
            self._send(f, start, end + 1 - start, entry)
        finally:
            entry["end"] = time.time()

    def _send(self, f: Path, offset: int, count: int, entry: dict) -> None:
        """`count` bytes of `f` from `offset`, straight from the file (sendfile), at the
        connection's and the total cap's pace."""
        own = time.monotonic()
        with open(f, "rb") as fh:
            while count > 0:
                if STALL[0] and entry["sent"] >= STALL[0]:
                    return self._stall()
                if CUT and entry["sent"] >= CUT:
                    self.close_connection = True
                    return
                n = min(count, STEP) if CONN_RATE or TOTAL.rate else count
                for limit in (STALL[0], CUT):
                    if limit:
                        n = min(n, limit - entry["sent"])
                wait = TOTAL.book(n, max(own, time.monotonic()) if CONN_RATE else 0.0)
                if CONN_RATE:
                    own = wait + n / CONN_RATE
                if (delay := wait - time.monotonic()) > 0:
                    time.sleep(delay)
                sent = self.connection.sendfile(fh, offset, n)
                if not sent:
                    break
                offset += sent
                count -= sent
                entry["sent"] += sent

    def _stall(self) -> None:
        """Silent, the connection open, until the client hangs up (or two minutes)."""
        import select

        self.close_connection = True  # the body is cut short: this connection is done
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if select.select([self.connection], [], [], 0.5)[0]:
                return  # readable: the client closed it (or wrote, which no client does)

    def do_HEAD(self) -> None:
        self._file(body=False)

    def do_GET(self) -> None:
        if self.path.startswith("/control/log"):
            with LOCK:
                return self._json(LOG)
        if self.path.startswith("/control/set?stall="):
            STALL[0] = int(self.path.rpartition("=")[2])
            return self._json({"stall": STALL[0]})
        m = re.match(r"^/api/models/([^/?]+/[^/?]+)/tree/([^/?]+)", self.path)
        if m:
            return self._tree(m.group(1), m.group(2))
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
    global CONN_RATE, NO_RANGE, TOTAL, REDIRECT, RANGE_CAP, CUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--repo", action="append", default=[], help="org/name=FOLDER")
    ap.add_argument("--gated", action="append", default=[], help="org/name=TOKEN")
    ap.add_argument("--declare", action="append", default=[], help="org/name:FILE=SIZE")
    ap.add_argument("--conn-rate", type=int, default=0, help="bytes per second per connection")
    ap.add_argument("--total-rate", type=int, default=0, help="bytes per second in all")
    ap.add_argument("--no-range", action="store_true", help="ignore Range: always 200")
    ap.add_argument("--busy", default="0", help="N[:SECONDS]: the first N file GETs get 429")
    ap.add_argument("--fail", default="0", help="N[:STATUS]: the first N file GETs get STATUS")
    ap.add_argument("--redirect", default="", help="send file GETs to this origin (302)")
    ap.add_argument("--stall", type=int, default=0, help="go silent after BYTES of a body")
    ap.add_argument("--range-cap", type=int, default=0, help="at most BYTES per 206")
    ap.add_argument("--ignore-range-at", type=int, default=0, help="the Nth ranged GET gets 200")
    ap.add_argument("--keep-alive", type=float, default=None,
                    help="close a connection idle this long")
    ap.add_argument("--cut", type=int, default=0, help="hang up after BYTES of a body")
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
    CONN_RATE, NO_RANGE, TOTAL = args.conn_rate, args.no_range, Pace(args.total_rate)
    n, _, wait = args.busy.partition(":")
    BUSY[:] = [int(n), int(wait or 1)]
    n, _, status = args.fail.partition(":")
    FAIL[:] = [int(n), int(status or 502)]
    REDIRECT, STALL[0], RANGE_CAP = args.redirect.rstrip("/"), args.stall, args.range_cap
    IGNORE_RANGE_AT[0], CUT = args.ignore_range_at, args.cut
    Hub.timeout = args.keep_alive  # the socket's timeout: an idle wait for a request ends it
    Server(("127.0.0.1", args.port), Hub).serve_forever()


if __name__ == "__main__":
    main()
