"""Tool calling and reasoning: which of vLLM's parsers a model needs, chosen from its own
files, and the parser names an installed vLLM offers.

May import: errors. Pure functions over what a model folder holds (config.json,
tokenizer_config.json, the chat template, the special tokens) plus two small readers:
`read(folder)` for a model's files and `offered(vllm_dir)` for vLLM's registries, read as
source text (never imported: importing vLLM costs torch's start-up).

vLLM 0.32 refuses every request that carries `tools` when its server was started without
`--tool-call-parser` ("auto" tool choice, "required" and a named function alike), so every
model llmctl starts gets a parser: its family's when the family is known, else `hermes`
(it needs no special token in the vocabulary, and forced tool calls are answered through
structured outputs whatever the parser). A model on the generic parser is marked as not
trained for tools: `auto` tool use on it is unreliable, and `launch` says so.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

GENERIC = "hermes"  # the parser a model of no known tool family gets
AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class ModelFiles:
    """What detection reads of a model: its name (repo id or folder) and, when the weights
    are here, its config.json, chat template and special tokens."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    template: str = ""
    tokens: frozenset[str] = frozenset()

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type") or "").lower()

    @property
    def names(self) -> str:
        """Every name the model goes by, lower-cased: repo id, config's own path, architectures."""
        return " ".join([self.name, str(self.config.get("_name_or_path") or ""),
                         *map(str, self.config.get("architectures") or [])]).lower()


@dataclass(frozen=True)
class Abilities:
    """What a model can do with tools and thinking, and the vLLM parsers for it."""

    tools: str | None  # the --tool-call-parser, None: none (the model refuses `tools`)
    trained: bool | None  # trained for tool use (`auto` tool choice works); None: unknown
    reasoning: str | None  # the --reasoning-parser, None: none
    family: str = ""  # the family detection recognised ("" when none)
    why: str = ""  # one line: how the parsers were chosen

    def as_dict(self) -> dict[str, Any]:
        return {"tools": self.tools, "tool_trained": self.trained, "reasoning": self.reasoning,
                "family": self.family or None, "why": self.why}

    @property
    def summary(self) -> str:
        """One cell: `qwen3_coder`, `hermes (untrained)`, `-`."""
        if not self.tools:
            return "-" if self.trained is not None or self.why else "?"
        return self.tools + ("" if self.trained else " (untrained)"
                             if self.trained is False else " (?)")


@dataclass(frozen=True)
class Family:
    label: str
    test: Callable[[ModelFiles], bool]
    tools: str
    reasoning: Callable[[ModelFiles], str | None] = lambda f: None


def _has(*marks: str) -> Callable[[ModelFiles], bool]:
    return lambda f: any(m in f.template or m in f.tokens for m in marks)


def _named(*words: str) -> Callable[[ModelFiles], bool]:
    return lambda f: any(w in f.names for w in words)


def _typed(*types: str) -> Callable[[ModelFiles], bool]:
    return lambda f: f.model_type in types


def _qwen3_thinks(f: ModelFiles) -> str | None:
    # Qwen3 (2504) thinks by default; the 2507 Instruct releases and the Coders never do.
    return None if re.search(r"instruct-2507|coder", f.names) else "qwen3"


def _both(*tests: Callable[[ModelFiles], bool]) -> Callable[[ModelFiles], bool]:
    return lambda f: all(t(f) for t in tests)


def _either(*tests: Callable[[ModelFiles], bool]) -> Callable[[ModelFiles], bool]:
    return lambda f: any(t(f) for t in tests)


_QWEN3 = _either(_typed("qwen3", "qwen3_moe"), _named("qwen3"))

