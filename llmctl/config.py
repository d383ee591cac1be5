"""The config file: its model, defaults, environment overrides and paths.

May import: errors, files, fim. Everything here is plain data and file reading; the
device is passed in (a string or a callable), never probed here.

The dataclass fields are the schema, and the only place it is written: each
field's type, default and one-line meaning (`setting(...)`) drive the parser's
checks, the starter file, `to_toml` and the generated docs/config.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import write_atomic
from .fim import CHOICES as FIM_CHOICES

DEMO_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEVICES = ("auto", "cuda", "cpu")
STARTS = ("always", "on-demand")
SWAPS = ("restart", "sleep")
# `pull`'s connections to the hub: what a CDN gives one client without complaint (aria2c's
# -x8); fetch.py's default too.
PULL_CONNECTIONS = 8
MAX_PULL_CONNECTIONS = 64

# Every environment variable llmctl reads, with its meaning (docs/config.md lists them;
# a test fails when the code reads one that is not here).
ENV_VARS = {
    "LLMCTL_HOME": "one folder for config, state, logs and models (tests set it to a temp dir)",
    "LLMCTL_CONFIG": "the config file's path",
    "LLMCTL_API_KEY": "one more accepted key (added to `proxy.api_keys`); also `chat`'s key",
    "LLMCTL_MODELS": "where llmctl keeps weights it prepares (and hub downloads under "
                     "LLMCTL_HOME)",
    "LLMCTL_DEBUG": "`1`: show tracebacks instead of one-line errors",
    "LLMCTL_LOG_LEVEL": "the daemon's log level (default `INFO`)",
    "LLMCTL_PULL_CONNECTIONS": "connections `pull` (and `up`) fetch weights over; "
                               "overrides `pull.connections`, `--connections` overrides it",
    "HF_ENDPOINT": "the model hub's address (a mirror); huggingface_hub reads it too",
    "HF_TOKEN": "the hub token for gated and private repos (read by huggingface_hub; "
                "`hf auth login` stores one too)",
    "HF_HOME": "the Hugging Face folder; hub downloads go to its `hub/` (default "
               "~/.cache/huggingface) unless LLMCTL_HOME or LLMCTL_MODELS is set",
    "HF_HUB_CACHE": "the Hugging Face cache itself, when it is not under HF_HOME",
    "HF_HUB_OFFLINE": "`1`: never contact the hub; backends always run with it set",
    "NO_COLOR": "no colour in the terminal",
    "CODEX_HOME": "Codex's own folder (default ~/.codex): where `llmctl launch codex "
                  "--write-config` writes its config.toml",
}


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


# ── the schema ───────────────────────────────────────────────────────────────

# A field's annotation → the TOML types it accepts and how a message names them.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "tuple[str, ...]": ((list,), "a list of strings"),
    "str | float": ((str, int, float), "a string or a number"),
    "bool": ((bool,), "true or false"),
}
PORT = (1, 65535)


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, what: str | None = None,
            choices: tuple[str, ...] = (), ge: float | None = None, gt: float | None = None,
            span: tuple[int, int] | None = None, shown: str | None = None,
            toml: bool = True) -> Any:
    """A config field: its default, its one-line meaning and the checks on its value.

    `what` names the accepted values in messages (default: from the type); `ge`/`gt`
    bound numbers from below, `span` on both sides; `shown` is the default as the docs
    print it (for required fields); `toml=False` for fields that are not keys in the file.
    """
    meta = {"doc": doc, "what": what, "choices": choices, "ge": ge, "gt": gt, "span": span,
            "shown": shown, "toml": toml}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ProxyConfig:
    host: str = setting("127.0.0.1", 'address the proxy listens on; "0.0.0.0" lets other '
                        "machines in (keep the key secret)")
    port: int = setting(8080, "the proxy's port", what="a port number 1-65535", span=PORT)
    api_keys: tuple[str, ...] = setting((), "Bearer keys accepted, compared in constant time; "
                                        "`LLMCTL_API_KEY` adds one; empty: no auth (a warning "
                                        "is logged)")
    cors_origins: tuple[str, ...] = setting((), "origins a browser page may call the API from")
    open_metrics: bool = setting(False, "serve /metrics without a key, to anyone who can reach "
                                 "the port (a scraper with no key); otherwise it takes an "
                                 "admin key")
    web: bool = setting(True, "serve the web page (chat and live status) at /")
    max_body_bytes: int = setting(10_000_000, "larger request bodies get 413", ge=1)
    max_connections: int = setting(1000, "client connections open at once; at the cap the "
                                   "quietest idle one is closed for a new one (lowered to "
                                   "what the file-descriptor limit allows)", ge=16)
    header_timeout: float = setting(10.0, "seconds a client has to send a request's headers",
                                    what="a number of seconds", gt=0)
    max_header_bytes: int = setting(65536, "a request line and headers over this get 431",
                                    ge=1024)
    max_queue_per_model: int = setting(100, "requests in flight per model before 429 + "
                                       "Retry-After", ge=1)
    request_timeout: float = setting(600.0, "seconds a backend may stay silent before 504",
                                     what="a number of seconds", gt=0)
    drain_seconds: float = setting(10.0, "on `down`: seconds in-flight requests may take to "
                                   "finish before the backends stop", what="a number of seconds",
                                   ge=0)


@dataclass(frozen=True)
class EngineConfig:
    device: str = setting("auto", "`auto` (CUDA when NVML sees a GPU), `cuda` or `cpu`",
                          choices=DEVICES)
    python: str = setting("", "interpreter that has vLLM; empty: the one running llmctl",
                          what="a path to a Python interpreter")


@dataclass(frozen=True)
class PullConfig:
    connections: int = setting(PULL_CONNECTIONS, "connections `pull` (and `up`) fetch weights "
                               "over: large files in ranged parts, small ones side by side; "
                               "halved while the hub answers 429",
                               what=f"a number of connections 1-{MAX_PULL_CONNECTIONS}",
                               span=(1, MAX_PULL_CONNECTIONS))


@dataclass(frozen=True)
class ModelConfig:
    # The [models.KEY] section name; also accepted as an alias.
    key: str = setting(doc="the section name", toml=False)
    name: str = setting(doc='what clients send as "model"', shown="required")
    source: str = setting("", "hub repo id or local folder: a model llmctl starts",
                          what="a hub repo id or a local folder", shown="—")
    url: str = setting("", "an OpenAI-compatible server llmctl routes to but does not start "
                       "(http:// or https://, its base URL with or without /v1); exactly one "
                       "of `source` and `url`", what="an http(s) URL", shown="—")
    api_key: str = setting("", "`url` models: the Bearer key sent upstream (another llmctl's "
                           "key, a hosted endpoint's) in place of the client's; never logged, "
                           "masked by `config show`", what="a key", shown="—")
    port: int = setting(0, "the vLLM server's port", what="a port number 1-65535", span=PORT,
                        shown="required with `source`")
    max_model_len: int = setting(4096, "`--max-model-len`: the longest prompt + answer", ge=1)
    max_num_seqs: int = setting(64, "`--max-num-seqs`: sequences decoded at once", ge=1)
    memory: str | float = setting("auto", '"auto", or a fraction: of GPU memory '
                                  "(`--gpu-memory-utilization`), on CPU of total RAM for the "
                                  "KV cache", what='"auto" or a fraction like 0.45')
    aliases: tuple[str, ...] = setting((), "more names clients may send as \"model\"")
    args: tuple[str, ...] = setting((), "extra vLLM arguments, appended as given")
    fim: str = setting("auto", "fill-in-the-middle template for IDE autocomplete: auto (from "
                       "the tokenizer's special tokens; none for url models), a family, or "
                       "none", choices=FIM_CHOICES)
    tools: str = setting("auto", "tool calling: auto (the model's own vLLM tool-call parser, "
                         "from its chat template and config; a generic one, `hermes`, for a "
                         "model not trained for tools), a parser name (checked against the "
                         "installed vLLM), or none (vLLM then refuses requests with tools)",
                         what='"auto", a vLLM tool-call parser name, or "none"')
    reasoning: str = setting("auto", "thinking models: auto (the model's vLLM reasoning "
                             "parser, if it thinks), a parser name, or none",
                             what='"auto", a vLLM reasoning parser name, or "none"')
    store_responses: bool = setting(False, "keep Responses API answers, so clients can read "
                                    "them back by id (GET /v1/responses/{id}) or chain them "
                                    "with previous_response_id; vLLM keeps them in memory and "
                                    "never evicts any (its own warning calls it a leak)")
    start: str = setting("always", "`always`: started by `up`; `on-demand`: started by its "
                         "first request (it waits) and stopped after `idle_stop`",
                         choices=STARTS)
    idle_stop: str | float = setting("15m", "models started by a request: stop after this long "
                                     'without one ("90s", "15m", "2h", seconds; 0: never)',
                                     what='a duration like "15m", or seconds')
    group: str = setting("", "models with the same group run one at a time: a request for "
                         "another member drains and stops the running one, then starts it; "
                         "the plan sizes a group once, by its largest member",
                         what="a group name")
    swap: str = setting("restart", "how a group swaps this model out: `restart` stops it, "
                        "`sleep` (CUDA only) keeps the process and frees its GPU memory with "
                        "vLLM's sleep mode (weights to host RAM; waking takes seconds)",
                        choices=SWAPS)

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
        """The server's root: requests go to ROOT/v1/…, health checks to ROOT/health. A
        `url` given as the OpenAI base URL (ending in /v1) means the same server."""
        if self.url:
            return self.url.rstrip("/").removesuffix("/v1")
        return f"http://127.0.0.1:{self.port}"

    @property
    def on_demand(self) -> bool:
        return self.start == "on-demand"

    @property
    def idle_seconds(self) -> float:
        """`idle_stop` in seconds; 0 means never."""
        return duration(self.idle_stop)

    def file_keys(self) -> Iterator[dataclasses.Field[Any]]:
        """The file keys that apply to this model: `url` models have no source or port, and
        nothing of starting and stopping."""
        skip = {"source", "port", *_MANAGED_ONLY} if self.url else {"url", "api_key"}
        return (f for f in keys_of(ModelConfig) if f.name not in skip)

    def idle_keys(self) -> set[str]:
        """Keys at their defaults that do nothing for this model (`idle_stop` on a model
        `up` starts, `swap` outside a group): the starter file shows them commented out."""
        out = set()
        if self.managed and not self.on_demand and not self.group:
            out.add("idle_stop")
        if self.managed and not self.group:
            out.add("swap")
        return out


# Keys about starting and stopping a server: a `url` model has none.
_MANAGED_ONLY = ("start", "idle_stop", "group", "swap")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def duration(value: str | float) -> float:
    """Seconds from `90`, `"90s"`, `"15m"`, `"2h"`, `"1d"`; raises ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(value)
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * _UNITS[m.group(2)]


