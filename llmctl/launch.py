"""`llmctl launch`: a coding agent (Claude Code, Codex, OpenCode) run against the proxy,
with a named key of its own.

May import: config, errors, files, keys, report. The CLI gives it the running stack's
report; it returns a `Launch` (argv, environment, warnings, the config files it would
write) and `run` execs it. Nothing here prints.

The agent's key: keys.toml holds SHA-256 digests only, so a key made on first use is kept
in `state/agent-keys.json` (0600, in llmctl's private state folder, like the config file
that holds the admin keys) and reused on every later launch: `keys list` shows one line
per agent with its usage, and two sessions of one agent share a key. Rotating on each
launch instead would cut off a session still running. When the stored key no longer
matches (rotated or revoked by hand), the key is rotated or added again.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as cfgmod
from . import keys as keymod
from .errors import ConflictError, StackError, UsageError
from .files import write_atomic
from .report import BackendReport, StackReport

# Agents send their instructions and tool schemas before the first word: Claude Code
# 2.1.328's first request measured ~49 KB (~12k tokens: 12 tools, ~32 KB of schemas,
# ~7 KB of system prompt); Codex's own instructions exceed 2,048 tokens. A context under
# this many tokens leaves no room for the work itself.
CONTEXT_NEEDED = 32768
PROFILE_HINT = "`llmctl config init --profile agents` writes a config with a tool-trained " \
               "coder model at 32k (docs/agents.md)"


@dataclass(frozen=True)
class Agent:
    name: str  # what `llmctl launch` takes
    title: str
    binary: str
    npm: str  # the npm package
    tested: str  # the version scripts/setup.sh --dev pins and the tests run
    key: str  # the named key it uses
    sends: str  # what it sends before the first word, as measured (for the warning)


AGENTS: dict[str, Agent] = {a.name: a for a in (
    Agent("claude", "Claude Code", "claude", "@anthropic-ai/claude-code", "2.1.332",
          "claude-code", "~12,000 tokens (12 tools and its system prompt)"),
    Agent("codex", "Codex", "codex", "@openai/codex", "0.171.0", "codex",
          "its instructions and tools (more than 2,048 tokens)"),
    Agent("opencode", "OpenCode", "opencode", "opencode-ai", "1.18.33", "opencode",
          "its system prompt and tools (over 10,000 tokens)"),
)}


@dataclass(frozen=True)
class Launch:
    agent: Agent
    argv: tuple[str, ...]
    env: dict[str, str]  # set for the agent, on top of the caller's environment
    unset: tuple[str, ...]  # removed from the caller's environment (they would win)
    model: str
    small_model: str
    key_name: str
    url: str
    warnings: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # --write-config: path → content

    def line(self) -> str:
        """The one line said before the agent starts."""
        return (f"{self.agent.title} → {self.url} with key '{self.key_name}': model "
                f"{self.model}" + (f", small/fast tasks {self.small_model}"
                                   if self.small_model != self.model else ""))

    def shell(self) -> str:
        """--print: the environment as shell lines, then the command."""
        out = [f"unset {name}" for name in self.unset]
        out += [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]
        out.append(shlex.join(self.argv))
        return "\n".join(out) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.name, "argv": list(self.argv), "env": self.env,
                "unset": list(self.unset), "model": self.model,
                "small_model": self.small_model, "key": self.key_name, "url": self.url,
                "warnings": list(self.warnings), "files": sorted(self.files)}


# ── the key ──────────────────────────────────────────────────────────────────


def keys_store() -> Path:
    return cfgmod.state_dir() / "agent-keys.json"


def agent_key(name: str, *, store: Path | None = None, keys_path: Path | None = None
              ) -> tuple[str, bool]:
    """The named key `name` (its secret, and whether it was made or rotated now): the one
    kept from an earlier launch while keys.toml still accepts it."""
    store = store or keys_store()
    try:
        kept = json.loads(store.read_text(encoding="utf-8"))
        kept = kept if isinstance(kept, dict) else {}
    except (OSError, ValueError):
        kept = {}
    known = keymod.load(keys_path)
    secret = kept.get(name)
    if isinstance(secret, str) and name in known and \
            keymod.digest(secret) == known[name].digest:
        return secret, False
    if name in known:  # rotated or revoked and re-added by hand, or the store was lost
        secret, _ = keymod.rotate(name, keys_path)
    else:
        secret, _ = keymod.add(name, p=keys_path)
    kept[name] = secret
    write_atomic(store, json.dumps(kept, indent=1) + "\n")
    return secret, True


# ── models ───────────────────────────────────────────────────────────────────


def _pick(stack: StackReport, wanted: str | None, role: str,
          fallback: str | None) -> tuple[str, BackendReport]:
    """A model of the running stack: the one asked for, else the role's (coder/general)."""
    if wanted:
        key = stack.find(wanted)
        if key is None:
            raise UsageError(f"no model '{wanted}' in the running stack",
                             "models: " + ", ".join(b.name for b in stack.backends.values()))
        return key, stack.backends[key]
    for key in (role, fallback):
        if key and key in stack.backends:
            return key, stack.backends[key]
    if not stack.backends:
        raise StackError("the running stack serves no model", "check `llmctl status`")
    key = next(iter(stack.backends))
    return key, stack.backends[key]


