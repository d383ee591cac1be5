"""The upstream schemas `llmctl export` writes for (tests/fixtures/export, SOURCES.md says
from which commit), validated strictly.

Neither schema forbids unknown keys, so a misspelt key would pass them as they are.
`close` shuts every object schema that lists its properties and keeps no unknown fields
(`additionalProperties: false`, as `kubectl --validate=strict` treats a CRD's structural
schema); the validators here use the closed schemas, with the draft each declares.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.validators import validator_for

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "export"
COMBINATORS = ("allOf", "anyOf", "oneOf")
# Keywords whose values are data, not schemas: never walked.
DATA = ("enum", "const", "default", "examples", "required", "x-kubernetes-validations")


def close(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` where every object schema with `properties` refuses other keys,
    unless it says otherwise (`additionalProperties`, `unevaluatedProperties`,
    `x-kubernetes-preserve-unknown-fields: true`). `patternProperties` keep matching, as
    `additionalProperties` only counts the keys neither lists. A property that only a branch
    of allOf/anyOf/oneOf names is added to the parent's list (as `{}`, so the branch still
    decides its value), and branches are not closed on their own: a branch lists a part of
    the object, not all of it."""
    out = copy.deepcopy(schema)

    def walk(node: Any, branch: bool = False) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x)
            return
        if not isinstance(node, dict):
            return
        props = node.get("properties")
        if isinstance(props, dict):
            for c in COMBINATORS:
                for b in node.get(c) or []:
                    for name in (b.get("properties") or {}) if isinstance(b, dict) else ():
                        props.setdefault(name, {})
            if not branch and not node.get("x-kubernetes-preserve-unknown-fields") \
                    and "additionalProperties" not in node \
                    and "unevaluatedProperties" not in node:
                node["additionalProperties"] = False
        for key, value in node.items():
            if key in DATA:
                continue
            if key in ("properties", "patternProperties", "$defs", "definitions") \
                    and isinstance(value, dict):
                for sub in value.values():
                    walk(sub)
            elif key in COMBINATORS:
                for sub in value:
                    walk(sub, branch=isinstance(props, dict))
            else:
                walk(value)

    walk(out)
    return out


def _load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@cache
def production_stack(strict: bool = True) -> Draft202012Validator:
    schema = _load("production-stack/values.schema.json")
    cls = validator_for(schema)  # it declares draft 2020-12
    return cls(close(schema) if strict else schema)


@cache
def kserve(strict: bool = True) -> Draft7Validator:
    # A CRD's openAPIV3Schema declares no draft; its keywords mean the same in draft 7.
    schema = _load("kserve/llminferenceservice-v1alpha2.schema.json")
    return Draft7Validator(close(schema) if strict else schema)


def errors(validator: Any, doc: Any) -> list[str]:
    """Every violation as "path: message", sorted."""
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                  for e in validator.iter_errors(doc))


def chart_defaults() -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / "production-stack" / "values.yaml").read_text())


def helm_merge(defaults: Any, values: Any) -> Any:
    """What Helm validates: the chart's values.yaml with the user's file over it (maps
    merged key by key, anything else, lists too, replaced; null deletes a default)."""
    if isinstance(defaults, dict) and isinstance(values, dict):
        out = dict(defaults)
        for k, v in values.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = helm_merge(defaults.get(k), v)
        return out
    return copy.deepcopy(values)


def at(doc: Any, path: str) -> Any:
    """The value at `a.b[0].c`."""
    import re

    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        doc = doc[int(part[1:-1])] if part.startswith("[") else doc[part]
    return doc
