"""A small stand-in for the model hub's file protocol, over real sockets, for tests that
run the real huggingface_hub client against it (`HF_ENDPOINT=http://127.0.0.1:PORT`).

    python tests/fakes/hub.py --port 9001 --repo org/name=FOLDER [--repo …]

It serves each folder as a repo at one fixed commit:
  HEAD|GET /{org}/{name}/resolve/{revision}/{path}   the file, with X-Repo-Commit, ETag and
                                                     X-Linked-Size; Range requests get 206
  GET /api/models/{org}/{name}[/revision/{rev}]      the repo's info: sha and its files
Anything else is 404 with the hub's X-Error-Code, as the real hub answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPOS: dict[str, Path] = {}


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _missing(self, code: str = "EntryNotFound") -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _file(self, body: bool) -> None:
        m = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
        if not m or m.group(1) not in REPOS:
            return self._missing("RepoNotFound")
        if m.group(2) not in ("main", COMMIT):
            return self._missing("RevisionNotFound")
        f = REPOS[m.group(1)] / m.group(3)
        if not f.is_file():
            return self._missing()
        data = f.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        start, end = 0, len(data) - 1
        rng = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else end, len(data) - 1)
        chunk = data[start:end + 1]
        self.send_response(206 if rng else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(chunk)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(chunk)

    def do_HEAD(self) -> None:
        self._file(body=False)

    def do_GET(self) -> None:
        m = re.match(r"^/api/models/(.+?/[^/?]+)(?:/revision/([^/?]+))?", self.path)
        if not m:
            return self._file(body=True)
        if m.group(1) not in REPOS:
            return self._missing("RepoNotFound")
        files = sorted(p for p in REPOS[m.group(1)].rglob("*") if p.is_file())
        info = json.dumps({"id": m.group(1), "modelId": m.group(1), "sha": COMMIT,
                           "siblings": [{"rfilename": str(p.relative_to(REPOS[m.group(1)])),
                                         "size": p.stat().st_size} for p in files]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(info)))
        self.end_headers()
        self.wfile.write(info)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--repo", action="append", default=[], help="org/name=FOLDER")
    args = ap.parse_args()
    for spec in args.repo:
        name, _, folder = spec.partition("=")
        REPOS[name] = Path(folder)
    ThreadingHTTPServer(("127.0.0.1", args.port), Hub).serve_forever()


if __name__ == "__main__":
    main()