# The families whose tool-call format vLLM parses, most specific first; each was checked
# against the family's chat template and vLLM 0.32's parser (vllm/tool_parsers/).
FAMILIES: tuple[Family, ...] = (
    # Qwen3-Coder writes <tool_call><function=NAME><parameter=…> (XML), not hermes JSON.
    Family("Qwen3-Coder", _either(_both(_QWEN3, _named("coder")),
                                  _has("<function=")), "qwen3_coder"),
    Family("gpt-oss", _either(_typed("gpt_oss"), _named("gpt-oss")), "openai",
           lambda f: "openai_gptoss"),
    Family("DeepSeek-R1", _both(_either(_typed("deepseek_v3"), _has("<｜tool▁calls▁begin｜>")),
                                _named("-r1", "_r1")), "deepseek_v3",
           lambda f: "deepseek_r1"),
    Family("DeepSeek-V3.1", _both(_typed("deepseek_v3"), _named("v3.1", "v3_1")),
           "deepseek_v31", lambda f: "deepseek_v3"),
    Family("DeepSeek-V3", _either(_typed("deepseek_v3"), _has("<｜tool▁calls▁begin｜>")),
           "deepseek_v3"),
    Family("QwQ", _named("qwq"), "hermes", lambda f: "deepseek_r1"),
    Family("Qwen3", _QWEN3, "hermes", _qwen3_thinks),
    # Mistral v0.3+ (and Codestral, Devstral, Magistral): [TOOL_CALLS] is in the
    # vocabulary; vLLM's mistral parser refuses to start without it.
    Family("Mistral", _has("[TOOL_CALLS]"), "mistral",
           lambda f: "mistral" if "magistral" in f.names else None),
    # Llama 3.1+ templates describe tools and the ipython environment.
    Family("Llama 3.1+", _both(_typed("llama"), _has("<|python_tag|>", "Environment: ipython")),
           "llama3_json"),
    Family("Llama 4", _typed("llama4"), "llama4_pythonic"),
    Family("GLM-4.5", _typed("glm4_moe"), "glm45", lambda f: "glm45"),
    Family("Kimi K2", _either(_typed("kimi_k2"), _named("kimi-k2")), "kimi_k2",
           lambda f: "kimi_k2"),
    Family("Granite", _both(_typed("granite", "granitemoe", "granitemoehybrid"),
                            _has("<tool_call>", "<|tool_call|>")), "granite"),
    Family("Phi-4-mini", _both(_typed("phi3"), _has("<|tool|>", "<|tool_call|>")),
           "phi4_mini_json"),
    # Qwen2.5 (Coder too), Hermes 2 Pro / 3 and every template that speaks hermes' format.
    Family("Hermes format", _has("<tool_call>"), "hermes"),
)

# Models that think without a tool family of their own (R1 distills on Qwen or Llama).
_THINKERS: tuple[tuple[Callable[[ModelFiles], bool], str], ...] = (
    (_named("-r1", "_r1"), "deepseek_r1"),
)


def detect(f: ModelFiles) -> Abilities:
    """The parsers for a model (the `auto` of the `tools` and `reasoning` keys)."""
    for fam in FAMILIES:
        if fam.test(f):
            return Abilities(fam.tools, True, fam.reasoning(f), fam.label,
                             f"{fam.label} family → {fam.tools}")
    thinks = next((r for test, r in _THINKERS if test(f)), None)
    known = bool(f.config or f.template or f.tokens)
    why = ("no tool-call format in its chat template" if known else
           "not downloaded, and its name names no tool family")
    return Abilities(GENERIC, False, thinks, "", f"{why}: generic {GENERIC} (forced tool "
                     "calls only; `auto` tool use unreliable)")


def choose(tools: str, reasoning: str, managed: bool, files: ModelFiles | None) -> Abilities:
    """The configured `tools` and `reasoning` keys applied over detection. A `url` model's
    parsers are its server's business: only what the config states is shown."""
    if not managed:
        return Abilities(tools if tools not in (AUTO, NONE) else None,
                         True if tools not in (AUTO, NONE) else None,
                         reasoning if reasoning not in (AUTO, NONE) else None,
                         why="a url model: its own server parses tool calls")
    found = detect(files or ModelFiles(""))
    t, trained, why = found.tools, found.trained, found.why
    if tools == NONE:
        t, trained, why = None, None, "tools = \"none\": vLLM refuses requests with tools"
    elif tools != AUTO:
        # Named by hand: the user says the model speaks it.
        t, trained, why = tools, True, f"tools = \"{tools}\" (configured)"
    r = found.reasoning if reasoning == AUTO else None if reasoning == NONE else reasoning
    return Abilities(t, trained, r, found.family, why)