def warnings(agent: Agent, models: list[tuple[str, BackendReport]]) -> list[str]:
    """What makes the agent fail or flounder on these models, each with the change that
    fixes it."""
    out = []
    seen = set()
    for key, b in models:
        if key in seen:
            continue
        seen.add(key)
        if b.max_model_len and b.max_model_len < CONTEXT_NEEDED:
            out.append(f"{key}: max_model_len {b.max_model_len:,} is too small for "
                       f"{agent.title}, which sends {agent.sends} before the first word; "
                       f"set `max_model_len = {CONTEXT_NEEDED}` under [models.{key}] "
                       f"(on a model that holds it), or {PROFILE_HINT}")
        if b.managed and b.tool_trained is False:
            out.append(f"{key}: {b.name} was not trained for tool calls (it runs vLLM's "
                       f"generic {b.tools or 'hermes'} parser): {agent.title} works by tool "
                       f"calls and will flounder; {PROFILE_HINT}")
        elif b.managed and not b.tools:
            out.append(f"{key}: runs without a tool-call parser (`tools = \"none\"`), so "
                       f"vLLM refuses every request {agent.title} sends; set `tools = "
                       f"\"auto\"` under [models.{key}] and `llmctl up --restart`")
    return out


# ── each agent ───────────────────────────────────────────────────────────────

# Claude Code: env only (docs: code.claude.com/docs/en/env-vars; names checked in the
# 2.1.332 binary). ANTHROPIC_API_KEY goes as `x-api-key`; ANTHROPIC_AUTH_TOKEN (Bearer)
# would be sent instead, so it is unset. CLAUDE_CODE_ATTRIBUTION_HEADER=0 drops the
# per-conversation billing line it puts at the top of the system prompt: with it, no two
# conversations share a prompt prefix and vLLM's prefix cache misses from the first token.
_CLAUDE_QUIET = {"CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
                 "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
                 "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1"}


def _claude(url: str, key: str, main: str, small: str, ctx: int) -> tuple[dict[str, str],
                                                                       list[str], tuple[str, ...]]:
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": key, "ANTHROPIC_MODEL": main,
           "ANTHROPIC_DEFAULT_OPUS_MODEL": main, "ANTHROPIC_DEFAULT_SONNET_MODEL": main,
           "ANTHROPIC_DEFAULT_HAIKU_MODEL": small, "ANTHROPIC_SMALL_FAST_MODEL": small,
           "CLAUDE_CODE_SUBAGENT_MODEL": main,
           # An output budget that leaves room for the prompt (its default, 32,000, would
           # be lowered by the proxy anyway).
           "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(min(32000, max(256, ctx // 4))),
           **_CLAUDE_QUIET}
    if ctx >= CONTEXT_NEEDED:
        # A model it does not know it takes for a 1M-token one (and says so at each start):
        # the real window, so it compacts in time. Not below what it needs: with a small
        # window it refuses even a short prompt itself ("Prompt is too long"; measured
        # with 2,048), where the proxy and vLLM would have answered it.
        env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] = str(ctx)
    return env, [], ("ANTHROPIC_AUTH_TOKEN",)


CODEX_KEY_VAR = "LLMCTL_CODEX_API_KEY"


