"""`llmctl pull | models | rm` as a user runs them, with the real huggingface_hub client
against tests/fakes/hub.py (the hub's file protocol on a local port) serving a small
generated repo: LFS-style weights beside the duplicates vLLM does not need."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, interruptible, wait_http

HUB = Path(__file__).resolve().parents[1] / "fakes" / "hub.py"
REPO = "org/tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MiB = 1024 * 1024
WEIGHTS = 8 * MiB
BIG = 48 * MiB  # three 16 MiB parts: the smallest file fetched in parts
WANTED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors"}

# What huggingface_hub spends on an unreachable endpoint before giving up (5 tries with
# backoff): a bound no command that says so at once comes near.
HUB_RETRIES_S = 15


def make_repo(folder: Path, weights: int = WEIGHTS) -> None:
    """A repo shaped like a real one: safetensors weights, their .bin duplicate, a GGUF,
    an ONNX export and the original checkpoint in subfolders, config and tokenizer."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "hidden_size": 128, "intermediate_size": 256,
        "vocab_size": 1000, "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}))
    (folder / "generation_config.json").write_text('{"do_sample": false}')
    (folder / "tokenizer.json").write_text('{"model": {"vocab": {}}}')
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    header = json.dumps({"w": {"dtype": "U8", "shape": [weights],
                               "data_offsets": [0, weights]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                               + os.urandom(weights))
    (folder / "pytorch_model.bin").write_bytes(os.urandom(1024))
    (folder / "model-q4.gguf").write_bytes(os.urandom(1024))
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(os.urandom(1024))
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(os.urandom(1024))


class Hub:
    def __init__(self, tmp: Path, *args: str, weights: int = WEIGHTS,
                 folder: Path | None = None) -> None:
        """A fake hub serving a new repo in tmp/repo, or `folder` (another's repo)."""
        self.folder = folder or tmp / "repo"
        if folder is None:
            make_repo(self.folder, weights)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(HUB), "--port", str(self.port),
                                      "--repo", f"{REPO}={self.folder}", *args])
        wait_http(self.url + "/control/log")

    def log(self) -> list[dict]:
        """Every file GET: name, range, status, sent (body bytes), start, end."""
        return httpx.get(self.url + "/control/log").json()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def hub(tmp_path):
    h = Hub(tmp_path)
    yield h
    h.stop()


