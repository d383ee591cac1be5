"""docs/architecture.md and the modules' "May import:" lines are the map of the package;
these tests fail when the code and the map disagree, or when an import climbs back."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "llmctl"
DOC = PKG.parent / "docs" / "architecture.md"
MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")


def imported(module: str) -> set[str]:
    """Package modules `module` imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse((PKG / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmctl"):
            parts = (node.module or "").split(".")
            if len(parts) > 1:
                out.add(parts[1])  # from llmctl.x import y
            else:
                out.update(a.name for a in node.names)  # from llmctl import x
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names
                       if a.name.startswith("llmctl."))  # import llmctl.x
    return out & set(MODULES)


def declared(module: str) -> set[str] | None:
    doc = ast.get_docstring(ast.parse((PKG / f"{module}.py").read_text())) or ""
    m = re.search(r"May import: ([^.]*)", doc)
    if m is None:
        return None
    return set(re.findall(r"[a-z_]+", m.group(1))) & set(MODULES)


def test_the_scan_finds_imports():
    assert imported("daemon") >= {"config", "supervisor", "survey"}
    assert imported("__main__") == {"cli", "errors", "stack", "ui"}


@pytest.mark.parametrize("module", [m for m in MODULES if m != "cli"])
def test_each_module_imports_only_what_it_declares(module):
    allowed = declared(module)
    assert allowed is not None, f"{module}.py has no 'May import:' line"
    assert imported(module) <= allowed, f"{module}.py imports {imported(module) - allowed}"


def test_the_architecture_table_matches_the_modules():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(_*[a-z_]+)\.py`(?:, `([a-z_]+)\.py`)? \|[^|]*\| ([^|]*) \|$", line)
        if m:
            for name in filter(None, m.group(1, 2)):
                rows[name] = set(re.findall(r"[a-z_]+", m.group(3))) & set(MODULES)
    assert set(rows) == set(MODULES), f"missing: {set(MODULES) - set(rows)}, " \
                                      f"gone: {set(rows) - set(MODULES)}"
    for module, listed in rows.items():
        if module != "cli":
            assert listed == declared(module), module


def test_no_import_climbs_back():
    graph = {m: imported(m) for m in MODULES}
    seen: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        if seen.get(m) == "done":
            return
        assert seen.get(m) != "open", "import cycle: " + " → ".join([*path, m])
        seen[m] = "open"
        for n in graph[m]:
            visit(n, [*path, m])
        seen[m] = "done"

    for m in MODULES:
        visit(m, [])