def _codex_overrides(url: str, main: str, ctx: int) -> list[str]:
    """Codex speaks only the Responses API; a provider of its own, set with `-c` (TOML
    values), so the user's ~/.codex/config.toml is left as it is."""
    return ["-c", 'model_providers.llmctl.name="llmctl"',
            "-c", f"model_providers.llmctl.base_url={json.dumps(url + '/v1')}",
            "-c", f'model_providers.llmctl.env_key="{CODEX_KEY_VAR}"',
            "-c", 'model_providers.llmctl.wire_api="responses"',
            "-c", 'model_provider="llmctl"', "-c", f"model={json.dumps(main)}",
            # The model is unknown to Codex: say how long its context is, so it compacts
            # before vLLM refuses.
            "-c", f"model_context_window={ctx}"]


def _codex(url: str, key: str, main: str, small: str, ctx: int) -> tuple[dict[str, str],
                                                                      list[str], tuple[str, ...]]:
    return {CODEX_KEY_VAR: key}, _codex_overrides(url, main, ctx), ()


OPENCODE_KEY_VAR = "LLMCTL_OPENCODE_API_KEY"


def opencode_config(url: str, main: str, small: str, ctx: int, api_key: str) -> dict[str, Any]:
    """OpenCode's config: an OpenAI-compatible provider on the proxy (chat completions)."""
    models = {n: {"name": n, "tool_call": True, "limit": {"context": ctx, "output": 4096}}
              for n in dict.fromkeys((main, small))}
    return {"$schema": "https://opencode.ai/config.json",
            "provider": {"llmctl": {"npm": "@ai-sdk/openai-compatible", "name": "llmctl",
                                    "options": {"baseURL": url + "/v1", "apiKey": api_key},
                                    "models": models}},
            "model": f"llmctl/{main}", "small_model": f"llmctl/{small}",
            "share": "disabled", "autoupdate": False}


def _opencode(url: str, key: str, main: str, small: str, ctx: int) -> tuple[dict[str, str],
                                                                         list[str], tuple[str, ...]]:
    # OPENCODE_CONFIG_CONTENT is merged over the user's opencode.json; the key itself
    # stays in the environment ({env:…} is OpenCode's own substitution).
    content = opencode_config(url, main, small, ctx, "{env:" + OPENCODE_KEY_VAR + "}")
    return {OPENCODE_KEY_VAR: key,
            "OPENCODE_CONFIG_CONTENT": json.dumps(content, separators=(",", ":"))}, [], ()


_BUILD: dict[str, Callable[..., tuple[dict[str, str], list[str], tuple[str, ...]]]] = {
    "claude": _claude, "codex": _codex, "opencode": _opencode}


# ── --write-config ───────────────────────────────────────────────────────────


def config_files(agent: Agent, home: Path, url: str, key: str, main: str, small: str,
                 ctx: int, key_file: Path) -> dict[Path, str]:
    """The agent's own config files as --write-config leaves them: llmctl's provider
    merged into what is there."""
    if agent.name == "claude":
        p = home / ".claude" / "settings.json"
        data = _read_json(p)
        env, _, _ = _claude(url, key, main, small, ctx)
        data["env"] = {**(data.get("env") or {}), **env}
        return {p: json.dumps(data, indent=2) + "\n"}
    if agent.name == "opencode":
        p = home / ".config" / "opencode" / "opencode.json"
        data = _read_json(p)
        # The key stays in llmctl's private state folder; OpenCode reads it from there.
        ours = opencode_config(url, main, small, ctx, "{file:" + str(key_file) + "}")
        data.setdefault("provider", {})["llmctl"] = ours["provider"]["llmctl"]
        data.update({k: ours[k] for k in ("$schema", "model", "small_model")})
        return {p: json.dumps(data, indent=2) + "\n", key_file: key}
    p = Path(os.environ.get("CODEX_HOME") or home / ".codex") / "config.toml"
    return {p: codex_toml(p.read_text(encoding="utf-8") if p.exists() else "", url, main, ctx)}


