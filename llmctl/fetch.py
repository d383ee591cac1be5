"""Parallel ranged downloads that survive a kill: the transfer half of `pull`.

May import: config (a number), errors, files. It knows HTTP and files, nothing of the hub: hub.py hands
it one `Want` per file (URL, size, sha256, final path) and a judge of error answers, and
gets back the bytes it fetched, or a one-line `ModelError`.

- A file of at least two parts is fetched in ranged parts (16-64 MiB) over a bounded
  pool of connections; smaller files ride side by side, one stream each. The first
  request of a file is the only one in flight until the server shows it honours Range
  (206); a 200 means it does not, and that one stream takes the whole file. Once it has,
  a 200 is a stray answer, taken for a dropped connection. A 206 may bring less than
  asked (its Content-Range says so); the rest is asked for next.
- Parts are written at their offsets (os.pwrite) into `WORK`, the final name plus
  `.llmctl-part`, which no other tool resumes by its size, beside `WORK.json`: each
  part's range, the bytes it holds and their crc32, replaced atomically about once a
  second. After a kill every byte the map names survives; the next run checks each
  recorded range against its crc (a part that fails starts over) and asks only for the
  rest, with Range.
- sha256 covers the whole file in order while it arrives: a hasher thread per file
  follows the contiguous written prefix and reads it back from the page cache in 8 MiB
  blocks (hashlib releases the GIL), so the check ends moments after the last byte, with
  no second pass over the file. Only a file whose size and hash match is renamed to its
  final name; the map cannot localise a wrong whole-file hash, so that file starts over.
- 429 or 503: every connection waits out Retry-After, and the pool halves (once per
  pause: a burst of them is one signal). A dropped connection and a 500, 502 or 504 are
  asked again, through the resolve URL, after a back-off; ATTEMPTS tries in a row that
  bring no byte give up. A stop (Ctrl-C, or another worker's failure) shuts every socket
  down, so that no read waits out TIMEOUT.
- The bytes come through http.client's `readinto`, straight from the socket into one
  4 MiB buffer per connection, written with one pwrite: httpx (which the hub's metadata
  calls use) copies each 64 KiB read three times and writes it on its own, at about
  twice the CPU per GiB. Redirects (the hub's CDN), HTTP(S)_PROXY/NO_PROXY and TLS
  (certifi's roots, or SSL_CERT_FILE, as httpx) are handled here.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PULL_CONNECTIONS
from .errors import ModelError
from .files import write_atomic

MiB = 1 << 20
MIN_PART = 16 * MiB  # below it a request's round trip and a part's bookkeeping cost more
MAX_PART = 64 * MiB  # above it the last parts leave connections idle at the end
CONNECTIONS = PULL_CONNECTIONS
HASH_BLOCK = 8 * MiB
BUFFER = 4 * MiB  # one socket read (readinto) and one pwrite
TIMEOUT = 60.0  # seconds a connection may stay silent
STOP_WAIT = 3.0  # seconds a stop waits for all threads together (reads are cut at once)
REDIRECTS = 5
SAVE_EVERY = 1.0  # seconds between rewrites of a file's map
ATTEMPTS = 5  # tries of one part over dropped connections
TRANSIENT = (500, 502, 504)  # retried like a dropped connection
BUSY_TRIES = 10  # 429/503 answers to one part before giving up
MAX_WAIT = 120.0  # the longest Retry-After honoured as given
SUFFIX = ".llmctl-part"
# Headers that stay with the hub: a redirect to another scheme, host or port drops them
# (huggingface_hub's headers are lowercase, http.client's any case).
PRIVATE = ("authorization", "cookie", "proxy-authorization")


@dataclass(frozen=True)
class Want:
    """One file to fetch. `check` judges a file the hub gave no sha256 for (git's blob
    id); `legacy` is a contiguous partial file an older llmctl left, adopted once."""

    name: str
    url: str
    dest: Path
    size: int
    sha256: str | None = None
    check: Callable[[Path], bool] | None = None
    legacy: Path | None = None

    @property
    def work(self) -> Path:
        return self.dest.with_name(self.dest.name + SUFFIX)

    @property
    def map(self) -> Path:
        return self.dest.with_name(self.dest.name + SUFFIX + ".json")


def layout(size: int, connections: int) -> list[tuple[int, int]]:
    """The parts of a file, [start, end): one when it is smaller than two parts or there
    is one connection; else as many as connections, 16-64 MiB each (whole MiB)."""
    if size < 2 * MIN_PART or connections <= 1:
        return [(0, size)]
    part = min(MAX_PART, max(MIN_PART, -(-size // connections)))
    part = -(-part // MiB) * MiB
    return [(s, min(s + part, size)) for s in range(0, size, part)]


def retry_after(value: str | None, tries: int, now: float | None = None) -> float:
    """Seconds to wait after a 429/503: its Retry-After (seconds or an HTTP date), else
    1, 2, 4 … 30 s by try; never more than MAX_WAIT."""
    if value:
        try:
            return min(MAX_WAIT, max(0.0, float(value)))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value).timestamp()
                return min(MAX_WAIT, max(0.0, when - (time.time() if now is None else now)))
            except (TypeError, ValueError):
                pass
    return float(min(30, 2 ** max(0, tries - 1)))


class _Part:
    """[start, end) of a file; `state` is (bytes held from start, their crc32), replaced
    whole after each write, so a reader in another thread sees a matching pair."""

    __slots__ = ("start", "end", "state", "taken")

    def __init__(self, start: int, end: int, have: int = 0, crc: int = 0) -> None:
        self.start, self.end = start, end
        self.state = (have, crc)
        self.taken = False

    @property
    def done(self) -> bool:
        return self.start + self.state[0] >= self.end


class _File:
    def __init__(self, want: Want, parts: list[_Part]) -> None:
        self.want = want
        self.parts = parts
        self.ranged: bool | None = None  # does the server honour Range? known after a reply
        self.fd = -1
        self.opened = False
        self.opening = False  # a worker is reading back what a killed pull left
        self.finished = False
        self.epoch = 0  # bumped when the parts are replaced by one stream (Range ignored)
        self.lock = threading.Condition()
        self.reported = 0  # bytes the progress display has been told of
        self.saved: Any = None  # the map last written

    def held(self) -> int:
        return sum(p.state[0] for p in self.parts)


class _Stopped(Exception):
    """Another worker failed, or the user interrupted: stop at the next write."""


class _Superseded(Exception):
    """The file became one stream (its server ignored Range): this part's worker quits."""


