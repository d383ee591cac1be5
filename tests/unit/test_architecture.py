"""docs/architecture.md and the modules' "May import:" lines are the map of the package;
these tests fail when the code and the map disagree, or when an import climbs back."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "llmctl"
DOC = PKG.parent / "docs" / "architecture.md"


def _name(p: Path) -> str:
    """llmctl/x.py → "x"; llmctl/proxy/__init__.py → "proxy"; llmctl/proxy/app.py → "proxy.app"."""
    parts = p.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_name(p): p for p in sorted(PKG.rglob("*.py")) if _name(p)}
MODULES = sorted(FILES)
_NAMES = r"[a-z_]+(?:\.[a-z_]+)?"


def _resolve(dotted: str) -> set[str]:
    """The package modules a dotted name inside llmctl means ("proxy.app", "config.X")."""
    parts = dotted.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in FILES:
            return {".".join(parts[:n])}
    return set()


def imported(module: str) -> set[str]:
    """Package modules `module` imports, at the top or inside functions."""
    here = module.split(".")[:-1] if FILES[module].name != "__init__.py" else module.split(".")
    out: set[str] = set()
    for node in ast.walk(ast.parse(FILES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
            prefix = [*base, *(node.module.split(".") if node.module else [])]
            if node.module:
                out |= _resolve(".".join(prefix))
            for a in node.names:  # from . import x, from .proxy import app
                out |= _resolve(".".join([*prefix, a.name]))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmctl"):
            rest = (node.module or "").split(".")[1:]
            out |= _resolve(".".join(rest)) if rest else set()
            for a in node.names:
                out |= _resolve(".".join([*rest, a.name]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("llmctl."):
                    out |= _resolve(a.name.removeprefix("llmctl."))
    return (out & set(MODULES)) - {module}


def declared(module: str) -> set[str] | None:
    doc = ast.get_docstring(ast.parse(FILES[module].read_text())) or ""
    m = re.search(r"May import: ([^.]*(?:\.[a-z][^.]*)*)\.(?:\s|$)", doc)
    if m is None:
        return None
    return set(re.findall(_NAMES, m.group(1))) & set(MODULES)


def test_the_scan_finds_imports():
    assert imported("daemon") >= {"config", "supervisor", "survey", "proxy"}
    assert imported("__main__") == {"cli", "errors", "stack", "ui"}
    assert imported("proxy") == {"proxy.app"}
    assert imported("proxy.forward") >= {"fim", "lifecycle", "proxy.answers", "proxy.stream"}
    assert declared("proxy.forward") >= {"proxy.answers", "config"}


@pytest.mark.parametrize("module", [m for m in MODULES if m != "cli"])
def test_each_module_imports_only_what_it_declares(module):
    allowed = declared(module)
    assert allowed is not None, f"{module}.py has no 'May import:' line"
    assert imported(module) <= allowed, f"{module}.py imports {imported(module) - allowed}"


def test_the_architecture_table_matches_the_modules():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(_*[a-z_/]+)\.py`(?:, `([a-z_/]+)\.py`)? \|[^|]*\| ([^|]*) \|$",
                     line)
        if m:
            for name in filter(None, m.group(1, 2)):
                name = name.removesuffix("/__init__").replace("/", ".")
                rows[name] = set(re.findall(_NAMES, m.group(3))) & set(MODULES)
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
