"""Which vLLM tool-call and reasoning parsers a model gets: detection from real models'
chat templates and configs (tests/fixtures/templates), the config keys over it, and the
parser names read from the installed vLLM's source."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl import tools

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"


@pytest.mark.parametrize("folder, repo, parser, trained, reasoning", [
    ("Qwen2.5-Coder-32B-Instruct-AWQ", "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ", "hermes", True,
     None),
    ("Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder", True,
     None),
    ("Qwen3-8B", "Qwen/Qwen3-8B", "hermes", True, "qwen3"),
    ("Qwen3-4B-Instruct-2507", "Qwen/Qwen3-4B-Instruct-2507", "hermes", True, None),
    ("Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", True, None),
    ("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "llama3_json", True, None),
    ("DeepSeek-V3", "deepseek-ai/DeepSeek-V3", "deepseek_v3", True, None),
    ("DeepSeek-R1", "deepseek-ai/DeepSeek-R1", "deepseek_v3", True, "deepseek_r1"),
    # The demo and the two 2023 default GPU models: no tool format, the generic parser.
    ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "hermes", False, None),
    ("deepseek-coder-33B-instruct-AWQ", "TheBloke/deepseek-coder-33B-instruct-AWQ", "hermes",
     False, None),
    ("Mistral-7B-Instruct-v0.2-AWQ", "TheBloke/Mistral-7B-Instruct-v0.2-AWQ", "hermes", False,
     None),
])
def test_detection_from_the_model_folder(folder, repo, parser, trained, reasoning):
    a = tools.detect(tools.read(repo, TEMPLATES / folder))
    assert (a.tools, a.trained, a.reasoning) == (parser, trained, reasoning)
    assert a.why


@pytest.mark.parametrize("repo, parser, trained, reasoning", [
    # Not downloaded yet (`plan` for the agent profile): the name alone.
    ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder", True, None),
    ("cpatonn/Qwen3-Coder-30B-A3B-Instruct-AWQ-4bit", "qwen3_coder", True, None),
    ("Qwen/QwQ-32B-AWQ", "hermes", True, "deepseek_r1"),
    ("openai/gpt-oss-20b", "openai", True, "openai_gptoss"),
    ("Qwen/Qwen3-32B-AWQ", "hermes", True, "qwen3"),
    ("org/some-model", "hermes", False, None),
])
def test_detection_from_the_name_alone(repo, parser, trained, reasoning):
    a = tools.detect(tools.ModelFiles(repo))
    assert (a.tools, a.trained, a.reasoning) == (parser, trained, reasoning)


def test_the_same_family_on_a_name_that_hides_it_is_found_by_its_template():
    a = tools.detect(tools.read("my/finetune", TEMPLATES / "Qwen3-Coder-30B-A3B-Instruct"))
    assert a.tools == "qwen3_coder"


def test_mistral_parser_only_with_its_token_in_the_vocabulary():
    # vLLM's mistral parser refuses to start without [TOOL_CALLS]: v0.2 gets hermes.
    f = tools.read("mistralai/Mistral-7B-Instruct-v0.2", TEMPLATES / "Mistral-7B-Instruct-v0.2-AWQ")
    assert tools.detect(f).tools == "hermes"


@pytest.mark.parametrize("tools_key, reasoning_key, managed, expect", [
    ("auto", "auto", True, ("hermes", True, "qwen3")),
    ("none", "auto", True, (None, None, "qwen3")),
    ("auto", "none", True, ("hermes", True, None)),
    ("qwen3_xml", "deepseek_r1", True, ("qwen3_xml", True, "deepseek_r1")),
    # A url model: its server's parsers; only a named one is shown.
    ("auto", "auto", False, (None, None, None)),
    ("hermes", "auto", False, ("hermes", True, None)),
])
def test_the_config_keys_over_detection(tools_key, reasoning_key, managed, expect):
    files = tools.read("Qwen/Qwen3-8B", TEMPLATES / "Qwen3-8B") if managed else None
    a = tools.choose(tools_key, reasoning_key, managed, files)
    assert (a.tools, a.trained, a.reasoning) == expect


def test_reading_a_missing_folder_gives_the_name_only(tmp_path):
    f = tools.read("x/y", tmp_path / "nothing")
    assert (f.config, f.template, f.tokens) == ({}, "", frozenset())


def test_chat_template_files_beside_the_tokenizer_config_count(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("<tool_call>{{ x }}</tool_call>")
    assert tools.detect(tools.read("x/y", tmp_path)).tools == "hermes"
    assert tools.detect(tools.read("x/y", tmp_path)).trained is True


def test_parser_names_read_from_the_vllm_source(tmp_path):
    (tmp_path / "tool_parsers").mkdir()
    (tmp_path / "reasoning").mkdir()
    (tmp_path / "tool_parsers" / "__init__.py").write_text(
        '_TOOL_PARSERS_TO_REGISTER = {\n  "hermes": ("hermes_tool_parser", "H"),\n'
        '  "qwen3_coder": ("q", "Q"),\n}\n')
    (tmp_path / "reasoning" / "__init__.py").write_text(
        '_REASONING_PARSERS_TO_REGISTER = {"qwen3": ("a", "B")}\n')
    assert tools.offered(tmp_path) == {"tools": {"hermes", "qwen3_coder"},
                                       "reasoning": {"qwen3"}}


def test_parser_names_of_an_older_vllm_from_its_decorators(tmp_path):
    old = tmp_path / "entrypoints" / "openai" / "tool_parsers"
    old.mkdir(parents=True)
    (old / "hermes.py").write_text('@ToolParserManager.register_module("hermes")\nclass H: ...')
    (old / "llama.py").write_text('@ToolParserManager.register_module(["llama3_json", '
                                  '"llama4_json"])\nclass L: ...')
    (tmp_path / "reasoning").mkdir()
    (tmp_path / "reasoning" / "qwen.py").write_text(
        '@ReasoningParserManager.register_module("qwen3")\nclass Q: ...')
    assert tools.offered(tmp_path) == {"tools": {"hermes", "llama3_json", "llama4_json"},
                                       "reasoning": {"qwen3"}}


def test_the_installed_vllm_offers_every_parser_detection_picks():
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed in this interpreter")
    got = tools.offered(Path(spec.origin).parent)
    assert got is not None
    picked = {f.tools for f in tools.FAMILIES} | {tools.GENERIC}
    assert picked <= got["tools"], picked - got["tools"]
    thinks = {"qwen3", "deepseek_r1", "openai_gptoss", "deepseek_v3", "mistral", "glm45",
              "kimi_k2"}
    assert thinks <= got["reasoning"], thinks - got["reasoning"]


def test_a_parser_vllm_does_not_offer_is_one_line_with_the_list():
    err = tools.check("coder", "tools", "qwen3coder", frozenset({"hermes", "qwen3_coder"}))
    assert err is not None
    assert err.message == ('models.coder.tools = "qwen3coder" is not a --tool-call-parser the '
                           'installed vLLM offers (did you mean "qwen3_coder"?)')
    assert err.hint == 'set it to "auto", "none" or one of: hermes, qwen3_coder'
    assert tools.check("coder", "tools", "auto", frozenset()) is None
    assert tools.check("coder", "reasoning", "qwen3", frozenset({"qwen3"})) is None