class Fetcher:
    """Fetch `wants` over at most `connections` connections; `run()` returns the bytes
    fetched. `check_response(status, headers, body, url)` raises a `ModelError` for an
    answer that is an error (>= 400, not 429/503); `events` receives ("file", name, size,
    already), ("advance", name, n), ("done", name) and ("note", text), always from the
    thread that called run()."""

    def __init__(self, wants: list[Want], *, connections: int = CONNECTIONS,
                 headers: dict[str, str] | None = None,
                 check_response: Callable[[int, dict[str, str], bytes, str], None] =
                 lambda *a: None,
                 events: Callable[..., None] = lambda *a: None, label: str = "") -> None:
        self.connections = max(1, connections)
        self.files = [_File(w, [_Part(a, b) for a, b in layout(w.size, self.connections)])
                      for w in wants]
        self.headers = dict(headers or {})
        self.check_response = check_response
        self.events = events
        self.label = label
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.stopping = False
        self.stopped = False  # _stop has run
        self.links: list[_Link] = []  # every worker's, so a stop can cut their reads
        self.allowed = self.connections  # halved on each 429/503
        self.pause_until = 0.0
        self.got = [0] * self.connections  # bytes fetched, per worker: one writer each
        self.queued: list[tuple] = []  # events for the caller's thread
        self.threads: list[threading.Thread] = []
        self.hashers: list[threading.Thread] = []

    # ── the caller's thread ─────────────────────────────────────────────────

    def run(self) -> int:
        for f in self.files:
            self._load(f)
        total_parts = sum(len(f.parts) for f in self.files)
        try:
            for i in range(min(self.connections, max(1, total_parts))):
                t = threading.Thread(target=self._worker, args=(i,), daemon=True,
                                     name=f"pull-{i}")
                t.start()
                self.threads.append(t)
            last_save = time.monotonic()
            while any(t.is_alive() for t in self.threads):
                with self.cond:
                    self.cond.wait(0.2)
                    if self.stopping:  # a worker failed: cut the others' reads (finally)
                        break
                self._report()
                if time.monotonic() - last_save >= SAVE_EVERY:
                    self._save_all()
                    last_save = time.monotonic()
        except BaseException as e:  # KeyboardInterrupt: stop the workers, keep their bytes
            self._stop(e)
            raise
        finally:
            self._stop(None)
            self._save_all()
            self._report()
            self._close_files()
        if self.error is not None:
            raise self.error
        return sum(self.got)

    def _stop(self, error: BaseException | None) -> None:
        """Every thread told to stop, every socket shut (a read blocked on a silent
        connection returns at once, not after TIMEOUT), then all joined within one
        STOP_WAIT."""
        with self.cond:
            if error is not None and self.error is None:
                self.error = error
            if self.stopped:
                return
            self.stopped = self.stopping = True
            self.cond.notify_all()
            links = list(self.links)
        for link in links:
            link.abort()
        for f in self.files:
            with f.lock:
                f.lock.notify_all()
        deadline = time.monotonic() + STOP_WAIT
        for t in [*self.threads, *self.hashers]:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _close_files(self) -> None:
        """The part files' descriptors, once no thread that may write or read them is
        left; one still running (stuck in the kernel) keeps them open until the process
        exits, rather than write into a descriptor that a later open reuses."""
        if any(t.is_alive() for t in [*self.threads, *self.hashers]):
            return
        for f in self.files:
            with f.lock:
                if f.fd >= 0:
                    os.close(f.fd)
                    f.fd = -1

    def _report(self) -> None:
        while self.queued:
            self.events(*self.queued.pop(0))
        for f in self.files:
            if f.opened:
                held = f.held()
                if held > f.reported:
                    self.events("advance", f.want.name, held - f.reported)
                f.reported = held

    def _save_all(self) -> None:
        for f in self.files:
            self._save(f)

    def _save(self, f: _File) -> None:
        with f.lock:
            if not f.opened or f.finished:
                return
            parts = [[p.start, p.end, *p.state] for p in f.parts]
            if parts == f.saved:
                return
            doc = {"size": f.want.size, "sha256": f.want.sha256, "parts": parts}
            write_atomic(f.want.map, json.dumps(doc), 0o644, sync=False)
            f.saved = parts

    # ── what a previous run left ────────────────────────────────────────────

    def _load(self, f: _File) -> None:
        """The parts a killed pull left (its map), or an older llmctl's contiguous
        partial file; anything that does not match this file is dropped."""
        w = f.want
        if w.legacy is not None and w.legacy.exists() and not w.work.exists():
            try:
                have = min(w.legacy.stat().st_size, w.size)
                parts = [[a, b, max(0, min(b, have) - a), None] for a, b in
                         layout(w.size, self.connections)]
                # The map first: a kill between the two leaves the old file where the
                # next run adopts it again (its map is rewritten then).
                write_atomic(w.map, json.dumps({"size": w.size, "sha256": w.sha256,
                                                "parts": parts}), 0o644, sync=False)
                os.replace(w.legacy, w.work)
            except OSError:
                pass  # not adopted: without the part file the map goes below
        parts = _recorded(w)
        if parts is None:
            w.work.unlink(missing_ok=True)
            w.map.unlink(missing_ok=True)
            return
        f.parts = parts

    def _verify_parts(self, f: _File) -> None:
        """Each recorded range read back against its crc32 (one written by an older
        llmctl has none yet: it gets one here, and the sha256 at the end judges it)."""
        bad = []
        for p in f.parts:
            have, crc = p.state
            if not have:
                continue
            got = 0
            for off in range(p.start, p.start + have, HASH_BLOCK):
                if self.stopping:
                    raise _Stopped
                block = os.pread(f.fd, min(HASH_BLOCK, p.start + have - off), off)
                got = zlib.crc32(block, got)
            if crc is None:
                p.state = (have, got)
            elif got != crc:
                p.state = (0, 0)
                bad.append(p)
        if bad:
            self.queued.append(("note", f"{self.label}{f.want.name}: {len(bad)} part(s) on disk "
                                "did not match their checksum; fetching them again"))

    # ── workers ─────────────────────────────────────────────────────────────

    def _worker(self, index: int) -> None:
        link = _Link(self.headers)
        with self.cond:
            self.links.append(link)
            if self.stopping:
                return
        try:
            while (job := self._next(index)) is not None:
                f, part = job
                if part is None:
                    try:
                        self._open(f)
                    finally:
                        with self.cond:
                            f.opening = False
                            self.cond.notify_all()
                    continue
                self._fetch_part(f, part, index, link)
                if f.ranged is None:  # one whole-file part: nothing else to ask of it
                    f.ranged = True
                with f.lock:  # the hasher may be waiting for the last part
                    f.lock.notify_all()
        except _Stopped:
            pass
        except BaseException as e:  # the first failure stops every worker
            link.close()
            with self.cond:
                if self.error is None:
                    self.error = e
                self.stopping = True
                self.cond.notify_all()
            for f in self.files:
                with f.lock:
                    f.lock.notify_all()
        finally:
            link.close()

    def _next(self, index: int) -> tuple[_File, _Part | None] | None:
        """The first part nobody fetches, files in order, or (file, None): open that file
        first. None when all are done, or this worker is beyond the pool the hub's 429s
        left."""
        with self.cond:
            while True:
                if self.stopping or index >= self.allowed:
                    return None
                pending = False
                for f in self.files:
                    if f.finished:
                        continue
                    pending = True
                    if f.opening:
                        continue
                    if not f.opened:
                        f.opening = True
                        return f, None
                    if f.ranged is None and any(p.taken for p in f.parts):
                        continue  # its first reply says whether the others may be ranged
                    for p in f.parts:
                        if not p.taken and not p.done:
                            p.taken = True
                            return f, p
                if not pending:
                    return None
                self.cond.wait(0.5)

    def _open(self, f: _File) -> None:
        """The part file (the size the file will be), what is on it checked, its hasher."""
        w = f.want
        w.work.parent.mkdir(parents=True, exist_ok=True)
        f.fd = os.open(w.work, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(f.fd).st_size != w.size:
                os.ftruncate(f.fd, w.size)
        except OSError as e:
            raise self._disk_error(w, e) from None
        self._verify_parts(f)
        f.opened = True
        f.reported = f.held()
        self.queued.append(("file", w.name, w.size, f.reported))
        t = threading.Thread(target=self._hasher, args=(f,), daemon=True,
                             name=f"sha256-{w.name}")
        self.hashers.append(t)
        t.start()

    def _fetch_part(self, f: _File, part: _Part, index: int, link: _Link) -> None:
        first = part
        try:
            self._fetch(f, part, index, link)
        finally:
            with self.cond:
                first.taken = False
                for p in f.parts:  # the one stream a Range-less server turned it into
                    if p is not first and p.taken and p.done:
                        p.taken = False
                self.cond.notify_all()

    def _fetch(self, f: _File, part: _Part, index: int, link: _Link) -> None:
        w = f.want
        drops = busy = 0
        epoch = f.epoch
        why = "the connection to the hub kept dropping"
        while not part.done and epoch == f.epoch:  # else the file became one stream
            self._wait_turn()
            have, _ = part.state
            start = part.start + have
            whole = start == 0 and part.end == w.size
            rng = None if whole else f"bytes={start}-{part.end - 1}"
            try:
                r = link.get(w.url, rng)
                try:
                    if r.status in (429, 503):
                        r.read()
                        busy += 1
                        if busy > BUSY_TRIES:
                            raise ModelError(
                                f"{self.label}{w.name}: the hub kept answering {r.status} "
                                f"(too busy) after {BUSY_TRIES} waits", "wait a while and "
                                "run `llmctl pull` again (it resumes), or use fewer "
                                "connections (--connections)")
                        self._busy(retry_after(r.getheader("Retry-After"), busy))
                        continue
                    if r.status == 407:
                        raise _proxy_auth(f"{self.label}{w.name}")
                    if r.status in TRANSIENT:  # a hiccup of the hub or its CDN: ask again
                        why = f"the hub kept answering {r.status}"
                        raise http.client.HTTPException(why)
                    if r.status >= 300:
                        body = r.read(65536)
                        self.check_response(r.status, dict(r.getheaders()), body, link.url)
                        raise ModelError(f"{self.label}{w.name}: the hub answered {r.status}",
                                         "try again later")
                    stop = part.end
                    if r.status == 200 and not whole:
                        if f.ranged:  # it honoured Range before: a stray answer, not a rule
                            raise http.client.HTTPException("a whole file to a range")
                        part, start = self._one_stream(f, part), 0
                        epoch, stop = f.epoch, part.end
                    elif r.status == 206:
                        stop = content_range(r.getheader("Content-Range"), start, part.end,
                                             w.size)
                        if f.ranged is None:
                            f.ranged = True
                            with self.cond:
                                self.cond.notify_all()
                    if r.length is not None and r.length != stop - start:
                        raise http.client.HTTPException("a length other than the one asked")
                    self._write(f, part, r, start, stop, index, link.buffer, epoch)
                finally:
                    if not r.isclosed():  # left unread: no later request may read its rest
                        link.close()
                    r.close()
                drops = 0
            except _Superseded:
                return
            except ssl.SSLCertVerificationError as e:
                raise ModelError(f"{self.label}{w.name}: the hub's TLS certificate was refused "
                                 f"({e.verify_message})", "behind a proxy that inspects TLS, "
                                 "set SSL_CERT_FILE to its CA bundle") from None
            except (OSError, http.client.HTTPException) as e:  # the network's; the disk's are ModelError
                link.close()
                if self.stopping:  # its socket was shut by the stop
                    raise _Stopped from None
                if str(e).startswith("Tunnel connection failed: 407"):  # http.client's CONNECT
                    raise _proxy_auth(f"{self.label}{w.name}") from None
                if part.start + part.state[0] > start:
                    drops = 0  # it brought bytes: go on at once; only fruitless tries count
                    continue
                drops += 1
                if drops >= ATTEMPTS:
                    raise ModelError(f"{self.label}{w.name}: {why}", "run `llmctl pull` "
                                     "again: it resumes where it stopped") from None
                self._sleep(min(2 ** drops, 10))

    def _one_stream(self, f: _File, part: _Part) -> _Part:
        """The server ignored Range (200 to a ranged request): this stream brings the
        whole file, so the file becomes one part from 0, and what the parts held goes."""
        whole = _Part(0, f.want.size)
        whole.taken = True
        with self.cond, f.lock:
            f.parts = [whole]
            f.ranged = False
            f.epoch += 1
            f.reported = 0
            f.lock.notify_all()
        self.queued.append(("file", f.want.name, f.want.size, 0))
        return whole

    def _write(self, f: _File, part: _Part, r: http.client.HTTPResponse, start: int,
               end: int, index: int, buffer: memoryview, epoch: int) -> None:
        """The response body, [start, end) of the part, into the part file at its
        offsets: socket → buffer (readinto) → pwrite, a crc32 of each buffer, and no lock
        but a nudge to the hasher per 8 MiB. Stops when the file's parts are replaced by
        one stream (`epoch`)."""
        fd, lock, got = f.fd, f.lock, self.got
        have, crc = part.state
        pos = part.start + have
        if pos != start:
            raise RuntimeError("the part moved under its worker")
        nudge = pos + HASH_BLOCK
        while pos < end:
            if self.stopping:
                raise _Stopped
            if f.epoch != epoch:
                raise _Superseded
            n = r.readinto(buffer[:min(len(buffer), end - pos)])
            if not n:
                raise http.client.IncompleteRead(b"", end - pos)
            view = buffer[:n]
            try:
                done = 0
                while done < n:
                    done += os.pwrite(fd, view[done:], pos + done)
            except OSError as e:
                raise self._disk_error(f.want, e) from None
            crc = zlib.crc32(view, crc)
            pos += n
            part.state = (pos - part.start, crc)
            got[index] += n
            if pos >= nudge or pos >= end:
                nudge = pos + HASH_BLOCK
                with lock:
                    lock.notify_all()

    def _disk_error(self, w: Want, e: OSError) -> ModelError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            free = shutil.disk_usage(w.work.parent).free
            return ModelError(f"{self.label}{w.name}: the disk filled up while pulling "
                              f"({free // MiB} MiB free in {w.work.parent})",
                              "free some space, then run `llmctl pull` again: it resumes "
                              "where it stopped")
        return ModelError(f"{self.label}{w.name}: cannot write {w.work}: {e.strerror}",
                          "check the folder's permissions and the disk")

    def _busy(self, wait: float) -> None:
        """The hub is rate limiting: every connection pauses, and the pool halves, once
        per pause."""
        with self.cond:
            now = time.monotonic()
            if now >= self.pause_until:  # the other answers of a burst are the same news
                self.allowed = max(1, self.allowed // 2)
            self.pause_until = max(self.pause_until, now + wait)
            self.cond.notify_all()

    def _wait_turn(self) -> None:
        with self.cond:
            while True:
                if self.stopping:
                    raise _Stopped
                left = self.pause_until - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(left)

    def _sleep(self, seconds: float) -> None:
        """A back-off that a stop ends at once."""
        with self.cond:
            if self.cond.wait_for(lambda: self.stopping, timeout=seconds):
                raise _Stopped

    # ── hashing and finishing ───────────────────────────────────────────────

    def _hasher(self, f: _File) -> None:
        """sha256 of the file in order, following the contiguous written prefix; when the
        last byte is in, compare and move the file to its final name."""
        import hashlib

        w = f.want
        try:
            while True:
                digest, pos, epoch = hashlib.sha256(), 0, f.epoch
                while pos < w.size and epoch == f.epoch:
                    with f.lock:
                        upto = self._prefix(f, pos)
                        if upto - pos < HASH_BLOCK and upto < w.size:
                            if self.stopping or self.error is not None:
                                return
                            f.lock.wait(0.5)
                            continue
                    while pos < upto and epoch == f.epoch:
                        if self.stopping:
                            return
                        n = min(HASH_BLOCK, upto - pos)
                        digest.update(os.pread(f.fd, n, pos))
                        pos += n
                if epoch == f.epoch:
                    break
            with f.lock:
                f.lock.wait_for(lambda: f.finished or all(p.done for p in f.parts)
                                or self.stopping, timeout=None)
                if self.stopping:  # the next run checks the parts and hashes them again
                    return
            self._finish(f, digest.hexdigest())
        except BaseException as e:
            with self.cond:
                if self.error is None:
                    self.error = e
                self.stopping = True
                self.cond.notify_all()

    @staticmethod
    def _prefix(f: _File, pos: int) -> int:
        """How far the bytes from `pos` are written without a gap."""
        for p in f.parts:
            if p.end <= pos:
                continue
            reach = p.start + p.state[0]
            if reach < p.end:
                return max(pos, reach)
            pos = max(pos, p.end)
        return pos

    def _finish(self, f: _File, sha256: str) -> None:
        w = f.want
        os.fsync(f.fd)  # the blob is only named once its bytes are on disk
        size = os.fstat(f.fd).st_size
        ok = size == w.size and (sha256 == w.sha256 if w.sha256 else
                                 (w.check(w.work) if w.check else True))
        with f.lock:
            f.finished = True
            os.close(f.fd)
            f.fd = -1
            if not ok:
                w.work.unlink(missing_ok=True)
                w.map.unlink(missing_ok=True)
                raise ModelError(f"{self.label}{w.name}: what arrived does not match the "
                                 "hub's size and hash", "run `llmctl pull` again")
            os.replace(w.work, w.dest)
            w.map.unlink(missing_ok=True)
        with self.cond:
            self.queued.append(("done", w.name))
            self.cond.notify_all()


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def content_range(value: str | None, start: int, end: int, size: int) -> int:
    """Where a 206's body ends (exclusive), by its Content-Range `bytes S-E/T`: S must be
    the `start` asked for, E within the part [start, end), T the file's size or `*`. A
    shorter range than asked is fine: what comes is written, the rest asked for next."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if (m is None or int(m[1]) != start or not start <= int(m[2]) < end
            or m[3] not in ("*", str(size))):
        raise http.client.HTTPException(f"a range other than the one asked ({value!r})")
    return int(m[2]) + 1


def _recorded(w: Want) -> list[_Part] | None:
    """The parts a killed pull's map records for `w`; None when there is no map, no part
    file, or the map is of another file, unreadable, or its parts do not tile the file."""
    try:
        doc = json.loads(w.map.read_text())
        if not w.work.exists() or doc["size"] != w.size or doc["sha256"] != w.sha256:
            return None
        parts = [_Part(int(a), int(b), int(h), c) for a, b, h, c in doc["parts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (not parts or parts[0].start != 0 or parts[-1].end != w.size or any(
            p.end != q.start or not 0 <= p.state[0] <= p.end - p.start
            or not (p.state[1] is None or type(p.state[1]) is int)
            for p, q in zip(parts, [*parts[1:], _Part(w.size, w.size)], strict=True))):
        return None
    return parts


def held(want: Want) -> int:
    """Bytes of `want` a killed pull left on disk (by its map, or an older llmctl's
    partial file), before any check: what the disk check may count as already here."""
    parts = _recorded(want)
    if parts is not None:
        return sum(p.state[0] for p in parts)
    try:
        return min(want.size, want.legacy.stat().st_size) if want.legacy else 0
    except OSError:
        return 0


class _Link:
    """One worker's connections, kept alive per origin, and its buffer. `get` follows
    redirects (the hub sends weights to its CDN), drops the Authorization and Cookie
    headers, in any case, when one leaves the origin (scheme, host and port), and goes
    through HTTP(S)_PROXY unless NO_PROXY spares the host."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self.buffer = memoryview(bytearray(BUFFER))
        self.url = ""
        self.lock = threading.Lock()  # conns, against abort() from the stopping thread
        self.aborted = False

    def get(self, url: str, rng: str | None) -> http.client.HTTPResponse:
        headers = dict(self.headers)
        if rng:
            headers["Range"] = rng
        origin = _origin(urllib.parse.urlsplit(url))
        for _ in range(REDIRECTS + 1):
            u = urllib.parse.urlsplit(url)
            if _origin(u) != origin:  # the hub's token is not its CDN's business
                headers = {k: v for k, v in headers.items() if k.lower() not in PRIVATE}
            conn, target, extra = self._conn(u)
            r = self._ask(conn, target, {**headers, **extra})
            self.url = url
            location = r.getheader("Location")
            if r.status in (301, 302, 303, 307, 308) and location:
                r.read()
                url = urllib.parse.urljoin(url, location)
                continue
            return r
        raise http.client.HTTPException("too many redirects")

    def _ask(self, conn: http.client.HTTPConnection, target: str, headers: dict[str, str]
             ) -> http.client.HTTPResponse:
        """One request and its answer's head. A kept-alive connection the server closed
        while it sat idle fails at once; that is no dropped transfer: asked again, once,
        on a new connection, without counting or waiting."""
        reused = conn.sock is not None
        while True:
            try:
                conn.request("GET", target, headers=headers)
                if self.aborted:  # set before abort() looked for this socket: it missed it
                    raise _Stopped
                return conn.getresponse()
            except (http.client.BadStatusLine, ConnectionError):
                conn.close()
                if not reused or self.aborted:
                    raise
                reused = False

    def _conn(self, u: urllib.parse.SplitResult
              ) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """A connection for the URL's origin (made once, through a proxy when one is set),
        what to put on the request line, and the headers a plain proxy needs."""
        port = u.port or (443 if u.scheme == "https" else 80)
        host = u.hostname or ""
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        proxy = urllib.request.getproxies().get(u.scheme)
        via = None
        if proxy and not urllib.request.proxy_bypass(host):
            via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if via.scheme != "http":  # http.client speaks to a proxy in plain text only
                raise ModelError(f"{u.scheme.upper()}_PROXY is {via.scheme}://{via.hostname}"
                                 f"{f':{via.port}' if via.port else ''}, which `llmctl pull` "
                                 "cannot talk to", "give the proxy's http:// address: an "
                                 "https download is still encrypted end to end through it")
        auth = {}
        if via is not None and via.username:
            pair = f"{urllib.parse.unquote(via.username)}:{urllib.parse.unquote(via.password or '')}"
            auth = {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        key = (u.scheme, host, port)
        with self.lock:
            if self.aborted:
                raise _Stopped
            conn = self.conns.get(key)
        if conn is None:
            at = (via.hostname or "", via.port or 80) if via is not None else (host, port)
            if u.scheme == "https":
                conn = http.client.HTTPSConnection(*at, timeout=TIMEOUT, context=_tls())
                if via is not None:
                    conn.set_tunnel(host, port, headers=auth)
            else:
                conn = http.client.HTTPConnection(*at, timeout=TIMEOUT)
            with self.lock:
                self.conns[key] = conn
        if via is not None and u.scheme == "http":  # a plain proxy takes the whole URL
            return conn, urllib.parse.urlunsplit(u), auth
        return conn, target, {}

    def close(self) -> None:
        with self.lock:
            conns = list(self.conns.values())
            self.conns.clear()
        for conn in conns:
            conn.close()

    def abort(self) -> None:
        """From the stopping thread: no new request, and every socket shut, so that a
        read blocked on a silent connection returns now. shutdown(), not close(): the
        worker still owns the descriptor (socket.socket's, which an SSL socket would
        otherwise take for the end of TLS)."""
        with self.lock:
            self.aborted = True
            conns = list(self.conns.values())
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:  # closed meanwhile
                    pass


def _proxy_auth(what: str) -> ModelError:
    return ModelError(f"{what}: the proxy wants credentials (407)", "put them in the proxy's "
                      "URL: HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT (and HTTP_PROXY)")


def _origin(u: urllib.parse.SplitResult) -> tuple[str, str, int]:
    return u.scheme, (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80)


_TLS: list[ssl.SSLContext] = []


def _tls() -> ssl.SSLContext:
    """certifi's roots (what httpx, and so the hub's metadata calls, trust) and the
    system's (OpenSSL's default paths, which SSL_CERT_FILE and SSL_CERT_DIR move)."""
    if not _TLS:
        ctx = ssl.create_default_context()
        try:
            import certifi

            ctx.load_verify_locations(certifi.where())
        except ImportError:
            pass
        _TLS.append(ctx)
    return _TLS[0]