# Section title in the file → its dataclass (models are tables under [models.KEY]).
SECTIONS: dict[str, type] = {"proxy": ProxyConfig, "engine": EngineConfig,
                             "pull": PullConfig, "models.KEY": ModelConfig}


def keys_of(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a section that are keys in the file, in order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)]


def describe(f: dataclasses.Field[Any]) -> str:
    """How messages and the docs name a key's accepted values."""
    if f.metadata.get("what"):
        return f.metadata["what"]
    if f.metadata.get("choices"):
        return "one of " + ", ".join(f.metadata["choices"])
    return _TYPES[str(f.type)][1]


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    pull: PullConfig = field(default_factory=PullConfig)
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


# `llmctl config init --profile agents`: a tool-trained coder model at a context an agent
# needs (Claude Code's first request alone is ~12k tokens), for one 24 GiB card and up.
# Qwen3-Coder-30B-A3B (MoE, 3B active): ~17 GB of 4-bit AWQ weights, 48 layers × 4 KV heads
# × 128 × 2 × 2 B = 96 KiB of KV cache a token, so 32k tokens take 3 GiB. It serves both
# roles on a 24 GiB card (`general` is its alias); docs/agents.md adds a general model for
# a bigger card.
AGENT_CODER = "dark-side-of-the-code/Qwen3-Coder-30B-A3B-Instruct-AWQ"
PROFILES = ("agents",)


