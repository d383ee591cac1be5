"""`llmctl service`: a systemd user unit that runs the stack, so it starts at login (or at
boot, with lingering).

May import: errors. The unit runs `llmctl up --foreground` (the daemon in the
foreground, logging to the journal: `journalctl --user -u llmctl`); `llmctl down` or
`systemctl --user stop llmctl` stops it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import StackError

NAME = "llmctl.service"
# Environment a unit carries over from the shell that installs it.
CARRIED = ("LLMCTL_HOME", "LLMCTL_CONFIG", "LLMCTL_MODELS", "HF_HOME", "HF_HUB_CACHE",
           "HF_ENDPOINT", "CUDA_VISIBLE_DEVICES")


def unit_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / NAME


def unit_text(config: Path | None = None, python: str | None = None) -> str:
    argv = [python or sys.executable, "-m", "llmctl", "up", "--foreground"]
    if config is not None:
        argv += ["--config", str(config)]
    env = "".join(f'Environment="{k}={os.environ[k]}"\n' for k in CARRIED if os.environ.get(k))
    return (
        "[Unit]\n"
        "Description=llmctl: a private OpenAI-compatible model server (proxy + vLLM)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_quote(a) for a in argv)}\n"
        f"{env}"
        "Environment=PYTHONUNBUFFERED=1\n"
        # The daemon drains requests, then stops every backend group, on SIGTERM.
        "KillMode=mixed\n"
        "TimeoutStopSec=90\n"
        "Restart=on-failure\n"
        "RestartSec=10\n\n"
        "[Install]\n"
        "WantedBy=default.target\n")


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in ' "\\') else arg


def _systemctl(*args: str) -> subprocess.CompletedProcess[str] | None:
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    return subprocess.run([exe, "--user", *args], capture_output=True, text=True, timeout=60)


def install(config: Path | None, *, start: bool = True) -> list[tuple[bool, str]]:
    """Write the unit (replacing an older one); enable and start it where systemd runs.
    (done, line) pairs: what was done, and notes on what was not."""
    p = unit_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(unit_text(config), encoding="utf-8")
    os.replace(tmp, p)
    done = [(True, f"wrote {p}")]
    r = _systemctl("daemon-reload")
    if r is None or r.returncode != 0:
        done.append((False, "systemd is not running for this user here: start it with "
                     f"`systemctl --user enable --now {NAME}` where it is, or run "
                     "`llmctl up --foreground` under your own supervisor"))
        return done
    if start:
        r = _systemctl("enable", "--now", NAME)
        if r is None or r.returncode != 0:
            raise StackError(f"systemctl --user enable --now {NAME} failed: "
                             f"{(r.stderr if r else '').strip()[:200]}",
                             f"`journalctl --user -u {NAME}` shows why")
        done.append((True, f"enabled and started {NAME} (`journalctl --user -u llmctl -f` "
                     "follows its log; `loginctl enable-linger` starts it at boot, before "
                     "login)"))
    return done


def uninstall() -> list[str]:
    p = unit_path()
    done = []
    r = _systemctl("disable", "--now", NAME)
    if r is not None and r.returncode == 0:
        done.append(f"stopped and disabled {NAME}")
    if p.exists():
        p.unlink()
        done.append(f"removed {p}")
        _systemctl("daemon-reload")
    return done or [f"{NAME} is not installed"]


def status() -> dict[str, object]:
    p = unit_path()
    r = _systemctl("is-active", NAME)
    enabled = _systemctl("is-enabled", NAME)
    return {"unit": str(p), "installed": p.exists(),
            "active": r.stdout.strip() if r is not None else None,
            "enabled": enabled.stdout.strip() if enabled is not None else None,
            "systemd": r is not None}

