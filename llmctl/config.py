"""The config file: its model, defaults, environment overrides and paths.

May import: errors. Everything here is plain data and file reading; the
device is passed in (a string or a callable), never probed here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEMO_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEVICES = ("auto", "cuda", "cpu")


# ── paths ────────────────────────────────────────────────────────────────────


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def home() -> Path | None:
    """LLMCTL_HOME, when set, holds everything (tests set it to a temp dir)."""
    value = os.environ.get("LLMCTL_HOME")
    return Path(value).expanduser() if value else None


def config_path() -> Path:
    if os.environ.get("LLMCTL_CONFIG"):
        return Path(os.environ["LLMCTL_CONFIG"]).expanduser()
    h = home()
    return h / "config.toml" if h else _xdg("XDG_CONFIG_HOME", ".config") / "llmctl" / "config.toml"


def state_dir() -> Path:
    h = home()
    return h / "state" if h else _xdg("XDG_STATE_HOME", ".local/state") / "llmctl" / "state"


def logs_dir() -> Path:
    h = home()
    return h / "logs" if h else _xdg("XDG_STATE_HOME", ".local/state") / "llmctl" / "logs"


def models_dir() -> Path:
    """Where llmctl keeps weights it prepares itself (and hub downloads under LLMCTL_HOME).

    LLMCTL_MODELS moves it (weights on a bigger disk, or shared between test runs)."""
    if os.environ.get("LLMCTL_MODELS"):
        return Path(os.environ["LLMCTL_MODELS"]).expanduser()
    h = home()
    return h / "models" if h else _xdg("XDG_DATA_HOME", ".local/share") / "llmctl" / "models"


# ── the model ────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ProxyConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 10_000_000
    max_queue_per_model: int = 100
    # How long one upstream request may stay silent before the proxy answers 504.
    request_timeout: float = 600.0
    # On `down`: how long in-flight requests may finish before the backends are stopped.
    drain_seconds: float = 10.0


@dataclass(frozen=True)
class EngineConfig:
    device: str = "auto"
    python: str = ""


@dataclass(frozen=True)
class ModelConfig:
    key: str  # the [models.KEY] section name; also accepted as an alias
    name: str
    source: str = ""
    url: str = ""
    port: int = 0
    max_model_len: int = 4096
    max_num_seqs: int = 64
    memory: str | float = "auto"
    aliases: tuple[str, ...] = ()
    args: tuple[str, ...] = ()

    @property
    def managed(self) -> bool:
        """True when llmctl starts the server; False for `url =` models it only routes to."""
        return not self.url

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a client may send as `model`, the canonical one first."""
        out = [self.name]
        for n in (*self.aliases, self.key):
            if n not in out:
                out.append(n)
        return tuple(out)

    @property
    def upstream(self) -> str:
        return self.url.rstrip("/") if self.url else f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    models: tuple[ModelConfig, ...] = ()
    path: Path | None = None  # the file it was read from, None when defaults only

    @property
    def proxy_url(self) -> str:
        host = self.proxy.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.proxy.port}"

    def model(self, key: str) -> ModelConfig:
        for m in self.models:
            if m.key == key:
                return m
        raise KeyError(key)


# ── defaults ─────────────────────────────────────────────────────────────────


def default_models(device: str) -> tuple[ModelConfig, ...]:
    """The two roles. On CPU both serve the SmolLM2 demo model under two names."""
    if device == "cpu":
        return (
            ModelConfig("coder", "smollm2-coder", DEMO_SOURCE, port=8000,
                        max_model_len=2048, max_num_seqs=16),
            ModelConfig("general", "smollm2-general", DEMO_SOURCE, port=8001,
                        max_model_len=2048, max_num_seqs=16),
        )
    return (
        ModelConfig("coder", "deepseek-coder-33b-instruct",
                    "TheBloke/deepseek-coder-33B-instruct-AWQ", port=8000,
                    max_model_len=4096, max_num_seqs=64),
        ModelConfig("general", "mistral-7b-instruct",
                    "TheBloke/Mistral-7B-Instruct-v0.2-AWQ", port=8001,
                    max_model_len=4096, max_num_seqs=128),
    )


