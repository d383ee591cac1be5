"""The strict check `llmctl export`'s output must pass: the upstream schemas, closed
(tests/schemas.py). Upstream's own files pass it, and a misspelt key fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests import schemas

EXAMPLES = schemas.FIXTURES


def test_the_pins_name_their_commits():
    sources = (EXAMPLES / "SOURCES.md").read_text()
    pinned = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*")
              if p.is_file() and p.name != "SOURCES.md"}
    for name in pinned:
        row = next((ln for ln in sources.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row, f"{name} is not in SOURCES.md"
        commit = row.split("`")[3]
        assert len(commit) == 40 and int(commit, 16) >= 0, row
    ps = json.loads((EXAMPLES / "production-stack" / "values.schema.json").read_text())
    assert "modelSpec" in ps["properties"]["servingEngineSpec"]["properties"]


def test_close_shuts_objects_that_list_properties_and_keeps_the_open_ones_open():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "free": {"type": "object"},  # no properties: a map (labels, env), left open
        "kept": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"y": {"type": "object", "properties": {"z": {}}}}},
        "own": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
        "pat": {"type": "object", "properties": {"p": {}}, "patternProperties": {"^x-": {}}},
        "all": {"type": "object", "properties": {"k": {}},
                "allOf": [{"properties": {"b1": {"type": "string"}}}, {"required": ["k"]}]},
    }}
    v = Draft(schemas.close(schema))
    assert v.ok({"a": {"x": 1}, "free": {"anything": 1}, "kept": {"unknown": 1},
                 "own": {"q": "s"}, "pat": {"p": 1, "x-extra": 2}, "all": {"k": 1, "b1": "s"}})
    assert not v.ok({"a": {"x": 1, "typo": 1}})
    assert not v.ok({"typo": 1})
    assert not v.ok({"kept": {"y": {"typo": 1}}})  # kept open itself, its children are not
    assert not v.ok({"own": {"q": 1}})  # its own additionalProperties still applies
    assert not v.ok({"pat": {"other": 1}})
    assert not v.ok({"all": {"k": 1, "b1": 2}})  # the branch still decides b1's value
    assert not v.ok({"all": {"k": 1, "b2": 1}})
    assert schema["properties"]["a"].get("additionalProperties") is None  # a copy


class Draft:
    def __init__(self, schema):
        from jsonschema import Draft7Validator

        self.v = Draft7Validator(schema)

    def ok(self, doc) -> bool:
        return self.v.is_valid(doc)


@pytest.mark.parametrize("target, doc, path", [
    ("production-stack", {"servingEngineSpec": {"modelSpec": [
        {"name": "a", "vllmConfig": {"maxModeLen": 4096}}]}}, "vllmConfig"),
    ("production-stack", {"servingEngineSpec": {"modelSpec": [{"name": "a", "requestGpu": 1}]}},
     "modelSpec/0"),
    ("kserve", {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceService",
                "metadata": {"name": "a"}, "spec": {"model": {"uri": "hf://a/b"},
                                                    "parallelism": {"tensors": 2}}},
     "spec/parallelism"),
    ("kserve", {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceService",
                "metadata": {"name": "a"}, "spec": {"model": {"uri": "hf://a/b"}, "template": {
                    "containers": [{"name": "main", "env": [{"name": "X", "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k", "optinal": True}}}]}]}}},
     "secretKeyRef"),
])
def test_a_misspelt_key_passes_the_upstream_schema_and_fails_the_strict_check(target, doc, path):
    loose = getattr(schemas, target.replace("-", "_"))(strict=False)
    strict = getattr(schemas, target.replace("-", "_"))()
    assert schemas.errors(loose, doc) == []
    found = schemas.errors(strict, doc)
    assert len(found) == 1 and path in found[0] and "Additional properties" in found[0], found


PS_EXAMPLES = sorted((EXAMPLES / "production-stack" / "examples").glob("*.yaml"))
KS_EXAMPLES = sorted((EXAMPLES / "kserve" / "examples").glob("*.yaml"))
# Keys production-stack's templates read (deployment-vllm-multi.yaml: enableTool,
# toolCallParser, chatTemplate) that its values schema does not list: upstream's own
# tool-calling example fails a strict check on them, and nothing else. This is why the
# export passes tool and reasoning parsers as vLLM arguments (vllmConfig.extraArgs).
PS_DRIFT = {"values-13-tool-enabled.yaml": {"chatTemplate", "enableTool", "toolCallParser"}}


def test_the_fixtures_hold_upstream_examples():
    assert len(PS_EXAMPLES) >= 5 and len(KS_EXAMPLES) >= 5


@pytest.mark.parametrize("example", PS_EXAMPLES, ids=lambda p: p.name)
def test_production_stacks_own_examples_pass_the_strict_check(example: Path):
    values = yaml.safe_load(example.read_text())
    merged = schemas.helm_merge(schemas.chart_defaults(), values)
    for doc in (values, merged):
        found = schemas.errors(schemas.production_stack(), doc)
        if example.name in PS_DRIFT:
            unexpected = set()
            for line in found:
                assert line.startswith("servingEngineSpec/modelSpec/0: Additional properties"), line
                unexpected |= {k for k in PS_DRIFT[example.name] if repr(k) in line}
            assert unexpected == PS_DRIFT[example.name], found
        else:
            assert found == [], found


def test_the_charts_own_defaults_pass_the_strict_check():
    assert schemas.errors(schemas.production_stack(), schemas.chart_defaults()) == []


@pytest.mark.parametrize("example", KS_EXAMPLES, ids=lambda p: p.name)
def test_kserves_own_examples_pass_the_strict_check(example: Path):
    docs = [d for d in yaml.safe_load_all(example.read_text())
            if isinstance(d, dict) and d.get("kind") == "LLMInferenceService"]
    assert docs
    for doc in docs:
        assert doc["apiVersion"] == "serving.kserve.io/v1alpha2"
        assert schemas.errors(schemas.kserve(), doc) == []