def codex_toml(text: str, url: str, main: str, ctx: int) -> str:
    """~/.codex/config.toml with llmctl as its provider: the top-level `model`,
    `model_provider` and `model_context_window` lines replaced, the [model_providers.llmctl]
    table replaced or added; everything else kept as written."""
    import re
    import tomllib

    lines = text.splitlines()
    first_table = next((i for i, ln in enumerate(lines) if re.match(r"^\s*\[", ln)), len(lines))
    top = [ln for ln in lines[:first_table]
           if not re.match(r"^\s*(model|model_provider|model_context_window)\s*=", ln)]
    rest, skip = [], False
    for ln in lines[first_table:]:
        if re.match(r"^\s*\[", ln):
            skip = bool(re.match(r"^\s*\[\s*model_providers\s*\.\s*\"?llmctl\"?\s*\]", ln))
        if not skip:
            rest.append(ln)
    head = ["# llmctl launch --write-config", f"model = {json.dumps(main)}",
            'model_provider = "llmctl"', f"model_context_window = {ctx}"]
    table = ["[model_providers.llmctl]", 'name = "llmctl"', f"base_url = {json.dumps(url + '/v1')}",
             f'env_key = "{CODEX_KEY_VAR}"', 'wire_api = "responses"']
    out = "\n".join([*head, *top, *([""] if rest else []), *rest, "", *table]) + "\n"
    tomllib.loads(out)  # never leave the user a file Codex cannot read
    return out


def _read_json(p: Path) -> dict[str, Any]:
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConflictError(f"{p} is not JSON llmctl can merge into ({e})",
                            "fix it, or run without --write-config (the environment only)"
                            ) from None
    if not isinstance(data, dict):
        raise ConflictError(f"{p} is not a JSON object", "fix it, or run without --write-config")
    return data


def write_files(files: Mapping[Path, str], *, clock: Callable[[], float] = time.time
                ) -> list[tuple[Path, Path | None]]:
    """Write each file, keeping the old one beside it (`NAME.llmctl-backup-STAMP`);
    returns (file, its backup or None when there was none)."""
    done = []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
    for p, text in files.items():
        backup = None
        if p.exists():
            backup = p.with_name(f"{p.name}.llmctl-backup-{stamp}")
            shutil.copy2(p, backup)
        write_atomic(p, text, 0o600)
        done.append((p, backup))
    return done


# ── the whole ────────────────────────────────────────────────────────────────


def agent_of(name: str) -> Agent:
    if name not in AGENTS:
        raise UsageError(f"no agent '{name}'", "llmctl launches: " + ", ".join(AGENTS))
    return AGENTS[name]


def find_binary(agent: Agent, path: str | None = None) -> str:
    """The agent's executable on PATH, or the one-line error with its install command."""
    found = shutil.which(agent.binary, path=path)
    if found is None:
        raise UsageError(f"{agent.title} is not installed ('{agent.binary}' is not on PATH)",
                         f"npm install -g {agent.npm}@{agent.tested}")
    return found


def prepare(agent: Agent, stack: StackReport | None, *,
            model: str | None = None, small_model: str | None = None,
            args: tuple[str, ...] = (), write_config: bool = False,
            home: Path | None = None, key: Callable[[str], tuple[str, bool]] = agent_key
            ) -> Launch:
    """Everything `launch` does short of running the agent: the models, the key, the
    environment, the arguments, the warnings (and with `write_config`, the files)."""
    if stack is None or not stack.proxy_url:
        raise StackError("the stack is not running", "start it with `llmctl up`")
    main_key, main = _pick(stack, model, "coder", None)
    small_key, small = _pick(stack, small_model, "general", main_key)
    ctx = main.max_model_len or 0
    secret, _ = key(agent.key)
    url = stack.proxy_url
    env, extra, unset = _BUILD[agent.name](url, secret, main.name, small.name, ctx)
    files: dict[str, str] = {}
    if write_config:
        kf = keys_store().with_name(f"agent-key-{agent.key}")
        files = {str(p): t for p, t in config_files(agent, home or Path.home(), url, secret,
                                                    main.name, small.name, ctx, kf).items()}
    return Launch(agent, (agent.binary, *extra, *args), env, unset, main.name, small.name,
                  agent.key, url, tuple(warnings(agent, [(main_key, main),
                                                         (small_key, small)])), files)


def run(launch: Launch, binary: str, *, environ: Mapping[str, str] | None = None,
        execvpe: Callable[[str, list[str], dict[str, str]], Any] = os.execvpe) -> Any:
    """Replace this process with the agent (the terminal is its own from here on)."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in launch.unset}
    env.update(launch.env)
    return execvpe(binary, [binary, *launch.argv[1:]], env)
