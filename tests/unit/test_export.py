"""`llmctl export` as a pure function: tables of configs and plans → the documents (checked
against the upstream schemas, strictly, and at exact paths), the warnings, the front
config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from llmctl import config, envfile, export
from llmctl.errors import ConfigError
from llmctl.gpu import assumed
from llmctl.hub import facts
from llmctl.plan import plan
from tests import schemas
from tests.schemas import at

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
OLD_ENV = Path(__file__).resolve().parents[1] / "fixtures" / "old-stack.env.example"
DEEPSEEK = facts(MODELS / "deepseek-coder-33B-instruct-AWQ")
MISTRAL = facts(MODELS / "Mistral-7B-Instruct-v0.2-AWQ")
KEY = "sk-test-secret-never-in-a-manifest"


def cfg_of(toml: str, keys: tuple[str, ...] = (KEY,)) -> config.Config:
    raw = tomllib.loads(toml)
    raw.setdefault("proxy", {})["api_keys"] = list(keys)
    return config.parse(raw)


def valid(e: export.Export) -> None:
    """Every document passes the strict check (production-stack: alone and as Helm
    validates it, over the chart's defaults), and the key is nowhere in the output."""
    for doc in e.documents:
        if e.target == "production-stack":
            assert schemas.errors(schemas.production_stack(), doc) == []
            merged = schemas.helm_merge(schemas.chart_defaults(), doc)
            assert schemas.errors(schemas.production_stack(), merged) == []
        else:
            assert schemas.errors(schemas.kserve(), doc) == []
            assert export.DNS_LABEL.match(doc["metadata"]["name"])
    text = export.to_yaml(e.documents, export.header(e, "config.toml", "test"))
    assert list(yaml.safe_load_all(text)) == list(e.documents)
    assert KEY not in text


def both(cfg: config.Config, p, **opts) -> dict[str, export.Export]:
    out = {t: export.build(t, cfg, p, export.Options(**opts)) for t in export.TARGETS}
    for e in out.values():
        valid(e)
    return out


# ── the old compose stack's two models on one 96 GiB card ──


@pytest.fixture
def old_stack() -> config.Config:
    cfg, _, _ = envfile.import_env(OLD_ENV)
    return cfg


def test_the_old_compose_stack_on_one_96gib_card(old_stack):
    p = plan(old_stack, assumed("1x96GiB"), {"coder": DEEPSEEK, "general": MISTRAL})
    e = both(old_stack, p, vllm_version="0.32.0")
    ps, ks = e["production-stack"].documents[0], e["kserve"].documents
    rows = {
        "servingEngineSpec.vllmApiKey": {"secretName": "llmctl-api-key", "secretKey": "api-key"},
        "servingEngineSpec.strategy.type": "Recreate",
        "servingEngineSpec.modelSpec[0].name": "deepseek-coder-33b-instruct",
        "servingEngineSpec.modelSpec[0].repository": "vllm/vllm-openai",
        "servingEngineSpec.modelSpec[0].tag": "v0.32.0",
        "servingEngineSpec.modelSpec[0].modelURL": "TheBloke/deepseek-coder-33B-instruct-AWQ",
        "servingEngineSpec.modelSpec[0].modelRevision": "main",
        "servingEngineSpec.modelSpec[0].requestGPU": 1,
        "servingEngineSpec.modelSpec[0].vllmConfig.maxModelLen": 4096,
        "servingEngineSpec.modelSpec[0].vllmConfig.maxNumSeqs": 64,
        "servingEngineSpec.modelSpec[0].vllmConfig.gpuMemoryUtilization": 0.45,
        "servingEngineSpec.modelSpec[0].vllmConfig.enablePrefixCaching": True,
        "servingEngineSpec.modelSpec[0].vllmConfig.extraArgs": [
            "--served-model-name", "deepseek-coder-33b-instruct", "coder",
            "--max-num-batched-tokens", "8192"],
        "servingEngineSpec.modelSpec[1].name": "mistral-7b-v0-1",
        "servingEngineSpec.modelSpec[1].modelURL": "TheBloke/Mistral-7B-v0.1-AWQ",
        "servingEngineSpec.modelSpec[1].vllmConfig.maxModelLen": 8192,
        "servingEngineSpec.modelSpec[1].vllmConfig.maxNumSeqs": 128,
        "servingEngineSpec.modelSpec[1].vllmConfig.gpuMemoryUtilization": 0.4,
        "servingEngineSpec.modelSpec[1].vllmConfig.extraArgs[1]": "mistral-7b-v0.1",
        "servingEngineSpec.modelSpec[1].vllmConfig.extraArgs[2]": "general",
    }
    for path, want in rows.items():
        assert at(ps, path) == want, path
    spec = ps["servingEngineSpec"]["modelSpec"][0]
    assert "tensorParallelSize" not in spec["vllmConfig"]
    # The weights are known here (16.77 GiB): the host memory and disk follow them.
    assert (spec["requestCPU"], spec["requestMemory"], spec["pvcStorage"]) == (4, "25Gi", "34Gi")

    assert [at(d, "metadata.name") for d in ks] == ["deepseek-coder-33b-instruct",
                                                    "mistral-7b-v0-1"]
    k = {
        "apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceService",
        "metadata.namespace": "default",
        "spec.model.uri": "hf://TheBloke/deepseek-coder-33B-instruct-AWQ:main",
        "spec.model.name": "deepseek-coder-33b-instruct",
        "spec.replicas": 1,
        "spec.template.containers[0].name": "main",
        "spec.template.containers[0].env[0]": {"name": "VLLM_API_KEY", "valueFrom": {
            "secretKeyRef": {"name": "llmctl-api-key", "key": "api-key"}}},
        "spec.template.containers[0].env[1]": {
            "name": "VLLM_ADDITIONAL_ARGS",
            "value": "--max-model-len 4096 --max-num-seqs 64 --gpu-memory-utilization 0.450 "
                     "--max-num-batched-tokens 8192"},
        "spec.template.containers[0].resources": {
            "requests": {"cpu": "4", "memory": "25Gi", "nvidia.com/gpu": "1"},
            "limits": {"nvidia.com/gpu": "1"}},
        "spec.router": {"route": {}, "gateway": {}, "scheduler": {}},
    }
    for path, want in k.items():
        assert at(ks[0], path) == want, path
    assert "parallelism" not in ks[0]["spec"]
    for x in e.values():
        shared = [w for w in x.warnings if w.startswith("GPU 0:")]
        assert shared == ["GPU 0: coder, general share it in the plan (0.45 + 0.4 of it); on "
                          "the cluster each gets GPUs of its own and could use more: "
                          "`--assume 2x96GiB` plans a card for each"]


def test_offline_the_plan_lacks_facts_and_the_export_says_so(old_stack):
    p = plan(old_stack, assumed("1x96GiB"), {})  # not pulled, no hub
    e = both(old_stack, p)
    spec = e["production-stack"].documents[0]["servingEngineSpec"]["modelSpec"][0]
    assert spec["tag"] == "latest"  # no vLLM here to follow
    assert (spec["requestMemory"], spec["pvcStorage"]) == ("16Gi", "50Gi")
    assert spec["vllmConfig"]["gpuMemoryUtilization"] == 0.45  # the configured share
    w = e["kserve"].warnings
    assert any(x.startswith("coder: its size and shape are unknown here") and
               "the configured 0.45" in x and "`llmctl pull coder`" in x for x in w), w


def test_a_cpu_plan_asks_for_one_gpu_each_with_vllms_default_share(old_stack):
    p = plan(old_stack, assumed("cpu:64GiB:16"), {"coder": DEEPSEEK, "general": MISTRAL})
    e = both(old_stack, p)
    spec = e["production-stack"].documents[0]["servingEngineSpec"]["modelSpec"][0]
    assert spec["requestGPU"] == 1 and "gpuMemoryUtilization" not in spec["vllmConfig"]
    assert spec["vllmConfig"]["extraArgs"] == ["--served-model-name",
                                              "deepseek-coder-33b-instruct", "coder"]
    env = e["kserve"].documents[0]["spec"]["template"]["containers"][0]["env"]
    assert env[1]["value"] == "--max-model-len 4096 --max-num-seqs 64"
    for x in e.values():
        assert sum(w.startswith("the plan is for CPU") for w in x.warnings) == 1


# ── a model on two cards ──


def test_a_model_too_big_for_one_card_is_tensor_parallel_on_two():
    cfg = cfg_of("""
[models.coder]
name = "deepseek-coder-33b-instruct"
source = "TheBloke/deepseek-coder-33B-instruct-AWQ@b7c6f2b"
port = 8000
""")
    p = plan(cfg, assumed("2x16GiB"), {"coder": DEEPSEEK})
    assert p["coder"].tensor_parallel == 2
    e = both(cfg, p)
    ps = e["production-stack"].documents[0]
    assert at(ps, "servingEngineSpec.modelSpec[0].requestGPU") == 2
    assert at(ps, "servingEngineSpec.modelSpec[0].vllmConfig.tensorParallelSize") == 2
    assert at(ps, "servingEngineSpec.modelSpec[0].vllmConfig.gpuMemoryUtilization") == \
        p["coder"].gpu_memory_utilization
    assert at(ps, "servingEngineSpec.modelSpec[0].modelRevision") == "b7c6f2b"
    assert at(ps, "servingEngineSpec.modelSpec[0].requestCPU") == 8
    ks = e["kserve"].documents[0]
    assert at(ks, "spec.parallelism") == {"tensor": 2}
    assert at(ks, "spec.model.uri") == "hf://TheBloke/deepseek-coder-33B-instruct-AWQ:b7c6f2b"
    res = at(ks, "spec.template.containers[0].resources")
    assert res["limits"] == {"nvidia.com/gpu": "2"} and res["requests"]["nvidia.com/gpu"] == "2"
    assert "--tensor-parallel-size" not in at(ks, "spec.template.containers[0].env[1].value")
    assert not any(w.startswith("GPU") for w in e["kserve"].warnings)


def test_the_commit_pulled_here_pins_the_revision():
    cfg = cfg_of('[models.a]\nname = "a"\nsource = "org/a"\nport = 8000\n'
                 '[models.b]\nname = "b"\nsource = "org/b@v2"\nport = 8001\n')
    p = plan(cfg, assumed("2x80GiB"), {})
    e = both(cfg, p, pulled={"a": "0123abcd" * 5, "b": "fedc" * 10})
    specs = e["production-stack"].documents[0]["servingEngineSpec"]["modelSpec"]
    assert [s["modelRevision"] for s in specs] == ["0123abcd" * 5, "v2"]  # a named revision wins
    assert e["kserve"].documents[0]["spec"]["model"]["uri"] == "hf://org/a:" + "0123abcd" * 5


# ── what the cluster does not do ──

DEMAND = """
[models.coder]
name = "coder-big"
source = "org/coder"
port = 8000
[models.chat]
name = "chat-a"
source = "org/chat-a"
port = 8001
group = "chat"
[models.chat-b]
name = "chat-b"
source = "org/chat-b"
port = 8002
group = "chat"
start = "on-demand"
swap = "sleep"
[models.later]
name = "later"
source = "org/later"
port = 8003
start = "on-demand"
idle_stop = "10m"
fim = "none"
"""


def test_on_demand_groups_and_sleep_are_exported_and_warned_one_line_each():
    cfg = cfg_of(DEMAND)
    p = plan(cfg, assumed("4x80GiB"), {})
    e = both(cfg, p)
    for target, x in e.items():
        assert x.models == ("coder", "chat", "chat-b", "later")
        w = x.warnings
        scale = ("KEDA" if target == "production-stack" else "`spec.scaling`")
        assert [y for y in w if y.startswith("later: start")] == [
            f"later: start = \"on-demand\": the cluster runs it all the time; for scale to "
            f"zero use {scale}" + (" (the model's `keda:` block, minReplicaCount 0)"
                                   if target == "production-stack" else
                                   " (KEDA or WVA, minReplicas 0)")]
        assert sum(y.startswith("group chat (chat, chat-b): the cluster runs every member at "
                                "once") for y in w) == 1
        assert sum(y.startswith("chat-b: swap = \"sleep\"") for y in w) == 1
        assert not any(y.startswith("chat-b: start") for y in w)  # said by its group's line
        assert sum(y.startswith("coder, chat, chat-b: fill-in-the-middle") for y in w) == 1
        assert all("\n" not in y for y in w)
    # No sleep mode on the cluster: the flag llmctl adds for a sleeping swap is not carried.
    specs = e["production-stack"].documents[0]["servingEngineSpec"]["modelSpec"]
    assert all("--enable-sleep-mode" not in s["vllmConfig"]["extraArgs"] for s in specs)


def test_url_and_local_folder_models_are_skipped_and_said(tmp_path):
    cfg = cfg_of(f"""
[models.coder]
name = "coder"
source = "org/coder"
port = 8000
[models.remote]
name = "remote"
url = "http://10.0.0.5:9000/v1"
api_key = "sk-remote"
[models.mine]
name = "mine"
source = "{MODELS / 'SmolLM2-135M-Instruct'}"
port = 8001
""")
    p = plan(cfg, assumed("2x80GiB"), {})
    e = both(cfg, p)
    for x in e.values():
        assert x.models == ("coder",)
        assert sum(y.startswith("remote: a `url` model (http://10.0.0.5:9000/v1) is a server "
                                "llmctl routes to: not exported") for y in x.warnings) == 1
        assert sum(y.startswith("mine: its source is a folder on this machine") for y in
                   x.warnings) == 1
    assert len(e["production-stack"].documents[0]["servingEngineSpec"]["modelSpec"]) == 1
    assert len(e["kserve"].documents) == 1
    with pytest.raises(ConfigError, match="nothing to export"):
        export.production_stack(cfg_of('[models.r]\nname = "r"\nurl = "http://x:1"\n'),
                                plan(cfg, assumed("1x80GiB"), {}))


def test_what_only_the_proxy_does_is_said_unless_it_stays_in_front():
    cfg = cfg_of('[models.coder]\nname = "coder-33b"\nsource = "org/coder"\nport = 8000\n'
                 'aliases = ["autocomplete"]\n', keys=(KEY, "sk-second"))
    p = plan(cfg, assumed("1x80GiB"), {})
    alone = both(cfg, p, named_keys=3)
    fronted = both(cfg, p, named_keys=3, proxy=True)
    ps, ks = alone["production-stack"].warnings, alone["kserve"].warnings
    assert "coder: fill-in-the-middle (`suffix`, `/infill`) is rendered by llmctl's proxy and " \
           "vLLM refuses it: add --proxy to keep llmctl in front" in ps
    assert any(y.startswith("3 named key(s)") for y in ps)
    assert "coder: KServe serves it as coder-33b only; its other names (autocomplete, coder) " \
           "are llmctl's: add --proxy to keep them" in ks
    assert not any("KServe serves" in y for y in ps)  # production-stack serves every name
    for x in fronted.values():
        assert not any("--proxy" in y for y in x.warnings), x.warnings
    # Without named keys, a second configured key is what is lost.
    two = export.production_stack(cfg, p, export.Options())
    assert any(y.startswith("proxy.api_keys has 2 keys") for y in two.warnings)
    # No key at all: no Secret to read, and said.
    open_cfg = cfg_of('[models.coder]\nname = "c"\nsource = "org/c"\nport = 8000\n', keys=())
    for x in both(open_cfg, p).values():
        assert any(y.startswith("no API key is configured") for y in x.warnings)
        assert not x.secret
    assert "vllmApiKey" not in both(open_cfg, p)["production-stack"].documents[0][
        "servingEngineSpec"]


# ── the parsers and args ──


def test_parser_flags_and_args_travel_once_as_vllm_arguments():
    cfg = cfg_of('[models.coder]\nname = "qwen-coder"\nsource = "Qwen/Qwen2.5-Coder-7B"\n'
                 'port = 8000\nargs = ["--enable-auto-tool-choice", "--tool-call-parser", '
                 '"hermes", "--reasoning-parser=deepseek_r1", "--chat-template", "t j.jinja"]\n')
    m = cfg.models[0]
    assert export.parser_args(m) == (
        ("--enable-auto-tool-choice", "--tool-call-parser", "hermes",
         "--reasoning-parser=deepseek_r1"), ("--chat-template", "t j.jinja"))
    p = plan(cfg, assumed("1x80GiB"), {})
    e = both(cfg, p)
    extra = at(e["production-stack"].documents[0], "servingEngineSpec.modelSpec[0].vllmConfig"
                                                    ".extraArgs")
    assert extra[extra.index("--max-num-batched-tokens") + 2:] == [
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--reasoning-parser=deepseek_r1", "--chat-template", "t j.jinja"]
    value = at(e["kserve"].documents[0], "spec.template.containers[0].env[1].value")
    assert value.endswith("--enable-auto-tool-choice --tool-call-parser hermes "
                          "--reasoning-parser=deepseek_r1 --chat-template 't j.jinja'")


def test_the_parsers_up_would_run_go_to_the_cluster_unless_args_name_them():
    cfg = cfg_of('[models.coder]\nname = "qwen3-coder"\nsource = "Qwen/Qwen3-Coder-30B"\n'
                 'port = 8000\n')
    m = cfg.models[0]
    assert export.parser_args(m, ("qwen3_coder", "qwen3")) == (
        ("--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder",
         "--reasoning-parser", "qwen3"), ())
    assert export.parser_args(m, (None, None)) == ((), ())  # tools = "none": no parser
    p = plan(cfg, assumed("1x80GiB"), {})
    e = both(cfg, p, parsers={"coder": ("qwen3_coder", None)})
    extra = at(e["production-stack"].documents[0], "servingEngineSpec.modelSpec[0].vllmConfig"
                                                    ".extraArgs")
    assert extra[-3:] == ["--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder"]
    # Flags in the model's own args win, as engine.py does for `up`.
    named = cfg_of('[models.coder]\nname = "c"\nsource = "Qwen/Qwen3-Coder-30B"\nport = 8000\n'
                   'args = ["--tool-call-parser", "hermes"]\n').models[0]
    assert export.parser_args(named, ("qwen3_coder", None))[0] == ("--tool-call-parser",
                                                                   "hermes")


# ── names ──


@pytest.mark.parametrize("name, label", [
    ("deepseek-coder-33b-instruct", "deepseek-coder-33b-instruct"),
    ("Qwen/Qwen2.5", "qwen-qwen2-5"),
    ("mistral-7b-v0.1", "mistral-7b-v0-1"),
    ("coder", "coder"),
    ("7b-chat", "m-7b-chat"),
    ("--weird__Name--", "weird-name"),
    ("模型", "m"),
    ("org/" + "x" * 80, "org-" + "x" * 29 + "-"),  # cut, then a hash of the whole name
])
def test_names_become_dns_1123_labels(name, label):
    got = export.dns_label(name)
    assert export.DNS_LABEL.match(got) and len(got) <= export.NAME_LIMIT and got[0].isalpha()
    assert got.startswith(label) if label.endswith("-") else got == label


def test_labels_stay_unique():
    cfg = cfg_of('[models.a]\nname = "chat.v1"\nsource = "o/a"\nport = 8000\n'
                 '[models.b]\nname = "chat-v1"\nsource = "o/b"\nport = 8001\n')
    e = both(cfg, plan(cfg, assumed("2x80GiB"), {}))
    names = [d["metadata"]["name"] for d in e["kserve"].documents]
    assert names[0] == "chat-v1" and names[1].startswith("chat-v1-") and len(set(names)) == 2


# ── the front config ──


def test_the_front_config_keeps_names_keys_and_url_models():
    cfg = cfg_of("""
[proxy]
port = 8181
web = false
[models.coder]
name = "deepseek-coder-33b-instruct"
source = "TheBloke/deepseek-coder-33B-instruct-AWQ"
port = 8000
aliases = ["autocomplete"]
[models.general]
name = "mistral"
source = "org/mistral"
port = 8001
fim = "none"
[models.remote]
name = "remote"
url = "https://llm.example.com/v1"
api_key = "sk-remote"
""")
    p = plan(cfg, assumed("2x80GiB"), {})
    ps = export.production_stack(cfg, p, export.Options(proxy=True, fim={"coder": "deepseek"}))
    ks = export.kserve(cfg, p, export.Options(proxy=True, namespace="team-a",
                                              router_url="https://gw.example.com/"))
    for e, urls in ((ps, ["http://vllm-router-service.default.svc.cluster.local"] * 2),
                    (ks, ["https://gw.example.com/team-a/deepseek-coder-33b-instruct",
                          "https://gw.example.com/team-a/mistral"])):
        text = export.front_toml(e.front, "config.toml")
        back = config.parse(tomllib.loads(text))
        assert back.proxy == cfg.proxy  # port, keys, web page: as they were
        assert [m.key for m in back.models] == ["coder", "general", "remote"]
        for m, old in zip(back.models, cfg.models, strict=True):
            assert m.names == old.names and not m.managed
        assert [m.url for m in back.models[:2]] == urls
        assert [m.api_key for m in back.models[:2]] == [KEY, KEY]
        assert back.models[2] == cfg.models[2]  # the url model as it was
    assert [m.fim for m in config.parse(tomllib.loads(export.front_toml(ps.front, "x"))).models
            ] == ["deepseek", "none", "auto"]
    assert any(y.startswith("coder: fim = \"auto\" and its tokenizer is not here")
               for y in ks.warnings)
    assert ps.router_url == "http://vllm-router-service.default.svc.cluster.local"
    assert ks.router_url == "https://gw.example.com"


def test_next_steps_name_the_secret_without_the_key():
    cfg = cfg_of('[models.c]\nname = "c"\nsource = "o/c"\nport = 8000\n')
    e = export.kserve(cfg, plan(cfg, assumed("1x80GiB"), {}), export.Options(
        proxy=True, namespace="llm"))
    steps = export.next_steps(e, manifests="m.yaml", config_flag=" -c my.toml",
                              front="front.toml", namespace="llm", router_given=False)
    assert steps[0].endswith("kubectl create secret generic llmctl-api-key -n llm "
                             "--from-literal=api-key=\"$(llmctl config key -c my.toml)\"")
    assert "kubectl apply -f m.yaml" in steps[1]
    assert "pass --router-url" in steps[2] and steps[3].endswith(
        "`llmctl up -c front.toml`: the same port, names and keys, answered by the cluster")
    assert KEY not in "".join(steps)


# ── YAML ──


def test_yaml_reads_back_as_written():
    doc = {"a": "1", "b": 1, "c": 0.45, "d": True, "e": "yes", "f": "", "g": [], "h": {},
           "i": ["x: y", {"k": "v", "l": [1, {"m": None}]}, []], "nvidia.com/gpu": "2",
           "j": "line\nnext \"quoted\" 'single' #hash ünï", "on": "off", "-k": "- v"}
    text = export.to_yaml([doc, {"second": 2}], ["a header", ""])
    assert text.startswith("# a header\n#\n---\n")
    assert list(yaml.safe_load_all(text)) == [doc, {"second": 2}]