def new_api_key() -> str:
    return "sk-local-" + secrets.token_urlsafe(24)


# ── loading ──────────────────────────────────────────────────────────────────

# key → (accepted types, description for messages)
_PROXY_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "host": ((str,), "a string"),
    "port": ((int,), "an integer"),
    "api_keys": ((list,), "a list of strings"),
    "cors_origins": ((list,), "a list of strings"),
    "max_body_bytes": ((int,), "an integer"),
    "max_queue_per_model": ((int,), "an integer"),
    "request_timeout": ((int, float), "a number of seconds"),
    "drain_seconds": ((int, float), "a number of seconds"),
}
_ENGINE_FIELDS = {
    "device": ((str,), "one of auto, cuda, cpu"),
    "python": ((str,), "a path to a Python interpreter"),
}
_MODEL_FIELDS = {
    "name": ((str,), "a string"),
    "source": ((str,), "a hub repo id or a local folder"),
    "url": ((str,), "an http(s) URL"),
    "port": ((int,), "an integer"),
    "max_model_len": ((int,), "an integer"),
    "max_num_seqs": ((int,), "an integer"),
    "memory": ((str, int, float), '"auto" or a fraction like 0.45'),
    "aliases": ((list,), "a list of strings"),
    "args": ((list,), "a list of strings"),
}
_TOP = {"proxy", "engine", "models"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class _Reader:
    """Checks one parsed file; every message names the file, the key and, when found, the line."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def where(self, section: str, key: str | None = None) -> str:
        name = str(self.path) if self.path else "config"
        line = self._line_of(section, key)
        return f"{name}:{line}" if line else name

    def _line_of(self, section: str, key: str | None) -> int | None:
        header = re.compile(r"^\s*\[\s*" + re.escape(section).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
        start = None
        for i, line in enumerate(self.lines):
            if header.match(line):
                start = i
                break
        if start is None:
            return None
        if key is None:
            return start + 1
        keyre = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
        for i in range(start + 1, len(self.lines)):
            if re.match(r"^\s*\[", self.lines[i]):
                break
            if keyre.match(self.lines[i]):
                return i + 1
        return start + 1

    def fail(self, section: str, key: str | None, message: str, hint: str | None = None) -> None:
        raise ConfigError(f"{self.where(section, key)}: {message}", hint)

    def check(self, section: str, data: Any, schema: Mapping[str, tuple[tuple[type, ...], str]]
              ) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail(section, None, f"[{section}] must be a table")
        for key, value in data.items():
            if key not in schema:
                close = difflib.get_close_matches(key, list(schema), n=1)
                hint = f"did you mean '{close[0]}'?" if close else \
                    "known keys: " + ", ".join(schema)
                self.fail(section, key, f"unknown key '{key}' in [{section}]", hint)
            types, what = schema[key]
            # bool is an int in Python; a TOML `true` is never a valid number here.
            if isinstance(value, bool) or not isinstance(value, types):
                self.fail(section, key, f"'{section}.{key}' must be {what}, "
                          f"not {type(value).__name__} {value!r}")
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                self.fail(section, key, f"'{section}.{key}' must be {what}")
        return dict(data)


def load(path: Path | None = None, *, device: str | Callable[[], str] = "cpu",
         env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (when it exists), apply defaults and the environment.

    `device` is used only to pick default models when the file names none; a callable
    is called only then, so callers can pass a lazy NVML probe.
    """
    env = os.environ if env is None else env
    explicit = path is not None
    path = path if path is not None else config_path()
    raw: dict[str, Any] = {}
    text = ""
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config file ({e})") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: TOML syntax error: {e}",
                              "fix the line named above; `llmctl config init --force` "
                              "writes a fresh starter file") from None
    elif explicit:
        raise ConfigError(f"{path}: no such config file",
                          "create one with `llmctl config init`")
    return parse(raw, path if path.exists() else None, text, device=device, env=env)


