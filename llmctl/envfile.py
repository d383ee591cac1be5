"""The old docker-compose stack's `.env`, read and turned into a config
(`llmctl config import ENV_FILE`).

May import: config, errors. Its names (API_KEY, PYTHON_MODEL, CODER_GPU_MEMORY, …) map onto
the config's keys, starting from the GPU defaults the old stack ran with; what has no
counterpart is listed with the reason, never dropped silently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .config import Config, default_models, mask, parse, render, write_private
from .errors import ConfigError

# .env name → (section, key, model key or None, type)
_ENV_MAP: dict[str, tuple[str, str, str | None, type]] = {
    "API_KEY": ("proxy", "api_keys", None, str),
    "ROUTER_PORT": ("proxy", "port", None, int),
    "PYTHON_MODEL": ("models", "source", "coder", str),
    "GENERAL_MODEL": ("models", "source", "general", str),
    "CODER_BACKEND_PORT": ("models", "port", "coder", int),
    "GENERAL_BACKEND_PORT": ("models", "port", "general", int),
    "CODER_GPU_MEMORY": ("models", "memory", "coder", float),
    "GENERAL_GPU_MEMORY": ("models", "memory", "general", float),
    "CODER_MAX_SEQ": ("models", "max_num_seqs", "coder", int),
    "GENERAL_MAX_SEQ": ("models", "max_num_seqs", "general", int),
    "CODER_MAX_MODEL_LEN": ("models", "max_model_len", "coder", int),
    "GENERAL_MAX_MODEL_LEN": ("models", "max_model_len", "general", int),
}
_ENV_IGNORED = {"LOG_LEVEL": "set LLMCTL_LOG_LEVEL in the environment instead"}


def read_env(path: Path) -> list[tuple[int, str, str]]:
    """(line, NAME, value) of a docker-compose style .env file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.removeprefix("export ").partition("=")
        if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name.strip()):
            raise ConfigError(f"{path}:{i}: not a NAME=value line: {line[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out.append((i, name.strip(), value))
    return out


def import_env(path: Path, device: str = "cuda") -> tuple[Config, list[str], list[str]]:
    """The config equivalent to the old stack's .env: (config, what was mapped, what was
    ignored and why). Starts from the GPU defaults, as the old stack ran on a GPU."""
    raw: dict[str, Any] = {"proxy": {}, "models": {}}
    defaults = {m.key: m for m in default_models(device)}
    for m in defaults.values():
        raw["models"][m.key] = {"name": m.name, "source": m.source, "port": m.port,
                                "max_model_len": m.max_model_len,
                                "max_num_seqs": m.max_num_seqs}
    mapped, ignored = [], []
    for line, name, value in read_env(path):
        if name not in _ENV_MAP:
            ignored.append(f"{name} ({_ENV_IGNORED.get(name, 'not something llmctl sets')})")
            continue
        section, key, model, kind = _ENV_MAP[name]
        try:
            v: Any = kind(value)
        except ValueError:
            raise ConfigError(f"{path}:{line}: {name} must be "
                              f"{'an integer' if kind is int else 'a number'}, not {value!r}"
                              ) from None
        if key == "api_keys":
            raw["proxy"]["api_keys"] = [v]
            mapped.append(f"{name} → proxy.api_keys")
            continue
        target = raw[section] if model is None else raw["models"][model]
        target[key] = v
        where = f"{section}.{key}" if model is None else f"models.{model}.{key}"
        if key == "source":
            target["name"] = defaults[model].name if v == defaults[model].source else \
                v.rsplit("/", 1)[-1].lower().removesuffix("-awq")
            low = v.lower()
            if model == "general" and "instruct" not in low and "chat" not in low:
                ignored.append(f"(note) {name}={v} looks like a base model with no chat "
                               "template: chat requests will fail; an instruct build (the "
                               f"default, {defaults['general'].source}) answers them")
        mapped.append(f"{name}={value if key != 'api_keys' else mask(value)} → {where}")
    cfg = parse(raw, path=None)
    return cfg, mapped, ignored


def write_imported(cfg: Config, target: Path, source: Path, *, force: bool = False) -> None:
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists",
                          "pass --force to replace it (its keys are lost), or -c NEW.toml")
    write_private(target, f"# llmctl config, imported from {source} (`llmctl config import`)."
                          " Reference: docs/config.md.\n\n"
                  + render(cfg, masked=False, comments=True))