def env_for(home: Path, hub_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "HF_ENDPOINT": hub_url, "NO_COLOR": "1",
           "COLUMNS": "200", "HF_HOME": str(home / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           **extra}
    for k in ("LLMCTL_CONFIG", "LLMCTL_MODELS", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        if k not in extra:
            env.pop(k, None)
    return env


def llmctl(home: Path, hub_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmctl", *args], capture_output=True,
                          text=True, timeout=120, env=env_for(home, hub_url, **extra))


def snapshot(home: Path) -> Path:
    return home / "models" / "hub" / "models--org--tiny" / "snapshots" / COMMIT


def pulled(home: Path) -> dict:
    r = json.loads((home / "models" / "pulls.json").read_text())
    return r[REPO]


def test_a_full_pull_fetches_only_what_vllm_needs_and_records_the_commit(tmp_path, hub):
    home = tmp_path / "home"
    r = llmctl(home, hub.url, "pull", REPO, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)[0]
    assert out["commit"] == COMMIT and out["files"] == len(WANTED)
    assert out["fetched"] == out["bytes"] > WEIGHTS
    files = {str(p.relative_to(snapshot(home))) for p in snapshot(home).rglob("*") if p.is_file()}
    assert files == WANTED  # no .bin duplicate, GGUF, ONNX or original/
    assert (snapshot(home) / "model.safetensors").read_bytes() == \
        (hub.folder / "model.safetensors").read_bytes()
    rec = pulled(home)
    assert rec["status"] == "complete" and rec["commit"] == COMMIT
    assert rec["files"]["model.safetensors"]["sha256"] == hashlib.sha256(
        (hub.folder / "model.safetensors").read_bytes()).hexdigest()
    # Pulled again: nothing is fetched.
    before = len(hub.log())
    again = llmctl(home, hub.url, "pull", REPO)
    assert again.returncode == 0 and "already present" in again.stderr
    assert len(hub.log()) == before


def test_include_fetches_more(tmp_path, hub):
    home = tmp_path / "home"
    r = llmctl(home, hub.url, "pull", REPO, "--include", "original/*", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (snapshot(home) / "original" / "consolidated.00.pth").is_file()
    assert not (snapshot(home) / "pytorch_model.bin").exists()


def parts_map(home: Path) -> tuple[Path, dict] | None:
    """The weights' part file and its map, as a killed pull left them."""
    blobs = home / "models" / "hub" / "models--org--tiny" / "blobs"
    for m in blobs.glob("*.llmctl-part.json"):
        try:
            return m.with_name(m.name.removesuffix(".json")), json.loads(m.read_text())
        except (OSError, ValueError):
            return None
    return None


def held(doc: dict) -> int:
    return sum(have for _start, _end, have, _crc in doc["parts"])


def kill_mid_pull(home: Path, hub: Hub, at_least: int, *args: str) -> tuple[Path, dict]:
    """Start a pull, SIGKILL it once its map records `at_least` bytes of the weights."""
    p = subprocess.Popen([sys.executable, "-m", "llmctl", "pull", REPO, *args],
                         env=env_for(home, hub.url), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = parts_map(home)
            if found and held(found[1]) >= at_least:
                break
            assert p.poll() is None, "the pull ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("the weights never started arriving")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    found = parts_map(home)
    assert found is not None
    return found


def weights_sent(entries: list) -> int:
    return sum(e["sent"] for e in entries if e["name"] == "model.safetensors")


def test_a_large_file_comes_in_ranged_parts_over_several_connections(tmp_path):
    hub = Hub(tmp_path, "--conn-rate", str(4 * MiB), weights=BIG)  # 4 s a part
    home = tmp_path / "home"
    try:
        r = llmctl(home, hub.url, "pull", REPO, "--json", "--connections", "4")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["fetched"] > BIG
        got = [e for e in hub.log() if e["name"] == "model.safetensors"]
        assert len(got) >= 3 and all(e["status"] == 206 for e in got), got
        assert weights_sent(got) == (hub.folder / "model.safetensors").stat().st_size
        # Side by side: the parts' transfers overlap in time. (Two at least: on a busy CI
        # machine the third once started just after the first ended; the pace the
        # parallel parts reach is bench_pull.py's to measure.)
        first_end = min(e["end"] for e in got)
        assert sum(e["start"] < first_end for e in got) >= 2, got
        assert (snapshot(home) / "model.safetensors").read_bytes() == \
            (hub.folder / "model.safetensors").read_bytes()
        blobs = snapshot(home).parents[1] / "blobs"
        assert not list(blobs.glob("*.llmctl-part*")) and not list(blobs.glob("*.incomplete"))
    finally:
        hub.stop()


def test_a_pull_killed_mid_file_is_not_a_model_and_the_next_pull_fetches_only_the_rest(
        tmp_path):
    hub = Hub(tmp_path, "--conn-rate", str(4 * MiB), weights=BIG)  # 3 parts, ~4 s
    home = tmp_path / "home"
    size = (hub.folder / "model.safetensors").stat().st_size
    try:
        work, doc = kill_mid_pull(home, hub, 8 * MiB)
        have = held(doc)
        assert 0 < have < size and len(doc["parts"]) >= 3
        # Never a blob another tool would take for whole, or resume by its size.
        blobs = work.parent
        assert not list(blobs.glob("*.incomplete"))
        assert not (blobs / work.name.removesuffix(".llmctl-part")).exists()
        # Half a model is not a model: `models` says so, `up --no-pull` refuses it.
        listed = json.loads(llmctl(home, hub.url, "models", "--json").stdout)["models"]
        assert [m["complete"] for m in listed] == [False]
        (home / "config.toml").write_text(f'[models.coder]\nname = "t"\nsource = "{REPO}"\n'
                                          'port = 8999\n')
        up = llmctl(home, hub.url, "up", "--no-pull")
        assert up.returncode == 1 and "is not pulled, or its pull was interrupted" in up.stderr
        # The next pull asks only for what the map does not hold: the server's byte count.
        before = len(hub.log())
        r = llmctl(home, hub.url, "pull", REPO, "--json")
        assert r.returncode == 0, r.stderr
        again = hub.log()[before:]
        assert weights_sent(again) == size - have
        assert all(e["range"] for e in again if e["name"] == "model.safetensors")
        assert json.loads(r.stdout)[0]["fetched"] < size
        assert pulled(home)["status"] == "complete"
        assert (snapshot(home) / "model.safetensors").read_bytes() == \
            (hub.folder / "model.safetensors").read_bytes()
        listed = json.loads(llmctl(home, hub.url, "models", "--json", "--verify").stdout)
        assert listed["models"][0]["complete"] and listed["models"][0]["mismatched"] == []
    finally:
        hub.stop()


def test_a_corrupted_part_is_found_and_only_it_is_fetched_again(tmp_path):
    hub = Hub(tmp_path, "--conn-rate", str(4 * MiB), weights=BIG)
    home = tmp_path / "home"
    size = (hub.folder / "model.safetensors").stat().st_size
    try:
        work, doc = kill_mid_pull(home, hub, 8 * MiB)
        start, _end, have, _crc = max(doc["parts"], key=lambda p: p[2])
        assert have > 4096
        with open(work, "r+b") as f:  # one flipped byte inside a part the map says is held
            f.seek(start + have // 2)
            byte = f.read(1)
            f.seek(start + have // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        before = len(hub.log())
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 0, r.stderr
        assert "did not match their checksum; fetching them again" in r.stderr
        again = hub.log()[before:]
        assert weights_sent(again) == size - held(doc) + have
        assert any(e["range"] and e["range"].startswith(f"bytes={start}-") for e in again)
        assert (snapshot(home) / "model.safetensors").read_bytes() == \
            (hub.folder / "model.safetensors").read_bytes()
    finally:
        hub.stop()


def test_a_server_that_ignores_range_gets_one_stream_even_on_resume(tmp_path):
    hub = Hub(tmp_path, "--no-range", "--conn-rate", str(8 * MiB), weights=BIG)
    home = tmp_path / "home"
    size = (hub.folder / "model.safetensors").stat().st_size
    try:
        kill_mid_pull(home, hub, 4 * MiB)
        before = len(hub.log())
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 0, r.stderr
        again = [e for e in hub.log()[before:] if e["name"] == "model.safetensors"]
        # Its first (ranged) request is answered with the whole file, and that is all.
        assert [e["status"] for e in again] == [200] and again[0]["sent"] == size
        assert (snapshot(home) / "model.safetensors").read_bytes() == \
            (hub.folder / "model.safetensors").read_bytes()
    finally:
        hub.stop()


def test_a_hub_that_answers_429_is_waited_for_and_not_flooded(tmp_path):
    hub = Hub(tmp_path, "--busy", "2:2", weights=BIG)
    home = tmp_path / "home"
    try:
        r = llmctl(home, hub.url, "pull", REPO)  # 8 connections by default
        assert r.returncode == 0, r.stderr
        log = hub.log()
        busy = [e for e in log if e["status"] == 429]
        served = [e for e in log if e["status"] != 429]
        assert len(busy) == 2 and served
        # Retry-After: 2 — nothing was asked within it (but what was already on its way).
        for b in busy:
            assert not [e for e in served if b["end"] + 0.25 < e["start"] < b["end"] + 1.95]
        # The pool halved: never more than 4 requests at once after the 429s.
        later = [e for e in served if e["start"] > max(b["end"] for b in busy) + 1]
        assert later
        for e in later:
            assert sum(o["start"] <= e["start"] < o["end"] for o in later) <= 4
        assert (snapshot(home) / "model.safetensors").read_bytes() == \
            (hub.folder / "model.safetensors").read_bytes()
    finally:
        hub.stop()


def same_weights(home: Path, hub: Hub, name: str = "model.safetensors") -> bool:
    return (snapshot(home) / name).read_bytes() == (hub.folder / name).read_bytes()


def test_the_token_goes_to_the_hub_and_never_to_the_cdn_it_redirects_to(tmp_path):
    cdn = Hub(tmp_path, weights=BIG)  # another origin serving the same files
    hub = Hub(tmp_path, "--redirect", cdn.url, folder=cdn.folder)
    home = tmp_path / "home"
    try:
        r = llmctl(home, hub.url, "pull", REPO, HF_TOKEN="hf_secret")
        assert r.returncode == 0, r.stderr
        asked, served = hub.log(), cdn.log()
        assert asked and all(e["status"] == 302 for e in asked)
        assert all(e["auth"] == "Bearer hf_secret" for e in asked), asked
        assert {e["name"] for e in served} == WANTED
        assert all(e["auth"] is None for e in served), served
        assert any(e["status"] == 206 for e in served)  # the parts' requests too
        assert same_weights(home, hub)
    finally:
        hub.stop()
        cdn.stop()


def test_files_with_the_same_bytes_are_fetched_once_and_both_names_lead_to_them(tmp_path):
    hub = Hub(tmp_path, weights=BIG)
    shutil.copy(hub.folder / "model.safetensors", hub.folder / "model-copy.safetensors")
    shutil.copy(hub.folder / "tokenizer_config.json", hub.folder / "chat_config.json")
    home = tmp_path / "home"
    size = (hub.folder / "model.safetensors").stat().st_size
    try:
        r = subprocess.run([sys.executable, "-m", "llmctl", "pull", REPO], capture_output=True,
                           text=True, timeout=60, env=env_for(home, hub.url))
        assert r.returncode == 0, r.stderr
        snap = snapshot(home)
        for a, b in [("model.safetensors", "model-copy.safetensors"),
                     ("tokenizer_config.json", "chat_config.json")]:
            assert (snap / a).resolve() == (snap / b).resolve()
            assert same_weights(home, hub, a) and same_weights(home, hub, b)
        got = hub.log()
        assert sum(e["sent"] for e in got if e["name"].endswith(".safetensors")) == size
    finally:
        hub.stop()


def test_ctrl_c_on_a_stalled_link_stops_at_once_and_the_next_pull_fetches_the_rest(tmp_path):
    stall = 2 * MiB
    hub = Hub(tmp_path, "--stall", str(stall), weights=BIG)  # each body goes silent at 2 MiB
    home = tmp_path / "home"
    size = (hub.folder / "model.safetensors").stat().st_size
    p = subprocess.Popen([sys.executable, "-m", "llmctl", "pull", REPO, "--quiet"],
                         env=env_for(home, hub.url), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 60
        while sum(e["sent"] >= stall for e in hub.log()
                  if e["name"] == "model.safetensors") < 3:  # every part has gone silent
            assert time.monotonic() < deadline and p.poll() is None, p.poll()
            time.sleep(0.05)
        time.sleep(0.5)  # what was sent is read and written; now every read waits
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert time.monotonic() - t0 < 5
        assert p.returncode == 130 and "Traceback" not in err
        assert err.strip().splitlines() == [
            "interrupted: `llmctl pull` again resumes where this one stopped"]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    found = parts_map(home)
    assert found is not None
    have = held(found[1])
    assert have >= 3 * stall
    httpx.get(hub.url + "/control/set?stall=0")
    before = len(hub.log())
    try:
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 0, r.stderr
        assert weights_sent(hub.log()[before:]) == size - have
        assert same_weights(home, hub)
    finally:
        hub.stop()


def test_a_whole_file_in_answer_to_one_range_mid_pull_keeps_the_parts_fetched(tmp_path):
    hub = Hub(tmp_path, "--ignore-range-at", "2", "--conn-rate", str(8 * MiB), weights=BIG)
    home = tmp_path / "home"
    size = (hub.folder / "model.safetensors").stat().st_size
    try:
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 0, r.stderr
        got = [e for e in hub.log() if e["name"] == "model.safetensors"]
        assert [e["status"] for e in got].count(200) == 1, got
        # Taken for a dropped connection: every byte came once, from a range.
        assert sum(e["sent"] for e in got if e["status"] == 206) == size
        assert same_weights(home, hub)
    finally:
        hub.stop()


def test_a_few_502s_from_the_hub_are_retried(tmp_path):
    hub = Hub(tmp_path, "--fail", "3:502")
    home = tmp_path / "home"
    try:
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 0, r.stderr
        assert [e["status"] for e in hub.log()].count(502) == 3
        assert same_weights(home, hub)
    finally:
        hub.stop()


def test_a_connection_that_keeps_dropping_but_brings_bytes_each_time_gets_there(tmp_path):
    hub = Hub(tmp_path, "--cut", str(MiB))  # the 8 MiB weights need 9 connections
    home = tmp_path / "home"
    try:
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 0, r.stderr
        assert len([e for e in hub.log() if e["name"] == "model.safetensors"]) > fetch_attempts()
        assert same_weights(home, hub)
    finally:
        hub.stop()


def fetch_attempts() -> int:
    from llmctl import fetch

    return fetch.ATTEMPTS


def test_a_hub_that_answers_ranges_shorter_than_asked_is_followed(tmp_path):
    hub = Hub(tmp_path, "--range-cap", str(5 * MiB), weights=BIG)  # 16 MiB parts, 5 MiB answers
    home = tmp_path / "home"
    size = (hub.folder / "model.safetensors").stat().st_size
    try:
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 0, r.stderr
        got = [e for e in hub.log() if e["name"] == "model.safetensors"]
        assert all(e["status"] == 206 for e in got) and len(got) >= 10
        assert weights_sent(got) == size
        assert same_weights(home, hub)
    finally:
        hub.stop()


def test_a_kept_alive_connection_the_hub_closed_while_idle_is_opened_again_at_once(tmp_path):
    from llmctl import fetch

    hub = Hub(tmp_path, "--keep-alive", "0.3")
    link = fetch._Link({})  # one worker's connections
    url = f"{hub.url}/{REPO}/resolve/main/config.json"
    try:
        for _ in range(3):
            t0 = time.monotonic()
            r = link.get(url, None)
            assert r.status == 200 and r.read() == (hub.folder / "config.json").read_bytes()
            assert time.monotonic() - t0 < 1  # no back-off
            time.sleep(0.8)  # meanwhile the hub closes the idle connection
    finally:
        link.close()
        hub.stop()


FILL = r"""
set -u
mount -t tmpfs -o size=$((SIZE)) tmpfs "$STORE"
python -m llmctl pull "$REPO" --quiet >/dev/null 2>"$OUT/err" &
pid=$!
for _ in $(seq 600); do
    if ls "$STORE"/hub/*/blobs/*.llmctl-part.json >/dev/null 2>&1; then break; fi
    sleep 0.05
done
dd if=/dev/zero of="$STORE/filler" bs=1M status=none 2>/dev/null
wait $pid
echo $? >"$OUT/rc"
ls "$STORE"/hub/*/blobs/ >"$OUT/blobs"
cp "$STORE/pulls.json" "$OUT/pulls.json"
rm "$STORE/filler"
python -m llmctl pull "$REPO" >/dev/null 2>"$OUT/err2"
echo $? >"$OUT/rc2"
cmp "$STORE"/hub/*/snapshots/*/model.safetensors "$WEIGHTS" && echo same >"$OUT/cmp"
"""


def test_a_disk_that_fills_up_mid_pull_is_one_line_and_resumable(tmp_path):
    """A real small filesystem (tmpfs in a user and mount namespace) that another
    process fills while the pull runs."""
    if subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                      capture_output=True).returncode != 0:
        pytest.skip("needs unshare with user and mount namespaces, to mount a small tmpfs")
    hub = Hub(tmp_path, "--conn-rate", str(8 * MiB), weights=BIG)
    home, out = tmp_path / "home", tmp_path / "out"
    store = home / "models"
    store.mkdir(parents=True)
    out.mkdir()
    size = (hub.folder / "model.safetensors").stat().st_size
    try:
        env = env_for(home, hub.url, STORE=str(store), OUT=str(out), REPO=REPO,
                      SIZE=str(size + 8 * MiB), WEIGHTS=str(hub.folder / "model.safetensors"),
                      PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", FILL],
                       env=env, timeout=180, check=False)
        err = (out / "err").read_text()
        lines = err.strip().splitlines()
        assert (out / "rc").read_text().strip() == "1", err
        assert "Traceback" not in err and len(lines) == 2, err
        assert lines[0].startswith("error: org/tiny: model.safetensors: the disk filled up"), err
        assert lines[1].startswith("hint: free some space") and "resumes" in lines[1]
        blobs = (out / "blobs").read_text().split()
        sha = json.loads((out / "pulls.json").read_text())[REPO]["files"][
            "model.safetensors"]["sha256"]
        assert sha not in blobs and f"{sha}.llmctl-part" in blobs  # never passes for whole
        assert json.loads((out / "pulls.json").read_text())[REPO]["status"] == "pulling"
        assert (out / "rc2").read_text().strip() == "0", (out / "err2").read_text()
        assert (out / "cmp").read_text().strip() == "same"
    finally:
        hub.stop()


def test_a_corrupted_file_is_caught_by_verify_and_fetched_again(tmp_path, hub):
    home = tmp_path / "home"
    assert llmctl(home, hub.url, "pull", REPO).returncode == 0
    blob = (snapshot(home) / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-10:] = b"0123456789"  # same size, other bytes: only a hash can tell
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    r = llmctl(home, hub.url, "models", "--verify")
    assert r.returncode == 1
    assert "org/tiny: model.safetensors" in r.stderr and "pull --verify" in r.stderr
    r = llmctl(home, hub.url, "pull", REPO, "--verify")
    assert r.returncode == 0, r.stderr
    assert "model.safetensors does not match the hub's hash; fetching it again" in r.stderr
    assert llmctl(home, hub.url, "models", "--verify").returncode == 0
    assert (snapshot(home) / "model.safetensors").read_bytes() == \
        (hub.folder / "model.safetensors").read_bytes()


def test_a_gated_repo_needs_the_token(tmp_path):
    hub = Hub(tmp_path, "--gated", f"{REPO}=hf_secret")
    home = tmp_path / "home"
    try:
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "error: org/tiny: the repo is gated" in r.stderr and "HF_TOKEN" in r.stderr
        assert not snapshot(home).exists()
        r = llmctl(home, hub.url, "pull", REPO, HF_TOKEN="hf_secret")
        assert r.returncode == 0, r.stderr
    finally:
        hub.stop()


@pytest.mark.parametrize("ref, needle", [
    ("org/nope", "org/nope: no such model on the hub (or it is private)"),
    (f"{REPO}@v9", "org/tiny: the hub has no revision 'v9'"),
])
def test_a_missing_repo_or_revision_is_one_line(tmp_path, hub, ref, needle):
    r = llmctl(tmp_path / "home", hub.url, "pull", ref)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"error: {needle}" and lines[1].startswith("hint:") and len(lines) == 2


def test_not_enough_disk_is_refused_before_downloading(tmp_path):
    hub = Hub(tmp_path, "--declare", f"{REPO}:model.safetensors={10 * 1024 ** 4}")
    home = tmp_path / "home"
    try:
        r = llmctl(home, hub.url, "pull", REPO)
        assert r.returncode == 1
        assert "org/tiny: needs 10240.00 GiB more on disk" in r.stderr and "free" in r.stderr
        assert hub.log() == []  # not one file was asked for
    finally:
        hub.stop()


def test_an_unreachable_hub_is_one_line_quickly(tmp_path):
    t0 = time.monotonic()
    r = llmctl(tmp_path / "home", f"http://127.0.0.1:{free_port()}", "pull", REPO)
    # The fault this guards: huggingface_hub's retries (5, with backoff) of a request it
    # would send anyway, instead of one reachability probe that fails at once.
    assert time.monotonic() - t0 < HUB_RETRIES_S
    assert r.returncode == 1 and "the model hub is not reachable" in r.stderr
    assert "local folder" in r.stderr


def test_models_lists_and_rm_removes(tmp_path, hub):
    home = tmp_path / "home"
    assert llmctl(home, hub.url, "pull", REPO).returncode == 0
    (home / "config.toml").write_text(f'[models.coder]\nname = "t"\nsource = "{REPO}"\n'
                                      'port = 8999\n')
    data = json.loads(llmctl(home, hub.url, "models", "--json").stdout)
    [m] = data["models"]
    assert m["source"] == REPO and m["commit"] == COMMIT and m["complete"]
    assert m["configured"] == ["coder"] and m["served"] == []
    assert m["quantization"] == "bfloat16" and m["bytes"] == data["total_bytes"] > WEIGHTS
    table = llmctl(home, hub.url, "models").stdout
    assert REPO in table and COMMIT[:12] in table and "coder" in table and "total" in table
    # Configured: refused without --force, and nothing is lost.
    r = llmctl(home, hub.url, "rm", REPO)
    assert r.returncode == 1 and "is configured for coder" in r.stderr and "--force" in r.stderr
    assert snapshot(home).exists()
    r = llmctl(home, hub.url, "rm", "coder", "--force")  # by its configured name
    assert r.returncode == 0, r.stderr
    assert not (home / "models" / "hub" / "models--org--tiny").exists()
    assert json.loads(llmctl(home, hub.url, "models", "--json").stdout)["models"] == []
    r = llmctl(home, hub.url, "rm", REPO, "--force")
    assert r.returncode == 1 and "is not in the store" in r.stderr


def test_a_model_another_tool_left_in_the_cache_is_used_without_the_hub(tmp_path, hub):
    home = tmp_path / "home"
    assert llmctl(home, hub.url, "pull", REPO).returncode == 0
    (home / "models" / "pulls.json").unlink()  # as if `hf download` had put it there
    offline = f"http://127.0.0.1:{free_port()}"
    r = llmctl(home, offline, "pull", REPO)
    assert r.returncode == 0 and "already present" in r.stderr, r.stderr
    # A partial download in the cache makes it unusable until pulled again.
    blobs = home / "models" / "hub" / "models--org--tiny" / "blobs"
    (blobs / "feedface.incomplete").write_bytes(b"x")
    r = llmctl(home, offline, "pull", REPO)
    assert r.returncode == 1 and "not reachable" in r.stderr