def parse(raw: Mapping[str, Any], path: Path | None = None, text: str = "", *,
          device: str | Callable[[], str] = "cpu",
          env: Mapping[str, str] | None = None) -> Config:
    env = {} if env is None else env
    r = _Reader(path, text)
    for key in raw:
        if key not in _TOP:
            close = difflib.get_close_matches(key, list(_TOP), n=1)
            r.fail(key, None, f"unknown section [{key}]",
                   f"did you mean [{close[0]}]?" if close else "known sections: proxy, engine, models")

    p = r.check("proxy", raw.get("proxy", {}), _PROXY_FIELDS)
    keys = list(p.pop("api_keys", []))
    if env.get("LLMCTL_API_KEY"):
        keys.append(env["LLMCTL_API_KEY"])
    for k in ("cors_origins",):
        if k in p:
            p[k] = tuple(p[k])
    proxy = ProxyConfig(api_keys=tuple(dict.fromkeys(keys)), **p)
    _check_port(r, "proxy", "port", proxy.port)
    for k in ("max_body_bytes", "max_queue_per_model"):
        if getattr(proxy, k) < 1:
            r.fail("proxy", k, f"'proxy.{k}' must be at least 1")
    if proxy.request_timeout <= 0:
        r.fail("proxy", "request_timeout", "'proxy.request_timeout' must be positive")
    if proxy.drain_seconds < 0:
        r.fail("proxy", "drain_seconds", "'proxy.drain_seconds' must not be negative")

    e = r.check("engine", raw.get("engine", {}), _ENGINE_FIELDS)
    engine = EngineConfig(**e)
    if engine.device not in DEVICES:
        r.fail("engine", "device", f"'engine.device' must be one of {', '.join(DEVICES)}, "
               f"not {engine.device!r}")

    models_raw = raw.get("models")
    if models_raw is None:
        dev = engine.device if engine.device != "auto" else (device() if callable(device) else device)
        models = default_models(dev)
    else:
        if not isinstance(models_raw, dict) or not models_raw:
            r.fail("models", None, "[models] must hold at least one [models.NAME] table")
        models = tuple(_model(r, key, value) for key, value in models_raw.items())
    _check_unique(r, proxy, models)
    return Config(proxy=proxy, engine=engine, models=models, path=path)


