"""Where the tests find the real agent CLIs: `scripts/setup.sh --dev` installs them at the
pinned versions into .venv/node (npm --prefix), never globally; PATH is the fallback."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_BIN = ROOT / ".venv" / "node" / "node_modules" / ".bin"


def agent_binary(name: str) -> Path | None:
    """The `claude`, `codex` or `opencode` executable setup.sh installed, else PATH's."""
    local = NODE_BIN / name
    if local.exists():
        return local
    found = shutil.which(name)
    return Path(found) if found else None
