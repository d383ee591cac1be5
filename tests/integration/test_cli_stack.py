"""`llmctl up / status / chat / down` as a user runs them, with the stand-in upstream in
place of vLLM (engine.python is a small script that starts tests/fakes/upstream.py), so
the whole daemon — detach, lock, state file, proxy, process groups — runs for real in
seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmctl import procs as st
from llmctl import state

from .conftest import FAKE, free_port, interruptible

KEY = "sk-cli-test"


class Env:
    def __init__(self, tmp: Path, coder_args: str = '["--child"]', general_args: str = "[]"):
        self.home = tmp / "home"
        self.home.mkdir()
        model = tmp / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({
            "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 128}))
        fake_python = tmp / "fake-python"
        # Stands in for engine.python: drops "-m vllm.entrypoints.openai.api_server".
        fake_python.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} {FAKE} \"$@\"\n")
        fake_python.chmod(0o755)
        self.ports = [free_port() for _ in range(3)]
        self.url = f"http://127.0.0.1:{self.ports[0]}"
        (self.home / "config.toml").write_text(f"""
[proxy]
port = {self.ports[0]}
api_keys = ["{KEY}"]
[engine]
device = "cpu"
python = "{fake_python}"
[models.coder]
name = "fake-coder"
source = "{model}"
port = {self.ports[1]}
args = {coder_args}
[models.general]
name = "fake-general"
source = "{model}"
port = {self.ports[2]}
args = {general_args}
""")
        self.env = {**os.environ, "LLMCTL_HOME": str(self.home), "NO_COLOR": "1",
                    "COLUMNS": "200"}
        self.env.pop("LLMCTL_CONFIG", None)
        self.env.pop("LLMCTL_API_KEY", None)

    def url_models(self, models: dict[str, tuple[str, ...]], proxy: str = "") -> None:
        """A config of `url =` models only (key → (name, url[, more TOML lines])), on a
        fresh proxy port."""
        port = free_port()
        text = f'[proxy]\nport = {port}\napi_keys = ["{KEY}"]\n{proxy}\n'
        for key, (name, url, *more) in models.items():
            text += f'[models.{key}]\nname = "{name}"\nurl = "{url}"\n' + "".join(
                f"{line}\n" for line in more)
        (self.home / "config.toml").write_text(text)
        self.url = f"http://127.0.0.1:{port}"

    def run(self, *args: str, input: str | None = None, timeout: float = 60,
            cwd: Path | None = None):
        return subprocess.run([sys.executable, "-m", "llmctl", *args], env=self.env,
                              input=input, text=True, capture_output=True, timeout=timeout,
                              cwd=cwd)

    def status(self) -> dict:
        r = self.run("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.run("down")


def test_up_status_chat_down(env):
    r = env.run("up", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert f"{env.url}/v1" in r.stderr
    s = env.status()
    assert s["daemon"]["running"] and s["proxy_url"] == env.url
    assert {k: b["state"] for k, b in s["backends"].items()} == {"coder": "RUNNING",
                                                                  "general": "RUNNING"}
    coder = s["backends"]["coder"]
    assert coder["port"] == env.ports[1] and coder["rss_bytes"] > 0

    r = env.run("chat", "--model", "general", "--max-tokens", "3", input="hello\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tok0 tok1 tok2 \n"

    r = env.run("status")  # the human table
    assert r.returncode == 0 and "RUNNING" in r.stdout and "fake-coder" in r.stdout

    again = env.run("up")
    assert again.returncode == 0 and "already up" in again.stderr

    pgids = [b["pgid"] for b in s["backends"].values()]
    assert len(st.group_pids(pgids[0])) == 2  # server + its child
    r = env.run("down")
    assert r.returncode == 0, r.stderr
    assert all(st.group_pids(g) == [] for g in pgids)
    assert all(st.port_free(p) for p in env.ports)
    assert not st.pid_alive(s["daemon"]["pid"])
    assert env.status()["daemon"]["running"] is False
    assert "nothing was running" in env.run("down").stderr


def test_sigkill_of_the_daemon_leaves_nothing_for_long_and_is_cleaned(env):
    assert env.run("up", "--timeout", "60").returncode == 0
    s = env.status()
    servers = [b["pid"] for b in s["backends"].values()]
    members = {p for b in s["backends"].values() for p in st.group_pids(b["pgid"])}
    assert len(members) == 3  # two servers and the coder's child
    os.kill(s["daemon"]["pid"], signal.SIGKILL)
    # The servers get SIGTERM from the kernel (parent-death signal) and exit on their own.
    deadline = time.monotonic() + 10
    while any(st.pid_alive(p) for p in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(st.pid_alive(p) for p in servers), "servers outlived their daemon"
    # The coder's child is an orphan now; the next status finds it, stops it, says so.
    r = env.run("status", "--json")
    assert r.returncode == 0, r.stderr
    after = json.loads(r.stdout)
    assert after["daemon"]["running"] is False
    assert len(after["cleaned"]) == 1 and "left by a dead daemon" in after["cleaned"][0]
    assert not any(st.pid_alive(p) for p in members)
    assert after["backends"] == {} and after["leftovers"] == []
    assert "nothing was running" in env.run("down").stderr


def test_up_refuses_a_port_in_use_naming_the_holder(env):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", env.ports[2]))
        s.listen()
        r = env.run("up", "--timeout", "30")
    assert r.returncode == 1
    assert f"port {env.ports[2]} (model general) is in use by pid {os.getpid()}" in r.stderr
    assert "hint:" in r.stderr and "Traceback" not in r.stderr
    assert env.status()["daemon"]["running"] is False


def test_a_failing_backend_fails_up_but_the_other_keeps_serving(tmp_path):
    e = Env(tmp_path, coder_args='["--exit-at-start", "1", "--startup-delay", "0.3"]')
    try:
        r = e.run("up", "--timeout", "60")
        assert r.returncode == 1
        assert "coder failed: exited while starting" in r.stderr
        s = e.status()
        assert s["backends"]["coder"]["state"] == "FATAL"
        assert s["backends"]["general"]["state"] == "RUNNING"
        ok = httpx.post(e.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                        json={"model": "fake-general", "prompt": "x", "max_tokens": 1})
        assert ok.status_code == 200
        down = httpx.post(e.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "fake-coder", "prompt": "x"})
        assert down.status_code == 503 and down.json()["error"]["code"] == "model_failed"
        assert "has failed" in down.json()["error"]["message"] and "retry-after" not in down.headers
    finally:
        e.run("down")


@pytest.mark.parametrize("text, needle", [
    ("[proxy]\nport = 'x'\n", "'proxy.port' must be an integer"),
    ("[proxy\n", "TOML syntax error"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, needle):
    e = Env(tmp_path)
    (e.home / "config.toml").write_text(text)
    for cmd in (["up"], ["config", "show"], ["chat"]):
        r = e.run(*cmd, input="hi")
        assert r.returncode == 1, cmd
        assert needle in r.stderr and str(e.home / "config.toml") in r.stderr
        assert "Traceback" not in r.stderr


def test_config_init_show_and_key(tmp_path):
    e = Env(tmp_path)
    (e.home / "config.toml").unlink()
    r = e.run("config", "init")
    assert r.returncode == 0, r.stderr
    assert oct((e.home / "config.toml").stat().st_mode)[-3:] == "600"
    key = e.run("config", "key").stdout.strip()
    assert key.startswith("sk-local-")
    shown = e.run("config", "show").stdout
    assert key not in shown and key[-4:] in shown
    assert e.run("config", "init").returncode == 1  # refuses to overwrite
    assert e.run("config", "key").stdout.strip() == key


def test_up_with_a_changed_config_says_what_differs_and_restart_applies_it(env):
    assert env.run("up", "--timeout", "60").returncode == 0
    cfg = env.home / "config.toml"
    cfg.write_text(cfg.read_text().replace('name = "fake-general"', 'name = "fake-general-2"'))
    r = env.run("up")
    assert r.returncode == 0
    assert "already up" in r.stderr and "differs" in r.stderr
    assert '+name = "fake-general-2"' in r.stderr and "--restart" in r.stderr
    assert env.status()["backends"]["general"]["name"] == "fake-general"
    r = env.run("up", "--restart", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert env.status()["backends"]["general"]["name"] == "fake-general-2"


def test_up_with_another_config_file_says_which_runs_and_how_to_switch(env, tmp_path):
    assert env.run("up", "--timeout", "60").returncode == 0
    other = tmp_path / "other.toml"
    other.write_text((env.home / "config.toml").read_text().replace(
        'name = "fake-coder"', 'name = "fake-coder-2"'))
    r = env.run("up", "-c", str(other))
    assert r.returncode == 0, r.stderr
    assert "already up" in r.stderr
    assert f"started from {(env.home / 'config.toml').resolve()}, not {other}" in r.stderr
    assert '+name = "fake-coder-2"' in r.stderr
    assert f"`llmctl up --restart -c {other}` switches to it" in r.stderr
    # The same settings in another file: said too.
    same = tmp_path / "same.toml"
    same.write_text((env.home / "config.toml").read_text())
    r = env.run("up", "-c", str(same))
    assert r.returncode == 0 and "their settings are the same" in r.stderr
    # A broken file is reported, and the running stack is left alone.
    broken = tmp_path / "broken.toml"
    broken.write_text("[proxy\nport = 1\n")
    r = env.run("up", "-c", str(broken))
    assert r.returncode == 1
    assert f"{broken}: TOML syntax error" in r.stderr and "Traceback" not in r.stderr
    assert "the running stack is untouched" in r.stderr
    assert env.status()["backends"]["coder"]["state"] == "RUNNING"


def test_up_restart_with_a_typo_keeps_the_running_stack(env):
    assert env.run("up", "--timeout", "60").returncode == 0
    cfg = env.home / "config.toml"
    good = cfg.read_text()
    cfg.write_text(good.replace("[models.general]", "[models.general]\nmax_num_seqz = 4"))
    r = env.run("up", "--restart", "--timeout", "60")
    assert r.returncode == 1 and "max_num_seqz" in r.stderr and "Traceback" not in r.stderr
    # Checked before anything stopped: the stack that ran still runs.
    s = env.status()
    assert s["daemon"]["running"] and s["backends"]["general"]["state"] == "RUNNING"


def test_llmctl_config_naming_a_missing_file_is_an_error_like_dash_c(env, tmp_path):
    missing = tmp_path / "nope.toml"
    by_flag = env.run("plan", "-c", str(missing))
    env.env["LLMCTL_CONFIG"] = str(missing)
    by_env = env.run("plan")
    for r in (by_flag, by_env, env.run("up")):
        assert r.returncode == 1, r.stderr
        assert f"{missing}: no such config file" in r.stderr and "Traceback" not in r.stderr
    assert "named by LLMCTL_CONFIG" in by_env.stderr and "unset LLMCTL_CONFIG" in by_env.stderr
    assert not missing.exists()  # no starter file written in its place
    assert env.status()["daemon"]["running"] is False


def test_down_lets_in_flight_requests_finish(env):
    import threading

    assert env.run("up", "--timeout", "60").returncode == 0
    got: list[str] = []
    done_at: list[float] = []

    def stream() -> None:
        # 30 tokens 0.2 s apart: 6 s, well within the default drain of 10 s.
        with httpx.stream("POST", env.url + "/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "fake-coder", "stream": True, "max_tokens": 30,
                                "token_delay": 0.2, "messages": []}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(line)
        done_at.append(time.monotonic())

    t = threading.Thread(target=stream)
    t.start()
    # The daemon reports requests in flight once a second, when they change.
    deadline = time.monotonic() + 10
    while env.status()["backends"]["coder"]["in_flight"] != 1:
        assert time.monotonic() < deadline, f"in_flight never showed the stream ({len(got)} events)"
        time.sleep(0.1)
    assert got and got[-1] != "data: [DONE]", "the stream should still be going"
    r = env.run("down")
    down_returned = time.monotonic()
    t.join(timeout=30)
    assert r.returncode == 0, r.stderr
    assert got[-1] == "data: [DONE]" and len(got) == 31  # the whole answer arrived
    assert done_at and done_at[0] <= down_returned  # down returned only after it ended
    assert env.status()["backends"] == {}


def test_ctrl_c_during_up_stops_the_start_cleanly(tmp_path):
    e = Env(tmp_path, coder_args='["--startup-delay", "60", "--child"]')
    up = subprocess.Popen([sys.executable, "-m", "llmctl", "up"], env=e.env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=interruptible)
    try:
        pgid = None
        deadline = time.monotonic() + 30
        while pgid is None and time.monotonic() < deadline:
            stack = state.read_json(e.home / "state" / "stack.json") or {}
            pgid = ((stack.get("backends") or {}).get("coder") or {}).get("pgid")
            time.sleep(0.1)
        assert pgid and st.group_pids(pgid)
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
        assert up.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        assert st.group_pids(pgid) == []
        assert e.status()["daemon"]["running"] is False
    finally:
        if up.poll() is None:
            up.kill()
        e.run("down")


def test_up_with_only_url_models_needs_no_vllm(tmp_path):
    """`[models.X] url = …`: routed to and health-checked, never started; vLLM and torch are
    made unimportable for every llmctl process of this test."""
    from .conftest import start_upstream

    up = start_upstream("remote-model")
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('vllm', 'torch', 'transformers'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, _Block())\n")
    e = Env(tmp_path)
    e.url_models({"remote": ("remote-model", up.url)})
    e.env["PYTHONPATH"] = str(block)
    canary = subprocess.run([sys.executable, "-c", "import vllm"], env=e.env,
                            capture_output=True, text=True)
    assert canary.returncode != 0 and "blocked in this test" in canary.stderr  # the block works
    try:
        r = e.run("up", "--timeout", "30")
        assert r.returncode == 0, r.stderr
        s = e.status()
        assert s["backends"]["remote"]["state"] == "RUNNING"
        assert s["backends"]["remote"]["pid"] is None  # nothing was started
        assert s["backends"]["remote"]["uptime_s"] is not None  # up while it is checked
        r = e.run("chat", "--model", "remote", "--max-tokens", "2", input="hi")
        assert r.returncode == 0 and r.stdout == "tok0 tok1 \n", r.stderr
        assert e.run("down").returncode == 0
        assert up.proc.poll() is None  # a server llmctl did not start is left alone
    finally:
        e.run("down")
        up.stop()


def test_foreground_daemon_stops_cleanly_on_sigterm(env):
    fg = subprocess.Popen([sys.executable, "-m", "llmctl", "up", "--foreground"],
                          env=env.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(env.url + "/ready", timeout=1).json()["models"] == {
                    "fake-coder": "RUNNING", "fake-general": "RUNNING"}
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready
        s = env.status()
        assert s["daemon"]["pid"] == fg.pid  # the daemon is this very process
        members = {p for b in s["backends"].values() for p in st.group_pids(b["pgid"])}
        fg.send_signal(signal.SIGTERM)
        _, err = fg.communicate(timeout=60)
        assert fg.returncode == 0, err
        assert "llmctl.daemon" in err  # logs go to the terminal in the foreground
        assert not any(st.pid_alive(p) for p in members)
        assert all(st.port_free(p) for p in env.ports)
    finally:
        if fg.poll() is None:
            fg.kill()


def test_logs_prints_a_backend_log_and_names_the_known_ones(env):
    assert env.run("up", "--timeout", "60").returncode == 0
    r = env.run("logs", "coder", "-n", "200")
    assert r.returncode == 0, r.stderr
    assert "=== llmctl: starting" in r.stdout  # what the command printed, not the file
    last = env.run("logs", "coder", "-n", "1").stdout.splitlines()
    assert len(last) == 1 and last[0] == r.stdout.splitlines()[-1]
    r = env.run("logs", "nope")
    assert r.returncode == 2
    assert "known: coder, daemon, general" in r.stderr


def test_up_timeout_bounds_the_wait_and_shows_the_slow_backend(tmp_path):
    e = Env(tmp_path, coder_args='["--startup-delay", "60"]')
    try:
        t0 = time.monotonic()
        r = e.run("up", "--timeout", "3")
        # The fault this guards: `up` waiting for the coder's start (the stand-in's 60 s
        # delay) instead of its --timeout: well under that, whatever the machine.
        assert time.monotonic() - t0 < 60 / 2
        assert r.returncode == 1
        assert "not ready after 3 s" in r.stderr
        assert "coder: still STARTING" in r.stderr
        assert "=== llmctl: starting" in r.stderr  # its log tail
        assert "Traceback" not in r.stderr
        again = e.run("up")  # the stack goes on starting; a second `up` says so
        assert again.returncode == 0 and "already starting (coder, general not ready yet)" in again.stderr
    finally:
        e.run("down")


def test_status_json_keeps_its_shape(env):
    """`status --json` is a contract for scripts: the keys of a managed and a `url` backend,
    the daemon's, and the values that do not depend on the run, pinned."""
    from .conftest import start_upstream

    pinned = json.loads((Path(__file__).parents[1] / "fixtures" / "status-json-keys.json")
                        .read_text())
    remote = start_upstream("fake-remote")
    try:
        cfg = env.home / "config.toml"
        cfg.write_text(cfg.read_text() + f'\n[models.remote]\nname = "fake-remote"\n'
                                          f'url = "{remote.url}"\n')
        assert env.run("up", "--timeout", "60").returncode == 0
        s = env.status()
    finally:
        env.run("down")
        remote.stop()
    assert sorted(s) == pinned["top"] and sorted(s["daemon"]) == pinned["daemon"]
    coder, url = s["backends"]["coder"], s["backends"]["remote"]
    assert sorted(coder) == pinned["managed"] and sorted(url) == pinned["url"]
    assert {k: coder[k] for k in ("name", "aliases", "state", "managed", "port", "start",
                                  "group", "swap", "idle_stop_s", "restarts", "in_flight",
                                  "queued", "resting", "max_model_len", "alive", "fim", "tools",
                                  "tool_trained", "reasoning")} == {
        "name": "fake-coder", "aliases": ["coder"], "state": "RUNNING", "managed": True,
        "port": env.ports[1], "start": "always", "group": None, "swap": None,
        "idle_stop_s": 900.0, "restarts": 0, "in_flight": 0, "queued": 0, "resting": False,
        "max_model_len": 4096, "alive": True, "fim": None,
        # no tool family in its files: the generic parser, marked as not trained for tools
        "tools": "hermes", "tool_trained": False, "reasoning": None}
    assert {k: url[k] for k in ("name", "state", "managed", "port", "pid", "start",
                                "idle_stop_s", "url", "alive", "planned_bytes")} == {
        "name": "fake-remote", "state": "RUNNING", "managed": False, "port": None,
        "pid": None, "start": None, "idle_stop_s": None, "url": remote.url, "alive": True,
        "planned_bytes": 0}


