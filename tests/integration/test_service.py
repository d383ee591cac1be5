"""`llmctl service`: the systemd user unit, written where systemd looks, checked by
systemd-analyze where it exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .test_cli_stack import Env


def test_install_writes_a_unit_that_runs_up_in_the_foreground_and_uninstall_removes_it(tmp_path):
    e = Env(tmp_path)
    e.env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    r = e.run("service", "install", "--no-start")
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "xdg" / "systemd" / "user" / "llmctl.service"
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m llmctl up --foreground --config " \
           f"{e.home / 'config.toml'}" in text
    assert f'Environment="LLMCTL_HOME={e.home}"' in text
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    assert "KillMode=mixed" in text  # the daemon stops its own backend groups on SIGTERM
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own reading of the unit, where systemd is installed
        v = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                           text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
        problems = [ln for ln in (v.stdout + v.stderr).splitlines()
                    if "llmctl.service" in ln and "bus" not in ln.lower()]
        assert not problems, problems
    st = e.run("service", "status", "--json")
    assert st.returncode == 0 and '"installed": true' in st.stdout
    r = e.run("service", "uninstall")
    assert r.returncode == 0 and not unit.exists() and "removed" in r.stderr