def _check_port(r: _Reader, section: str, key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        r.fail(section, key, f"'{section}.{key}' must be a port number 1-65535, not {port}")


def _model(r: _Reader, key: str, data: Any) -> ModelConfig:
    section = f"models.{key}"
    m = r.check(section, data, _MODEL_FIELDS)
    if "name" not in m:
        r.fail(section, None, f"[{section}] needs a 'name' (what clients send as \"model\")")
    if bool(m.get("source")) == bool(m.get("url")):
        r.fail(section, None, f"[{section}] needs exactly one of 'source' (a model llmctl "
               "starts) or 'url' (a server that is already running)")
    for k in ("aliases", "args"):
        if k in m:
            m[k] = tuple(m[k])
    model = ModelConfig(key=key, **m)
    for n in model.names:
        if not _NAME_RE.match(n):
            r.fail(section, "name", f"model name {n!r} is not a valid name",
                   "use letters, digits and . _ : / -")
    if model.url:
        if not re.match(r"^https?://[^\s/]+", model.url):
            r.fail(section, "url", f"'{section}.url' must be an http(s) URL, not {model.url!r}")
    else:
        if "port" not in m:
            r.fail(section, None, f"[{section}] needs a 'port' for its vLLM server")
        _check_port(r, section, "port", model.port)
    for k in ("max_model_len", "max_num_seqs"):
        if getattr(model, k) < 1:
            r.fail(section, k, f"'{section}.{k}' must be at least 1")
    mem = model.memory
    if isinstance(mem, str) and mem != "auto":
        r.fail(section, "memory", f"'{section}.memory' must be \"auto\" or a fraction, not {mem!r}")
    if not isinstance(mem, str):
        if not 0 < float(mem) <= 1:
            r.fail(section, "memory", f"'{section}.memory' must be a fraction in (0, 1], not {mem}")
        model = dataclasses.replace(model, memory=float(mem))
    return model


def _check_unique(r: _Reader, proxy: ProxyConfig, models: tuple[ModelConfig, ...]) -> None:
    ports: dict[int, str] = {proxy.port: "proxy.port"}
    names: dict[str, str] = {}
    for m in models:
        if m.managed:
            if m.port in ports:
                r.fail(f"models.{m.key}", "port",
                       f"duplicate port {m.port}: models.{m.key}.port and {ports[m.port]}",
                       "give every server its own port")
            ports[m.port] = f"models.{m.key}.port"
        for n in m.names:
            if n in names and names[n] != m.key:
                r.fail(f"models.{m.key}", "name",
                       f"model name {n!r} is used by both [models.{names[n]}] and [models.{m.key}]",
                       "names, aliases and section names must be unique across models")
            names[n] = m.key


# ── writing ──────────────────────────────────────────────────────────────────


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def mask(key: str) -> str:
    return key[:9] + "…" + key[-4:] if len(key) > 16 else "…"


def to_toml(cfg: Config, *, masked: bool = True) -> str:
    """The effective config as TOML, keys masked unless asked."""
    out = ["[proxy]"]
    for f in dataclasses.fields(ProxyConfig):
        v = getattr(cfg.proxy, f.name)
        if f.name == "api_keys" and masked:
            v = [mask(k) for k in v]
        out.append(f"{f.name} = {_toml_value(v)}")
    out += ["", "[engine]"]
    out += [f"{f.name} = {_toml_value(getattr(cfg.engine, f.name))}"
            for f in dataclasses.fields(EngineConfig)]
    for m in cfg.models:
        out += ["", f"[models.{m.key}]"]
        for f in dataclasses.fields(ModelConfig):
            if f.name == "key":
                continue
            v = getattr(m, f.name)
            if f.name in ("source", "port") and not m.managed:
                continue
            if f.name == "url" and m.managed:
                continue
            out.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(out) + "\n"


def starter_text(device: str, key: str) -> str:
    """The file `llmctl config init` writes: the defaults for this device, with comments."""
    lines = [
        "# llmctl config. Reference: docs/config.md. Apply changes with `llmctl up --restart`.",
        "",
        "[proxy]",
        'host = "127.0.0.1"',
        "port = 8080",
        f"api_keys = [{_toml_value(key)}]   # one or more; clients send `Authorization: Bearer KEY`",
        "cors_origins = []",
        "max_body_bytes = 10_000_000",
        "max_queue_per_model = 100        # beyond it: 429 + Retry-After",
        "",
        "[engine]",
        'device = "auto"                  # auto | cuda | cpu',
        'python = ""                      # interpreter with vllm; "" = the one running llmctl',
    ]
    for m in default_models(device):
        lines += [
            "",
            f"[models.{m.key}]",
            f"name = {_toml_value(m.name)}           # what clients send as \"model\"",
            f"source = {_toml_value(m.source)}",
            f"port = {m.port}",
            f"max_model_len = {m.max_model_len}",
            f"max_num_seqs = {m.max_num_seqs}",
            'memory = "auto"                  # or a fraction of the device, like 0.45',
            "aliases = []",
            "args = []                        # extra vLLM arguments, passed as given",
        ]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write a file that may hold keys: 0600 from the first byte, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def init(path: Path, device: str, *, force: bool = False) -> str:
    """Write a starter config with a fresh key; returns the key."""
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", "pass --force to replace it (its keys are lost)")
    key = new_api_key()
    write_private(path, starter_text(device, key))
    return key


def digest(cfg: Config) -> str:
    """A fingerprint of everything that shapes a running stack (keys included, unmasked)."""
    import hashlib

    return hashlib.sha256(to_toml(cfg, masked=False).encode()).hexdigest()[:16]
