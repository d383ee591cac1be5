"""Fill-in-the-middle: the prompt templates of the code model families, and the requests
IDEs send for tab completion turned into plain completions a vLLM server accepts.

May import: nothing of the package. Pure functions; the proxy calls them on its
forwarding path (vLLM's OpenAI server refuses `suffix` for every model it has no FIM
renderer for, so clients that send OpenAI-style FIM fail on plain vLLM).

Each template was checked against the model family's own documentation and special
tokens (tokenizer.json `added_tokens`):
  deepseek   DeepSeek-Coder:      <｜fim▁begin｜>PRE<｜fim▁hole｜>SUF<｜fim▁end｜>
  starcoder  StarCoder/StarCoder2: <fim_prefix>PRE<fim_suffix>SUF<fim_middle>
  qwen       Qwen2.5-Coder:       <|fim_prefix|>PRE<|fim_suffix|>SUF<|fim_middle|>
  codellama  CodeLlama:           <PRE> PRE <SUF>SUF <MID>
  codestral  Codestral/Mistral:   [SUFFIX]SUF[PREFIX]PRE
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Template:
    family: str
    shape: str  # {prefix} and {suffix} stand for the code before and after the cursor
    stop: tuple[str, ...]  # the family's FIM and end-of-text tokens: the middle ends there
    markers: tuple[str, ...]  # special tokens that identify the family in a tokenizer
    file_sep: str = ""  # how repository context (llama.cpp's input_extra) is joined in

    def render(self, prefix: str, suffix: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
        """The prompt; repository context first, for families that have a file separator
        (the others have no place for it, and it is left out)."""
        head = "".join(f"{self.file_sep}{name}\n{text}" for name, text in extra) \
            if self.file_sep else ""
        # str.format fills the two fields; braces in the code itself are not re-read.
        return head + self.shape.format(prefix=prefix, suffix=suffix)


TEMPLATES: dict[str, Template] = {t.family: t for t in (
    Template("deepseek", "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
             ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|EOT|>"),
             ("<｜fim▁hole｜>",)),
    Template("starcoder", "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
             ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"),
             ("<fim_prefix>",), file_sep="<file_sep>"),
    Template("qwen", "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
             ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"),
             ("<|fim_prefix|>",), file_sep="<|file_sep|>"),
    Template("codellama", "<PRE> {prefix} <SUF>{suffix} <MID>",
             ("<PRE>", "<SUF>", "<MID>", "<EOT>"), ("<PRE>", "▁<PRE>")),
    Template("codestral", "[SUFFIX]{suffix}[PREFIX]{prefix}",
             ("[PREFIX]", "[SUFFIX]", "[MIDDLE]", "</s>"), ("[SUFFIX]",)),
)}
FAMILIES = tuple(TEMPLATES)
CHOICES = ("auto", *FAMILIES, "none")


def detect(special_tokens: set[str]) -> str | None:
    """The family whose FIM tokens a tokenizer has, or None."""
    for t in TEMPLATES.values():
        if any(m in special_tokens for m in t.markers):
            return t.family
    return None


# OpenAI's limit on `stop`, which vLLM enforces ("List should have at most 4 items"). The
# family's end-of-text token is its EOS, which ends generation anyway; the stops kept are
# the FIM markers a model emits when it runs past the middle, most telling first.
MAX_STOP = 4


class FimError(ValueError):
    """A FIM request that cannot be rendered (the message says why, for a 400)."""


def _merge_stop(client: Any, ours: tuple[str, ...]) -> list[str]:
    if client is None:
        own: list[str] = []
    elif isinstance(client, str):
        own = [client]
    elif isinstance(client, list) and all(isinstance(s, str) for s in client):
        own = list(client)
    else:
        raise FimError("'stop' must be a string or a list of strings")
    return (own + [s for s in ours if s not in own])[:max(MAX_STOP, len(own))]


def completion(data: dict[str, Any], family: str) -> dict[str, Any]:
    """An OpenAI completions body with `suffix` → the same body with the rendered prompt,
    no `suffix`, and the family's stop strings after the client's own."""
    prompt, suffix = data.get("prompt", ""), data.get("suffix")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not isinstance(suffix, str):
        raise FimError("fill-in-the-middle needs 'prompt' and 'suffix' as strings")
    t = TEMPLATES[family]
    out = {k: v for k, v in data.items() if k != "suffix"}
    out["prompt"] = t.render(prompt, suffix)
    out["stop"] = _merge_stop(data.get("stop"), t.stop)
    return out


def infill(data: dict[str, Any], model: str, family: str) -> dict[str, Any]:
    """llama.cpp server's `/infill` body (input_prefix, input_suffix, input_extra,
    n_predict, …) → an OpenAI completions body for `model`."""
    prefix, suffix = data.get("input_prefix", ""), data.get("input_suffix", "")
    if not isinstance(prefix, str) or not isinstance(suffix, str):
        raise FimError("'input_prefix' and 'input_suffix' must be strings")
    extra = tuple((str(c.get("filename") or ""), c["text"]) for c in data.get("input_extra") or []
                  if isinstance(c, dict) and isinstance(c.get("text"), str))
    t = TEMPLATES[family]
    # llama.cpp puts `prompt` (the text typed on the cursor's line so far) after the prefix.
    body: dict[str, Any] = {"model": model,
                            "prompt": t.render(prefix + str(data.get("prompt") or ""), suffix,
                                               extra),
                            "stop": _merge_stop(data.get("stop"), t.stop),
                            "stream": bool(data.get("stream", False))}
    n = data.get("n_predict", data.get("max_tokens"))
    if isinstance(n, int) and n > 0:
        body["max_tokens"] = n
    for key in ("temperature", "top_p", "top_k", "seed", "min_p"):
        if key in data:
            body[key] = data[key]
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    return body


def infill_answer(completion_json: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI completion (or one streamed chunk of it) → llama.cpp's /infill answer."""
    choices = completion_json.get("choices") or []
    text = choices[0].get("text", "") if choices else ""
    done = bool(choices and choices[0].get("finish_reason")) or not choices
    out: dict[str, Any] = {"content": text or "", "stop": done, "model": model}
    if usage := completion_json.get("usage"):
        out["tokens_predicted"] = usage.get("completion_tokens")
        out["tokens_evaluated"] = usage.get("prompt_tokens")
    return out
