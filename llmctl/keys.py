"""Named API keys: the key file, hashed, with each key's limits.

May import: config, errors. The file (`keys.toml` beside the config, mode 0600) holds a
SHA-256 digest of each key, never the key: `llmctl keys add` prints a key once. The
daemon's proxy reads the file again when it changes, so adding, revoking or rotating
a key takes effect without a restart.

A key is 32 random bytes (`sk-llmctl-` + URL-safe base64): a fast hash is enough, as
for GitHub's and Stripe's tokens; there is nothing to guess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as cfgmod
from .errors import ConfigError, ConflictError, UsageError

PREFIX = "sk-llmctl-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ADMIN = "admin"  # how usage and metrics name the config's `api_keys` and LLMCTL_API_KEY


def path() -> Path:
    return cfgmod.config_path().parent / "keys.toml"


def digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Key:
    name: str
    digest: str
    shown: str  # the key's first characters, to tell keys apart in lists
    created: float
    expires: float | None = None  # wall time; None: never
    models: tuple[str, ...] = ()  # model keys, names or aliases it may use; empty: all
    rpm: int = 0  # requests per minute; 0: no limit
    tpm: int = 0  # tokens (prompt + completion) per minute; 0: no limit
    max_concurrent: int = 0  # requests in flight at once; 0: no limit
    scope: str = ""  # "": requests to the models; "metrics": reads /metrics and nothing else

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or time.time()) >= self.expires

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("digest")
        d["models"] = list(self.models)
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(Key) if f.name != "name"}


def load(p: Path | None = None) -> dict[str, Key]:
    """The keys by name; {} when there is no file."""
    p = p or path()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the key file ({e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: TOML syntax error: {e}",
                          "`llmctl keys` writes this file; restore it or remove it") from None
    out = {}
    for name, d in (raw.get("keys") or {}).items():
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or \
                set(d) - set(_FIELDS):
            raise ConfigError(f"{p}: [keys.{name}] is not a key llmctl wrote",
                              "`llmctl keys revoke` and `keys add` rewrite it")
        out[name] = Key(name=name, **{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in d.items()})
    return out


def save(keys: dict[str, Key], p: Path | None = None) -> None:
    lines = ["# llmctl's named API keys: digests only (`llmctl keys` manages this file).", ""]
    for k in keys.values():
        lines.append(f'[keys."{k.name}"]')
        for f, v in dataclasses.asdict(k).items():
            if f == "name" or v is None or (f == "scope" and not v):
                continue
            lines.append(f"{f} = {cfgmod.toml_value(list(v) if isinstance(v, tuple) else v)}")
        lines.append("")
    cfgmod.write_private(p or path(), "\n".join(lines))


METRICS = "metrics"  # the scope of a key that reads /metrics and nothing else (a scraper's)


def add(name: str, *, models: tuple[str, ...] = (), rpm: int = 0, tpm: int = 0,
        max_concurrent: int = 0, expires: str | None = None, p: Path | None = None,
        scope: str = "") -> tuple[str, Key]:
    """A new key: (the key, shown once; its record)."""
    if not _NAME.match(name):
        raise UsageError(f"key name {name!r} is not a valid name",
                         "use letters, digits and . _ @ - (a person's or a tool's name)")
    for what, v in (("--rpm", rpm), ("--tpm", tpm), ("--max-concurrent", max_concurrent)):
        if v < 0:
            raise UsageError(f"{what} must not be negative (0: no limit)")
    keys = load(p)
    if name in keys:
        raise ConflictError(f"a key named {name!r} exists",
                            f"`llmctl keys rotate {name}` gives it a new secret; "
                            f"`llmctl keys revoke {name}` removes it")
    now = time.time()
    until = None
    if expires:
        try:
            until = now + cfgmod.duration(expires)
        except ValueError:
            raise UsageError(f"--expires must be a duration like 30d, 12h or 90m, not "
                             f"{expires!r}") from None
    key = new_key()
    rec = Key(name, digest(key), key[:len(PREFIX) + 4], now, until, tuple(models), rpm, tpm,
              max_concurrent, scope)
    keys[name] = rec
    save(keys, p)
    return key, rec


def revoke(name: str, p: Path | None = None) -> Key:
    keys = load(p)
    rec = _known(keys, name)
    del keys[name]
    save(keys, p)
    return rec


def rotate(name: str, p: Path | None = None) -> tuple[str, Key]:
    """A new secret for a key: the old one stops working, limits and usage stay."""
    keys = load(p)
    old = _known(keys, name)
    key = new_key()
    keys[name] = dataclasses.replace(old, digest=digest(key), shown=key[:len(PREFIX) + 4])
    save(keys, p)
    return key, keys[name]


def _known(keys: dict[str, Key], name: str) -> Key:
    if name not in keys:
        raise UsageError(f"no key named {name!r}",
                         "known: " + (", ".join(keys) or "none (`llmctl keys add NAME`)"))
    return keys[name]
