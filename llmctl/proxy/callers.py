"""Who is calling: the config's admin keys and the named keys of `keys.toml`, checked per
request, and the named keys read again when the file changed: each check looks at the
file's identity (one `stat`, about a microsecond), so a key works the moment `llmctl keys
add` prints it and is refused the moment `revoke` returns, and no background job stands
between a change and the check.

May import: clock, keys, limits, proxy.answers. Config keys are compared with `hmac.compare_digest`
against every key (no early exit); named keys are looked up by their SHA-256, so what a
lookup's time could tell is about a digest of 256 random bits, never about a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import keys as keymod
from ..clock import Clock
from ..limits import Limits
from .answers import Refused

log = logging.getLogger("llmctl.proxy")


def fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for a key: safe for logs."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class Caller:
    """Who sent a request: a named key (with its limits and models), an admin key from
    the config, or anyone (no keys at all)."""

    __slots__ = ("name", "key", "limits", "allowed", "admin", "log", "metrics_only")

    def __init__(self, name: str, key: keymod.Key | None = None, limits: Limits | None = None,
                 allowed: frozenset[int] | None = None, admin: bool = False,
                 log: str | None = None) -> None:
        self.name, self.key, self.limits, self.allowed, self.admin = \
            name, key, limits, allowed, admin
        self.log = log or name  # in the request log: the name, or an admin key's fingerprint
        # A scraper's key: /metrics and nothing else (never an admin key in a scrape config).
        self.metrics_only = key is not None and key.scope == keymod.METRICS

    def may_use(self, b: Any) -> bool:
        return self.allowed is None or id(b) in self.allowed


ANYONE = Caller("-", admin=True)


class Callers:
    """The keys a proxy accepts. `check` answers who is calling (or refuses with 401);
    `reload` reads the named keys' file again when it changed."""

    def __init__(self, api_keys: Iterable[str], keys_path: Path | None, backends: list[Any],
                 clock: Clock) -> None:
        self.keys_path = keys_path  # the named keys' file (keys.py); None: config keys only
        self.backends = backends  # for the models a key may use
        self.clock = clock
        api_keys = list(api_keys)
        self._config = [k.encode() for k in api_keys]
        self._admins = [Caller(keymod.ADMIN, admin=True, log=fingerprint(k)) for k in api_keys]
        self._named: dict[str, Caller] = {}  # digest → caller
        self._seen: tuple[int, ...] | None = None
        self._complained: tuple[str, float] | None = None
        self.on_change: Callable[[], None] | None = None  # after the key file was read again
        self.reload()

    @property
    def open(self) -> bool:
        """No key at all: every request is accepted (the proxy logs a warning)."""
        return not self._config and not self._named

    @property
    def counting(self) -> bool:
        """Whether usage is counted per key: when there are named keys."""
        return bool(self._named)

    def reload(self) -> bool:
        """Read the key file again if it changed; True when it did. A key whose limits did
        not change keeps its counts."""
        if self.keys_path is None:
            return False
        try:
            st = self.keys_path.stat()
            # `keys` replaces the file (a new inode); size and times catch an edit in place.
            seen: tuple[int, ...] | None = (st.st_ino, st.st_size, st.st_mtime_ns,
                                            st.st_ctime_ns)
        except FileNotFoundError:
            seen = None
        except OSError as e:  # e.g. no file descriptors left: keep the keys we have
            self._complain(f"{self.keys_path}: {e}; keeping the keys read before")
            return False
        if seen == self._seen:
            return False
        try:
            found = keymod.load(self.keys_path) if seen else {}
        except Exception as e:  # a broken or unreadable file: keep the keys we have, and
            # try again on the next request (a read can fail for a moment)
            self._complain(f"{getattr(e, 'message', e)}; keeping the keys read before")
            return False
        self._seen = seen
        self._complained = None
        old = {c.name: c for c in self._named.values()}
        now = self.clock.monotonic()
        named = {}
        for k in found.values():
            prev = old.get(k.name)
            same = prev is not None and prev.key is not None and \
                (prev.key.rpm, prev.key.tpm, prev.key.max_concurrent) == \
                (k.rpm, k.tpm, k.max_concurrent)
            limits = prev.limits if same else (
                Limits(k.rpm, k.tpm, k.max_concurrent, now)
                if (k.rpm or k.tpm or k.max_concurrent) else None)
            allowed = frozenset(id(b) for b in self.backends
                                if any(n in k.models for n in b.model.names)) \
                if k.models else None
            named[k.digest] = Caller(k.name, k, limits, allowed)
        self._named = named
        log.info("named keys: %s", ", ".join(c.name for c in named.values()) or "none")
        if self.on_change is not None:
            self.on_change()
        return True

    def names(self) -> list[tuple[str, list[str]]]:
        """Each key's name (the config's keys are "admin") and the models it may use."""
        out = [(keymod.ADMIN, [b.model.name for b in self.backends])] if self._config else []
        out += [(c.name, [b.model.name for b in self.backends if c.may_use(b)])
                for c in self._named.values()]
        return out

    def _complain(self, message: str) -> None:
        """Log a problem with the key file once a minute, not once a request."""
        now = self.clock.monotonic()
        if self._complained and self._complained[0] == message and \
                now - self._complained[1] < 60:
            return
        self._complained = (message, now)
        log.error("%s", message)

    def identify(self, authorization: list[bytes], x_api_key: list[bytes]) -> Caller:
        """Who is calling, from every `Authorization` and `x-api-key` header the request
        carried (Anthropic's clients send the key as `x-api-key`): one key, in either form
        or in both alike; two different keys are a 400 (which one counts would depend on
        who reads them), then `check`."""
        if len(authorization) > 1:
            raise Refused(400, "more than one Authorization header; send one",
                          "invalid_request")
        if len(x_api_key) > 1 or (authorization and x_api_key and
                                  authorization[0].partition(b" ")[2].strip()
                                  != x_api_key[0].strip()):
            raise Refused(400, "more than one key (Authorization, x-api-key); send one",
                          "invalid_request")
        if authorization:
            return self.check(authorization[0])
        return self.check(b"Bearer " + x_api_key[0] if x_api_key else None)

    def check(self, header: bytes | None) -> Caller:
        """Who is calling; raises Refused(401) for a missing, wrong or expired key."""
        self.reload()
        if self.open:
            return ANYONE
        if not header:
            raise Refused(401, "missing Authorization header; send 'Authorization: Bearer "
                          "<key>'", "invalid_api_key")
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise Refused(401, "malformed Authorization header; expected 'Bearer <key>'",
                          "invalid_api_key")
        admin = None
        for k, c in zip(self._config, self._admins, strict=True):
            # No early exit: the time taken does not depend on which key matched.
            if hmac.compare_digest(token, k):
                admin = c
        named = self._named.get(hashlib.sha256(token).hexdigest())
        if admin is not None:
            return admin
        if named is None:
            raise Refused(401, "invalid API key", "invalid_api_key")
        if named.key is not None and named.key.expired(self.clock.time()):
            raise Refused(401, f"the key '{named.name}' expired on "
                          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(named.key.expires))}",
                          "expired_api_key")
        return named