def profile_models(profile: str) -> tuple[ModelConfig, ...]:
    if profile != "agents":
        raise ConfigError(f"no profile {profile!r}", "profiles: " + ", ".join(PROFILES))
    return (ModelConfig("coder", "qwen3-coder-30b", AGENT_CODER, port=8000,
                        max_model_len=32768, max_num_seqs=8, aliases=("general",),
                        tools="qwen3_coder", fim="qwen"),)


def new_api_key() -> str:
    return "sk-local-" + secrets.token_urlsafe(24)


# ── loading ──────────────────────────────────────────────────────────────────

_TOP = {"proxy", "engine", "pull", "models"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_PARSER_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


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

    def section(self, section: str, data: Any, cls: type) -> dict[str, Any]:
        """The table's keys checked against `cls`'s fields: known, of the right type and range;
        lists become tuples."""
        if not isinstance(data, dict):
            self.fail(section, None, f"[{section}] must be a table")
        fields = {f.name: f for f in keys_of(cls)}
        out = {}
        for key, value in data.items():
            f = fields.get(key)
            if f is None:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f"did you mean '{close[0]}'?" if close else \
                    "known keys: " + ", ".join(fields)
                self.fail(section, key, f"unknown key '{key}' in [{section}]", hint)
            out[key] = self.value(section, f, value)
        return out

    def value(self, section: str, f: dataclasses.Field[Any], value: Any) -> Any:
        name, types, meta = f"{section}.{f.name}", _TYPES[str(f.type)][0], f.metadata
        # bool is an int in Python; a TOML `true` is never a valid number here.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types) or (
                isinstance(value, list) and not all(isinstance(v, str) for v in value)):
            # A ranged key's `what` names the range ("a port number 1-65535"), not the type.
            what = _TYPES[str(f.type)][1] if meta["span"] else describe(f)
            self.fail(section, f.name, f"'{name}' must be {what}, "
                      f"not {type(value).__name__} {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            self.fail(section, f.name, f"'{name}' must be {describe(f)}, not {value!r}")
        if isinstance(value, (int, float)):
            lo_hi = meta["span"]
            if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
                self.fail(section, f.name, f"'{name}' must be {describe(f)}, not {value}")
            if meta["ge"] is not None and value < meta["ge"]:
                self.fail(section, f.name, f"'{name}' must "
                          + ("not be negative" if meta["ge"] == 0 else f"be at least {meta['ge']}"))
            if meta["gt"] is not None and value <= meta["gt"]:
                self.fail(section, f.name, f"'{name}' must be "
                          + ("positive" if meta["gt"] == 0 else f"more than {meta['gt']}"))
        return tuple(value) if isinstance(value, list) else value


def load(path: Path | None = None, *, device: str | Callable[[], str] = "cpu",
         env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (when it exists), apply defaults and the environment.

    `device` is used only to pick default models when the file names none; a callable
    is called only then, so callers can pass a lazy NVML probe.
    """
    env = os.environ if env is None else env
    # A file named by -c or by LLMCTL_CONFIG must be there: a typo is an error, never a
    # silent fall-back to the defaults.
    named = "-c" if path is not None else "LLMCTL_CONFIG" if env.get("LLMCTL_CONFIG") else None
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
    elif named:
        raise ConfigError(f"{path}: no such config file"
                          + (" (named by LLMCTL_CONFIG)" if named == "LLMCTL_CONFIG" else ""),
                          "create one with `llmctl config init`"
                          + (", or unset LLMCTL_CONFIG for the default file"
                             if named == "LLMCTL_CONFIG" else ""))
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
                   f"did you mean [{close[0]}]?" if close else "known sections: proxy, engine, pull, models")

    p = r.section("proxy", raw.get("proxy", {}), ProxyConfig)
    keys = list(p.pop("api_keys", ()))
    if env.get("LLMCTL_API_KEY"):
        keys.append(env["LLMCTL_API_KEY"])
    proxy = ProxyConfig(api_keys=tuple(dict.fromkeys(keys)), **p)
    engine = EngineConfig(**r.section("engine", raw.get("engine", {}), EngineConfig))
    pull = PullConfig(**r.section("pull", raw.get("pull", {}), PullConfig))
    if env.get("LLMCTL_PULL_CONNECTIONS"):
        pull = PullConfig(connections=_connections(env["LLMCTL_PULL_CONNECTIONS"]))

    models_raw = raw.get("models")
    if models_raw is None:
        dev = engine.device if engine.device != "auto" else (device() if callable(device) else device)
        models = default_models(dev)
    else:
        if not isinstance(models_raw, dict) or not models_raw:
            r.fail("models", None, "[models] must hold at least one [models.NAME] table")
        models = tuple(_model(r, key, value) for key, value in models_raw.items())
    _check_unique(r, proxy, models)
    _check_groups(r, models)
    return Config(proxy=proxy, engine=engine, pull=pull, models=models, path=path)


def _connections(text: str) -> int:
    """LLMCTL_PULL_CONNECTIONS as a number of connections, or a one-line error."""
    try:
        n = int(text.strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_PULL_CONNECTIONS:
        raise ConfigError(f"LLMCTL_PULL_CONNECTIONS must be a number of connections "
                          f"1-{MAX_PULL_CONNECTIONS}, not {text!r}",
                          "unset it for the config's `pull.connections` (default "
                          f"{PULL_CONNECTIONS})")
    return n


def _model(r: _Reader, key: str, data: Any) -> ModelConfig:
    section = f"models.{key}"
    m = r.section(section, data, ModelConfig)
    if "name" not in m:
        r.fail(section, None, f"[{section}] needs a 'name' (what clients send as \"model\")")
    if bool(m.get("source")) == bool(m.get("url")):
        r.fail(section, None, f"[{section}] needs exactly one of 'source' (a model llmctl "
               "starts) or 'url' (a server that is already running)")
    model = ModelConfig(key=key, **m)
    for n in model.names:
        if not _NAME_RE.match(n):
            r.fail(section, "name", f"model name {n!r} is not a valid name",
                   "use letters, digits and . _ : / -")
    if model.url:
        if not re.match(r"^https?://[^\s/]+", model.url):
            r.fail(section, "url", f"'{section}.url' must be an http(s) URL, not {model.url!r}")
    elif "port" not in m:
        r.fail(section, None, f"[{section}] needs a 'port' for its vLLM server")
    _demand_keys(r, section, m, model)
    for k in ("tools", "reasoning"):
        if not _PARSER_RE.match(getattr(model, k)):
            r.fail(section, k, f"'{section}.{k}' must be \"auto\", a vLLM parser name or "
                   f"\"none\", not {getattr(model, k)!r}")
    mem = model.memory
    if isinstance(mem, str) and mem != "auto":
        r.fail(section, "memory", f"'{section}.memory' must be \"auto\" or a fraction, not {mem!r}")
    if not isinstance(mem, str):
        if not 0 < float(mem) <= 1:
            r.fail(section, "memory", f"'{section}.memory' must be a fraction in (0, 1], not {mem}")
        model = dataclasses.replace(model, memory=float(mem))
    return model


def _demand_keys(r: _Reader, section: str, given: dict[str, Any], model: ModelConfig) -> None:
    """`start`, `idle_stop`, `group` and `swap`: only for models llmctl starts, and only
    where they mean something."""
    if "api_key" in given and not model.url:
        r.fail(section, "api_key", f"'{section}.api_key' is the key sent to a `url` server; "
               "a model llmctl starts takes the proxy's keys", "drop it, or use `url =`")
    if model.url:
        for k in _MANAGED_ONLY:
            if k in given:
                r.fail(section, k, f"'{section}.{k}' applies to models llmctl starts "
                       "(`source =`); a `url` model is never started or stopped here")
        return
    try:
        duration(model.idle_stop)
    except ValueError:
        r.fail(section, "idle_stop", f"'{section}.idle_stop' must be a duration like \"15m\", "
               f"\"90s\" or \"2h\", or seconds (0: never), not {model.idle_stop!r}")
    if "idle_stop" in given and not model.on_demand and not model.group:
        r.fail(section, "idle_stop", f"'{section}.idle_stop' applies to models started by a "
               "request, and this one starts with `up` and runs until `down`",
               'set `start = "on-demand"` too, or drop idle_stop')
    if "swap" in given and not model.group:
        r.fail(section, "swap", f"'{section}.swap' says how a group swaps this model out, and "
               "it is in no group", 'set `group = "NAME"` on it and the models it alternates '
               "with, or drop swap")
    if model.group and not _NAME_RE.match(model.group):
        r.fail(section, "group", f"group name {model.group!r} is not a valid name",
               "use letters, digits and . _ : / -")


def _check_groups(r: _Reader, models: tuple[ModelConfig, ...]) -> None:
    """A group runs one member at a time, so `up` can start at most one of them."""
    always: dict[str, str] = {}
    for m in models:
        if m.group and not m.on_demand:
            if m.group in always:
                r.fail(f"models.{m.key}", "start",
                       f"group '{m.group}' has two always-on members, {always[m.group]} and "
                       f"{m.key}, and runs one at a time",
                       'set `start = "on-demand"` on one of them')
            always[m.group] = m.key


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


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:_}" if v >= 100_000 else repr(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def mask(key: str) -> str:
    return key[:9] + "…" + key[-4:] if len(key) > 16 else "…"


def _sections(cfg: Config) -> Iterator[tuple[str, Any, list[dataclasses.Field[Any]]]]:
    """(title, values, keys) of each table in the file, in order."""
    yield "proxy", cfg.proxy, keys_of(ProxyConfig)
    yield "engine", cfg.engine, keys_of(EngineConfig)
    yield "pull", cfg.pull, keys_of(PullConfig)
    for m in cfg.models:
        yield f"models.{m.key}", m, list(m.file_keys())


def render(cfg: Config, *, masked: bool, comments: bool) -> str:
    out: list[str] = []
    for title, values, keys in _sections(cfg):
        out += ["", f"[{title}]"] if out else [f"[{title}]"]
        idle = values.idle_keys() if isinstance(values, ModelConfig) else set()
        for f in keys:
            if f.name in idle and not comments:
                continue
            v = getattr(values, f.name)
            if f.name == "api_keys" and masked:
                v = [mask(k) for k in v]
            if f.name == "api_key" and masked and v:
                v = mask(v)
            line = ("# " if f.name in idle else "") + f"{f.name} = {toml_value(v)}"
            out.append(f"{line:<34} # {f.metadata['doc']}" if comments else line)
    return "\n".join(out) + "\n"


def to_toml(cfg: Config, *, masked: bool = True) -> str:
    """The effective config as TOML, keys masked unless asked."""
    return render(cfg, masked=masked, comments=False)


def starter_text(device: str, key: str, profile: str | None = None) -> str:
    """The file `llmctl config init` writes: the defaults for this device (or a profile's
    models), every key with its meaning."""
    models = profile_models(profile) if profile else default_models(device)
    cfg = Config(proxy=ProxyConfig(api_keys=(key,)), models=models)
    head = ("# llmctl config. Reference: docs/config.md. Apply changes with "
            "`llmctl up --restart`.\n")
    if profile == "agents":
        head += ("# Profile `agents` (docs/agents.md): a coder model trained for tool calls, at "
                 "32k tokens, for\n# `llmctl launch claude|codex|opencode`; planned for one "
                 "24 GiB card and up (`llmctl plan`).\n")
    return head + "\n" + render(cfg, masked=False, comments=True)


def write_private(path: Path, text: str) -> None:
    """Write a file that may hold keys: 0600 from the first byte, replaced atomically."""
    write_atomic(path, text, 0o600)


def init(path: Path, device: str, *, force: bool = False, profile: str | None = None) -> str:
    """Write a starter config with a fresh key; returns the key."""
    if profile:
        profile_models(profile)  # an unknown profile before anything is written
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", "pass --force to replace it (its keys are lost)")
    key = new_api_key()
    write_private(path, starter_text(device, key, profile))
    return key


def digest(cfg: Config) -> str:
    """A fingerprint of everything that shapes a running stack (keys included, unmasked)."""
    import hashlib

    return hashlib.sha256(to_toml(cfg, masked=False).encode()).hexdigest()[:16]