# ── reading ──────────────────────────────────────────────────────────────────


def _json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read(name: str, folder: Path | None) -> ModelFiles:
    """A model's files as detection reads them; only the name when there is no folder."""
    if folder is None:
        return ModelFiles(name)
    tok = _json(folder / "tokenizer_config.json")
    template = tok.get("chat_template") or ""
    if isinstance(template, list):  # [{"name": "default", "template": …}, {"name": "tool_use"…}]
        template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    for extra in ("chat_template.jinja", "chat_template.json"):
        p = folder / extra
        if p.is_file():
            try:
                text = p.read_text(encoding="utf-8")
            except OSError:
                continue
            template += "\n" + (_json(p).get("chat_template", "") if p.suffix == ".json"
                                else text)
    tokens = {str(t.get("content", "")) for t in (tok.get("added_tokens_decoder") or {}).values()
              if isinstance(t, dict)}
    tokens |= {str(t) for t in tok.get("additional_special_tokens") or []}
    for t in _json(folder / "tokenizer.json").get("added_tokens") or []:
        if isinstance(t, dict):
            tokens.add(str(t.get("content", "")))
    return ModelFiles(name, _json(folder / "config.json"), str(template), frozenset(tokens))


# Where vLLM registers its parsers: a dict literal of name → (file, class) since 0.11;
# decorators (`@ToolParserManager.register_module("hermes")`) before.
_REGISTRIES = {"tools": (("tool_parsers/__init__.py", "_TOOL_PARSERS_TO_REGISTER"),
                         ("entrypoints/openai/tool_parsers", None)),
               "reasoning": (("reasoning/__init__.py", "_REASONING_PARSERS_TO_REGISTER"),
                             ("reasoning", None))}
_DECORATOR = re.compile(r"register_module\(\s*\[?\s*((?:[\"'][\w.-]+[\"']\s*,?\s*)+)")


def offered(vllm_dir: Path) -> dict[str, frozenset[str]] | None:
    """The tool-call and reasoning parser names the vLLM at `vllm_dir` (its package folder)
    registers, read from its source; None when they cannot be read."""
    out: dict[str, frozenset[str]] = {}
    for kind, ((init, table), (old, _)) in _REGISTRIES.items():
        names: set[str] = set()
        try:
            tree = ast.parse((vllm_dir / init).read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == table for t in node.targets) \
                        and isinstance(node.value, ast.Dict):
                    names |= {k.value for k in node.value.keys
                              if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        except (OSError, SyntaxError, ValueError):
            pass
        if not names and (vllm_dir / old).is_dir():
            for p in (vllm_dir / old).glob("*.py"):
                try:
                    text = p.read_text(encoding="utf-8")
                except OSError:
                    continue
                for m in _DECORATOR.finditer(text):
                    names |= set(re.findall(r"[\"']([\w.-]+)[\"']", m.group(1)))
        if not names:
            return None
        out[kind] = frozenset(names)
    return out


def check(key: str, kind: str, name: str, available: frozenset[str]) -> ConfigError | None:
    """The error for a configured parser the installed vLLM does not offer."""
    if name in (AUTO, NONE) or name in available:
        return None
    import difflib

    close = difflib.get_close_matches(name, sorted(available), n=1)
    flag = "--tool-call-parser" if kind == "tools" else "--reasoning-parser"
    return ConfigError(
        f"models.{key}.{kind} = \"{name}\" is not a {flag} the installed vLLM offers"
        + (f" (did you mean \"{close[0]}\"?)" if close else ""),
        f'set it to "auto", "none" or one of: {", ".join(sorted(available))}')
