"""`llmctl export` as a user runs it, offline: the files it writes (checked strictly against
the upstream schemas), what it says on stderr, and the `--proxy` config serving for real in
front of a stand-in for the cluster's router."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from llmctl import config
from tests import schemas

from .conftest import free_port, start_upstream

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KEY = "sk-export-test-key-0123456789"
CODER = "TheBloke/deepseek-coder-33B-instruct-AWQ"


def llmctl(home: Path, *args: str, cwd: Path | None = None, timeout: float = 60,
           **more_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1",
           "COLUMNS": "200"}
    for name in ("LLMCTL_CONFIG", "LLMCTL_API_KEY"):
        env.pop(name, None)
    env.update(more_env)
    return subprocess.run([sys.executable, "-m", "llmctl", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def pull_here(home: Path, *, general: bool = True) -> None:
    """The models' configs and safetensors headers where the store keeps a model, as if
    pulled (the old stack's Mistral v0.1 is shaped as the v0.2 fixture), and for the coder
    a tokenizer with DeepSeek's FIM tokens: facts and the coder's FIM family are known here."""
    folder = home / "models" / CODER.replace("/", "--")
    shutil.copytree(FIXTURES / "models" / "deepseek-coder-33B-instruct-AWQ", folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        "32015": {"content": "<｜fim▁hole｜>", "special": False}}}))
    if general:
        shutil.copytree(FIXTURES / "models" / "Mistral-7B-Instruct-v0.2-AWQ",
                        home / "models" / "TheBloke--Mistral-7B-v0.1-AWQ")


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    env_file = tmp_path / "old.env"
    env_file.write_text((FIXTURES / "old-stack.env.example").read_text()
                        .replace("sk-old-stack-change-me-0123456789", KEY))
    r = llmctl(h, "config", "import", str(env_file))
    assert r.returncode == 0, r.stderr
    pull_here(h)
    return h


def test_production_stack_values_and_the_front_config_as_files(home, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = llmctl(home, "export", "production-stack", "--assume", "1x96GiB", "-o", "values.yaml",
               "--proxy", cwd=out)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the data went to the file
    values_path, front_path = out / "values.yaml", out / "llmctl-proxy.toml"
    assert stat.S_IMODE(values_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(front_path.stat().st_mode) == 0o600
    values = yaml.safe_load(values_path.read_text())
    assert schemas.errors(schemas.production_stack(), values) == []
    assert schemas.errors(schemas.production_stack(),
                          schemas.helm_merge(schemas.chart_defaults(), values)) == []
    coder, general = values["servingEngineSpec"]["modelSpec"]
    # The weights are in the store: the host memory and disk follow their size.
    assert (coder["requestMemory"], coder["pvcStorage"]) == ("25Gi", "34Gi")
    assert coder["vllmConfig"]["gpuMemoryUtilization"] == 0.45
    assert general["vllmConfig"]["gpuMemoryUtilization"] == 0.4

    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert not any("size and shape are unknown" in w for w in warnings), r.stderr
    assert any(w.startswith("warning: GPU 0: coder, general share it") for w in warnings)
    assert "kubectl create secret generic llmctl-api-key --from-literal=api-key=\"$(llmctl " \
           "config key)\"" in r.stderr
    assert "helm install vllm vllm/vllm-stack -f values.yaml" in r.stderr
    assert "pass --router-url" in r.stderr
    for text in (r.stderr, values_path.read_text()):
        assert KEY not in text

    front = config.parse(tomllib.loads(front_path.read_text()))
    assert [(m.key, m.name, m.url, m.api_key, m.fim) for m in front.models] == [
        ("coder", "deepseek-coder-33b-instruct",
         "http://vllm-router-service.default.svc.cluster.local", KEY, "deepseek"),
        ("general", "mistral-7b-v0.1",
         "http://vllm-router-service.default.svc.cluster.local", KEY, "none")]
    # (the general's tokenizer here has no FIM tokens: "auto" would mean none; it says so)
    assert front.proxy.port == 8080 and front.proxy.api_keys == (KEY,)

    # A key of the shell (LLMCTL_API_KEY) is not written into a file, nor handed to the cluster.
    shell = llmctl(home, "export", "production-stack", "--assume", "1x96GiB",
                   "--proxy-config", "shell.toml", cwd=out, LLMCTL_API_KEY="sk-shell-only-key")
    assert shell.returncode == 0, shell.stderr
    assert tomllib.loads((out / "shell.toml").read_text())["proxy"]["api_keys"] == [KEY]
    assert "sk-shell-only-key" not in (out / "shell.toml").read_text() + shell.stdout

    again = llmctl(home, "export", "production-stack", "-o", "values.yaml", "--proxy", cwd=out)
    assert again.returncode == 1 and "llmctl-proxy.toml already exists" in again.stderr
    assert "hint: pass --force" in again.stderr


def test_kserve_manifests_on_stdout_and_talk_on_stderr(home):
    r = llmctl(home, "export", "kserve", "--assume", "2x48GiB", "-n", "llm")
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["deepseek-coder-33b-instruct",
                                                     "mistral-7b-v0-1"]
    for d in docs:
        assert schemas.errors(schemas.kserve(), d) == []
        assert d["metadata"]["namespace"] == "llm"
    assert "warning" not in r.stdout and KEY not in r.stdout + r.stderr
    assert "kubectl create secret generic llmctl-api-key -n llm" in r.stderr
    assert "kubectl apply -f FILE" in r.stderr
    # KServe serves one name: the aliases (the section names) are said to be llmctl's.
    assert "warning: coder: KServe serves it as deepseek-coder-33b-instruct only" in r.stderr
    # Two cards, a model each: nothing shared to warn about.
    assert "share it in the plan" not in r.stderr


def test_errors_are_one_line_and_a_hint(home, tmp_path):
    r = llmctl(home, "export", "kserve", "--assume", "lots")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read --assume")
    # A plan for this machine that fails (here: on CPU, by construction) points at --assume.
    shutil.copytree(FIXTURES / "models" / "SmolLM2-135M-Instruct",
                    home / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct")
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('[engine]\ndevice = "cpu"\n[models.tiny]\nname = "tiny"\n'
                    'source = "HuggingFaceTB/SmolLM2-135M-Instruct"\nport = 8000\n'
                    'max_model_len = 10000000\nmemory = 0.0001\n')
    r = llmctl(home, "export", "kserve", "-c", str(tiny))
    assert r.returncode == 1 and r.stderr.startswith("error: tiny: a 1 GiB KV cache holds")
    assert r.stderr.rstrip().endswith("; or plan for the cluster's GPUs: --assume 1x80GiB (its "
                                      "card, and how many)"), r.stderr
    r = llmctl(home, "export", "kserve", "--router-url", "gateway:80")
    assert r.returncode == 2 and "--router-url 'gateway:80': an http(s) URL" in r.stderr
    r = llmctl(home, "export", "kserve", "--assume", "2x80GiB", "-o",
               str(tmp_path / "no-such-folder" / "m.yaml"))
    assert r.returncode == 2 and r.stderr.splitlines()[-2:] == [
        f"error: {tmp_path / 'no-such-folder' / 'm.yaml'}: cannot write it (No such file or "
        "directory)", "hint: check that its folder exists and is writable"]
    url_only = tmp_path / "url.toml"
    url_only.write_text('[models.r]\nname = "r"\nurl = "http://127.0.0.1:9"\n')
    r = llmctl(home, "export", "production-stack", "-c", str(url_only))
    assert r.returncode == 1 and "error: nothing to export" in r.stderr and "hint:" in r.stderr


def test_the_front_config_serves_through_a_stand_in_router(tmp_path):
    """The cluster's router, played by the stand-in vLLM server (it answers for one model
    name, as a router does for the names its engines list)."""
    home = tmp_path / "home"
    home.mkdir()
    pull_here(home, general=False)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[proxy]
port = {free_port()}
api_keys = ["{KEY}"]
[models.coder]
name = "deepseek-coder-33b-instruct"
source = "{CODER}"
port = {free_port()}
aliases = ["autocomplete"]
""")
    router = start_upstream("deepseek-coder-33b-instruct")
    front = tmp_path / "front.toml"
    try:
        r = llmctl(home, "export", "production-stack", "-c", str(cfg), "--assume", "1x80GiB",
                   "-o", str(tmp_path / "values.yaml"), "--proxy-config", str(front),
                   "--router-url", router.url)
        assert r.returncode == 0, r.stderr
        assert "pass --router-url" not in r.stderr
        r = llmctl(home, "up", "-c", str(front), "--timeout", "60", timeout=120)
        assert r.returncode == 0, r.stderr
        base = config.load(front).proxy_url
        auth = {"Authorization": f"Bearer {KEY}"}
        for name in ("deepseek-coder-33b-instruct", "autocomplete", "coder"):
            a = httpx.post(f"{base}/v1/chat/completions", headers=auth, timeout=30, json={
                "model": name, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
            assert a.status_code == 200, a.text
            assert a.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
            seen = router.stats()
            assert seen["last_headers"]["authorization"] == f"Bearer {KEY}"  # the Secret's key
            assert json.loads(seen["last_body"])["model"] == "deepseek-coder-33b-instruct"
        # FIM stays in front: the proxy renders DeepSeek's template, the router gets a prompt.
        a = httpx.post(f"{base}/v1/completions", headers=auth, timeout=30, json={
            "model": "autocomplete", "prompt": "def f(", "suffix": "\n    return x",
            "max_tokens": 2})
        assert a.status_code == 200, a.text
        sent = json.loads(router.stats()["last_body"])
        assert sent["prompt"].startswith("<｜fim▁begin｜>def f(<｜fim▁hole｜>") and "suffix" not in sent
        assert httpx.post(f"{base}/v1/chat/completions", timeout=30, json={
            "model": "coder", "messages": []}).status_code == 401  # the keys still hold
    finally:
        llmctl(home, "down", timeout=120)
        router.stop()


SCALE_OUT = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"


def test_scale_out_md_says_what_the_code_does(home, tmp_path):
    """docs/scale-out.md's export commands run as written; its TOML is a valid config; its
    figures are the code's."""
    import re
    import shlex

    from llmctl import export

    doc = SCALE_OUT.read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", doc, re.S)
    commands = []
    for _, body in blocks:
        for line in body.replace("\\\n", " ").splitlines():
            if "llmctl export" in line:
                commands.append(shlex.split(line.split("llmctl ", 1)[1].split("#")[0]))
    assert len(commands) == 2, commands
    for n, argv in enumerate(commands):
        out = tmp_path / f"run{n}"
        out.mkdir()
        r = llmctl(home, *argv, cwd=out)
        assert r.returncode == 0, (argv, r.stderr)
        assert (out / "llmctl-proxy.toml").exists()
    toml = [body for kind, body in blocks if kind == "toml"]
    assert len(toml) == 1
    big = config.parse(tomllib.loads(toml[0].replace("…", "sk-x"))).models[0]
    assert big.url and big.api_key == "sk-x"
    doc = " ".join(doc.split())  # the figures, wherever the lines break
    assert f"{export.CPUS_PER_GPU} CPUs per GPU" in doc
    assert f"weights plus {export.HOST_MEMORY_EXTRA_GIB} GiB, at least " \
           f"{export.HOST_MEMORY_MIN_GIB} GiB" in doc
    assert f"at least {export.DISK_MIN_GIB} GiB ({export.UNKNOWN_DISK_GIB} GiB when" in doc
    assert f"at most {export.NAME_LIMIT} characters" in doc
    assert f"`Qwen/Qwen2.5` → `{export.dns_label('Qwen/Qwen2.5')}`" in doc
