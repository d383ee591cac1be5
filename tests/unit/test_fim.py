"""The FIM templates, byte for byte, and the request shapes they turn into."""

from __future__ import annotations

import pytest

from llmctl import fim

PRE, SUF = "def f(x):\n    ", "\n    return y\n"


@pytest.mark.parametrize("family, want", [
    ("deepseek", f"<｜fim▁begin｜>{PRE}<｜fim▁hole｜>{SUF}<｜fim▁end｜>"),
    ("starcoder", f"<fim_prefix>{PRE}<fim_suffix>{SUF}<fim_middle>"),
    ("qwen", f"<|fim_prefix|>{PRE}<|fim_suffix|>{SUF}<|fim_middle|>"),
    ("codellama", f"<PRE> {PRE} <SUF>{SUF} <MID>"),
    ("codestral", f"[SUFFIX]{SUF}[PREFIX]{PRE}"),
])
def test_each_family_renders_its_documented_shape(family, want):
    assert fim.TEMPLATES[family].render(PRE, SUF) == want


def test_braces_and_unicode_in_the_code_are_left_alone():
    code = 'x = {"a": "{prefix}"}  # ünïcødé ✓'
    assert fim.TEMPLATES["starcoder"].render(code, "") == f"<fim_prefix>{code}<fim_suffix><fim_middle>"


@pytest.mark.parametrize("tokens, family", [
    ({"<｜fim▁hole｜>", "<｜fim▁begin｜>"}, "deepseek"), ({"<fim_prefix>"}, "starcoder"),
    ({"<|fim_prefix|>", "<|im_end|>"}, "qwen"), ({"▁<PRE>"}, "codellama"),
    ({"[SUFFIX]", "[PREFIX]"}, "codestral"), ({"<|im_start|>"}, None),
])
def test_the_family_is_found_in_the_tokenizers_special_tokens(tokens, family):
    assert fim.detect(tokens) == family


def test_a_completion_with_suffix_becomes_a_plain_completion():
    out = fim.completion({"model": "m", "prompt": PRE, "suffix": SUF, "stop": "\n\n",
                          "max_tokens": 16}, "qwen")
    assert "suffix" not in out and out["prompt"].startswith("<|fim_prefix|>")
    assert out["stop"] == ["\n\n", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
    assert all(len(t.stop) <= fim.MAX_STOP for t in fim.TEMPLATES.values())
    assert out["max_tokens"] == 16
    with pytest.raises(fim.FimError):
        fim.completion({"prompt": ["a", "b"], "suffix": "x"}, "qwen")
    with pytest.raises(fim.FimError):
        fim.completion({"prompt": "a", "suffix": "x", "stop": [1]}, "qwen")


def test_infill_maps_llama_cpp_fields_and_repository_context():
    out = fim.infill({"input_prefix": "a = ", "input_suffix": "\nb = 2", "prompt": "1",
                      "n_predict": 8, "temperature": 0.1, "stream": True,
                      "input_extra": [{"filename": "util.py", "text": "def g(): pass\n"}]},
                     "m", "qwen")
    assert out["prompt"] == ("<|file_sep|>util.py\ndef g(): pass\n<|fim_prefix|>a = 1"
                             "<|fim_suffix|>\nb = 2<|fim_middle|>")
    assert out["max_tokens"] == 8 and out["temperature"] == 0.1 and out["stream"] is True
    answer = fim.infill_answer({"choices": [{"text": "42", "finish_reason": "length"}],
                                "usage": {"completion_tokens": 1, "prompt_tokens": 9}}, "m")
    assert answer == {"content": "42", "stop": True, "model": "m", "tokens_predicted": 1,
                      "tokens_evaluated": 9}
