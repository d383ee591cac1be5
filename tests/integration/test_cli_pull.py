"""`llmctl pull | models | rm` as a user runs them, with the real huggingface_hub client
against tests/fakes/hub.py (the hub's file protocol on a local port) serving a small
generated repo: LFS-style weights beside the duplicates vLLM does not need."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, wait_http

HUB = Path(__file__).resolve().parents[1] / "fakes" / "hub.py"
REPO = "org/tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = 8 * 1024 * 1024  # big enough to be caught mid-file when served slowly
WANTED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors"}

# What huggingface_hub spends on an unreachable endpoint before giving up (5 tries with
# backoff): a bound no command that says so at once comes near.
HUB_RETRIES_S = 15


def make_repo(folder: Path) -> None:
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
    header = json.dumps({"w": {"dtype": "U8", "shape": [WEIGHTS],
                               "data_offsets": [0, WEIGHTS]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                               + os.urandom(WEIGHTS))
    (folder / "pytorch_model.bin").write_bytes(os.urandom(1024))
    (folder / "model-q4.gguf").write_bytes(os.urandom(1024))
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(os.urandom(1024))
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(os.urandom(1024))


class Hub:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.folder = tmp / "repo"
        make_repo(self.folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(HUB), "--port", str(self.port),
                                      "--repo", f"{REPO}={self.folder}", *args])
        wait_http(self.url + "/control/log")

    def log(self) -> list:
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


def test_a_pull_killed_mid_file_is_not_a_model_and_the_next_pull_resumes(tmp_path):
    hub = Hub(tmp_path, "--slow", str(2 * 1024 * 1024))  # 8 MiB at 2 MiB/s: 4 s
    home = tmp_path / "home"
    try:
        p = subprocess.Popen([sys.executable, "-m", "llmctl", "pull", REPO],
                             env=env_for(home, hub.url), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        blobs = home / "models" / "hub" / "models--org--tiny" / "blobs"
        deadline = time.monotonic() + 60
        partial = []
        while time.monotonic() < deadline:
            partial = [b for b in blobs.glob("*.incomplete") if b.stat().st_size > 1024 * 1024]
            if partial:
                break
            time.sleep(0.05)
        assert partial, "the weights never started arriving"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        got = partial[0].stat().st_size
        assert got < WEIGHTS
        # Half a model is not a model: `models` says so, `up --no-pull` refuses it.
        listed = json.loads(llmctl(home, hub.url, "models", "--json").stdout)["models"]
        assert [m["complete"] for m in listed] == [False]
        (home / "config.toml").write_text(f'[models.coder]\nname = "t"\nsource = "{REPO}"\n'
                                          'port = 8999\n')
        up = llmctl(home, hub.url, "up", "--no-pull")
        assert up.returncode == 1 and "is not pulled, or its pull was interrupted" in up.stderr
        # The next pull asks only for the rest of the file.
        r = llmctl(home, hub.url, "pull", REPO, "--verify")
        assert r.returncode == 0, r.stderr
        ranges = [rng for name, rng in hub.log() if name == "model.safetensors" and rng]
        assert ranges and int(ranges[-1].split("=")[1].split("-")[0]) >= got - 1024 * 1024
        assert pulled(home)["status"] == "complete"
        listed = json.loads(llmctl(home, hub.url, "models", "--json", "--verify").stdout)
        assert listed["models"][0]["complete"] and listed["models"][0]["mismatched"] == []
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