def test_no_code_from_the_working_folder_and_backends_only_the_proxy_can_call(env, tmp_path):
    """`up` typed in a folder holding `llmctl/` and `vllm/` packages: neither runs. Each
    backend runs in llmctl's private folder, without the working folder on its path, and
    takes /v1 requests only with the key of its start, which the proxy sends."""
    here = tmp_path / "project"
    marker = tmp_path / "planted-code-ran"
    for pkg, mod in (("llmctl", "daemon"), ("vllm", "__main__")):
        (here / pkg).mkdir(parents=True)
        (here / pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('{pkg}')\n")
        (here / pkg / f"{mod}.py").write_text("")
    (env.home / "logs").mkdir()
    (env.home / "logs" / "daemon.out").write_bytes(b"x" * (2 << 20))  # a big old one
    # As a user types it: the `llmctl` script (python -m llmctl would itself be the
    # planted package, as any `python -m` in that folder would).
    r = subprocess.run([str(Path(sys.executable).parent / "llmctl"), "up", "--timeout", "60"],
                       env=env.env, cwd=here, text=True, capture_output=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), marker.read_text()
    s = env.status()
    state = (env.home / "state").resolve()
    for key, b in s["backends"].items():
        pid = b["pid"]
        assert Path(f"/proc/{pid}/cwd").resolve() == state
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"PYTHONSAFEPATH=1" in environ
        assert any(e.startswith(b"VLLM_API_KEY=") and len(e) > 40 for e in environ)
        # Past the proxy: refused. Through it: served.
        direct = httpx.get(f"http://127.0.0.1:{b['port']}/v1/models", timeout=5)
        assert direct.status_code == 401, key
    daemon_pid = s["daemon"]["pid"]
    assert Path(f"/proc/{daemon_pid}/cwd").resolve() == state
    r = httpx.post(env.url + "/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "fake-coder", "max_tokens": 2,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    # Only the user may read what the daemon keeps: folders 0700, files 0600.
    for d in ("state", "logs"):
        assert (env.home / d).stat().st_mode & 0o777 == 0o700, d
        for f in (env.home / d).iterdir():
            if f.is_file():
                assert f.stat().st_mode & 0o077 == 0, f
    # daemon.out was rotated at the start instead of growing for ever.
    assert (env.home / "logs" / "daemon.out").stat().st_size < 1 << 20
    assert (env.home / "logs" / "daemon.out.1").stat().st_size == 2 << 20
