"""`llmctl export`: the configured models on a cluster that runs vLLM at scale, as a Helm
values file for vllm-project/production-stack or KServe `LLMInferenceService` manifests,
and the llmctl config that keeps llmctl's proxy in front of them (`--proxy`).

May import: config, errors, hub, plan. Pure: (config, plan, what the CLI read on this
machine) → documents as plain dicts, the lines the user must read, and the front config;
the CLI renders them (`to_yaml`, `config.to_toml`) and writes the files. The only look at
the disk is `hub.is_local`, which tells a folder from a hub repo id.

The rules both targets share: one deployment per `source` model, from its hub repo at a
pinned revision; context length, sequences, tensor parallelism, GPU count and memory
share from the plan (`--assume` plans for the cluster's cards); the API key as a
reference to a Kubernetes Secret, never the key. What the cluster does not do itself
(on-demand starts, groups, sleep swaps, CPU plans, FIM, named keys, aliases on KServe,
`url` and local-folder models) is one warning line each, with what to do instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Config, ModelConfig, to_toml
from .errors import ConfigError
from .hub import is_local, split_ref
from .plan import Plan

GIB = 1024**3
TARGETS = ("production-stack", "kserve")

# The Secret that holds the key the cluster's vLLM servers accept (VLLM_API_KEY).
SECRET_NAME = "llmctl-api-key"
SECRET_KEY = "api-key"

# production-stack's docs install the chart as release "vllm" (`helm install vllm
# vllm/vllm-stack`); its router's Service is then vllm-router-service, on port 80.
PS_IMAGE = "vllm/vllm-openai"
PS_ROUTER = "http://vllm-router-service.{namespace}.svc.cluster.local"
# KServe routes /NAMESPACE/NAME/v1/… through the Gateway its controller is configured with
# (kserve/kserve-ingress-gateway by default); the Service behind a Gateway is named by the
# Gateway implementation, so this address is a placeholder the user replaces.
KS_API_VERSION = "serving.kserve.io/v1alpha2"  # the CRD's storage version
KS_GATEWAY = "http://kserve-ingress-gateway.kserve.svc.cluster.local"

# Kubernetes names built from a model's: the charts add suffixes (production-stack:
# RELEASE-NAME-engine-service; KServe: NAME-kserve-workload-svc), and a Service name is
# a DNS-1035 label of at most 63 characters, so ours keep 40 and start with a letter.
NAME_LIMIT = 40

# Pod sizes llmctl cannot read from the plan: CPUs per GPU, host memory beyond the weights
# (vLLM's API server, tokenizer and the weights' pages while they load), disk for the
# hub cache. Stated in docs/scale-out.md; the user adjusts them in the file.
CPUS_PER_GPU = 4
HOST_MEMORY_EXTRA_GIB = 8
HOST_MEMORY_MIN_GIB = 16
DISK_MIN_GIB = 20
UNKNOWN_DISK_GIB = 50

# vLLM's flags for tool calling and reasoning (flag → whether it takes a value).
PARSER_FLAGS = {"--enable-auto-tool-choice": False, "--tool-call-parser": True,
                "--tool-parser-plugin": True, "--reasoning-parser": True}


@dataclass(frozen=True)
class Options:
    """What the user asked for, and what the CLI read on this machine (nothing here is
    looked up by this module)."""

    proxy: bool = False  # also build the llmctl config that fronts the cluster
    router_url: str = ""  # how the front config reaches the cluster; "" = in-cluster default
    namespace: str = "default"
    vllm_version: str = ""  # the vLLM here: production-stack's image tag follows it
    pulled: Mapping[str, str] = field(default_factory=dict)  # model key → commit pulled here
    # model key → the FIM family its tokenizer here shows (None: none); absent: no tokenizer
    fim: Mapping[str, str | None] = field(default_factory=dict)
    named_keys: int = 0  # keys in keys.toml
    # model key → (tool-call parser, reasoning parser) as `up` here would run it (the
    # config's `tools`/`reasoning` over what detection found); absent: neither
    parsers: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Export:
    target: str
    documents: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...]  # what the cluster does not do itself, and what to do instead
    front: Config | None = None  # with --proxy: every model a `url` backend to the cluster
    models: tuple[str, ...] = ()  # the keys of the exported models
    router_url: str = ""  # where the front config points (with --proxy)
    secret: bool = False  # the documents read the key from SECRET_NAME


# ── names ────────────────────────────────────────────────────────────────────


def dns_label(text: str, limit: int = NAME_LIMIT) -> str:
    """A DNS-1123 label (that is also a DNS-1035 one: it starts with a letter) from any
    name: lowercase, runs of other characters → "-", cut to `limit` with a short hash of
    the whole name so two long names stay apart."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not s or not s[0].isalpha():
        s = ("m-" + s).rstrip("-")
    if len(s) > limit:
        tail = hashlib.sha256(text.encode()).hexdigest()[:6]
        s = s[:limit - len(tail) - 1].rstrip("-") + "-" + tail
    return s


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _labels(models: list[ModelConfig]) -> dict[str, str]:
    """One label per model, unique: a clash (`a.b` and `a-b`) takes the key's hash."""
    out: dict[str, str] = {}
    for m in models:
        label = dns_label(m.name)
        if label in out.values():
            tail = hashlib.sha256(m.key.encode()).hexdigest()[:6]
            label = dns_label(m.name, NAME_LIMIT - 7) + "-" + tail
        out[m.key] = label
    return out


# ── what both targets share ──────────────────────────────────────────────────


def parser_args(m: ModelConfig, chosen: tuple[str | None, str | None] = (None, None)
                ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the tool-call and reasoning parser flags for `m`, its other `args`).

    The one place that builds the parser flags: those in the model's `args` (they win, as
    in engine.py), else the parsers `up` would run (`chosen`: the config's `tools` and
    `reasoning` over what detection found here), so the cluster parses tool calls and
    thinking as this machine does. Neither target's schema has fields for them
    (production-stack's templates read `enableTool` and `toolCallParser`, but its values
    schema does not list them), so they travel as vLLM arguments."""
    parsers: list[str] = []
    rest: list[str] = []
    args = list(m.args)
    i = 0
    while i < len(args):
        a = args[i]
        flag = a.split("=", 1)[0]
        if flag in PARSER_FLAGS:
            takes = PARSER_FLAGS[flag] and "=" not in a and i + 1 < len(args)
            parsers += args[i:i + 2] if takes else [a]
            i += 2 if takes else 1
        else:
            rest.append(a)
            i += 1
    tool, thinking = chosen
    if tool and "--tool-call-parser" not in " ".join(parsers):
        parsers += ["--enable-auto-tool-choice", "--tool-call-parser", tool]
    if thinking and "--reasoning-parser" not in " ".join(parsers):
        parsers += ["--reasoning-parser", thinking]
    return tuple(parsers), tuple(rest)


@dataclass(frozen=True)
class _Model:
    """One model as the cluster runs it."""

    m: ModelConfig
    label: str
    repo: str
    revision: str
    gpus: int
    tensor_parallel: int
    memory: float | None  # --gpu-memory-utilization; None: vLLM's default
    batched: int  # --max-num-batched-tokens; 0: vLLM's default
    weights: int | None  # bytes, all cards together; None: unknown here
    parsers: tuple[str, ...]
    args: tuple[str, ...]

    @property
    def cpus(self) -> int:
        return CPUS_PER_GPU * self.gpus

    @property
    def host_memory_gib(self) -> int:
        if self.weights is None:
            return HOST_MEMORY_MIN_GIB
        return max(HOST_MEMORY_MIN_GIB, math.ceil(self.weights / GIB) + HOST_MEMORY_EXTRA_GIB)

    @property
    def disk_gib(self) -> int:
        if self.weights is None:
            return UNKNOWN_DISK_GIB
        return max(DISK_MIN_GIB, math.ceil(2 * self.weights / GIB))

    def engine_args(self) -> list[str]:
        """The vLLM arguments the plan adds beyond a target's own fields, then the
        parsers, then the model's `args` as given."""
        out = ["--max-num-batched-tokens", str(self.batched)] if self.batched else []
        return out + list(self.parsers) + list(self.args)


@dataclass(frozen=True)
class _Scaling:
    """How a target says what llmctl does that it does not."""

    scale_to_zero: str  # where its autoscaler goes
    off: str  # how one model is left out


def _prepare(cfg: Config, plan: Plan, opts: Options, how: _Scaling
             ) -> tuple[list[_Model], list[str]]:
    """The models to export and the warnings every target shares."""
    warn: list[str] = []
    chosen: list[ModelConfig] = []
    for m in cfg.models:
        if not m.managed:
            warn.append(f"{m.key}: a `url` model ({m.url}) is a server llmctl routes to: not "
                        "exported" + ("; the front config keeps it as it is" if opts.proxy else
                                      "; with --proxy it stays behind llmctl beside the "
                                      "cluster's models"))
        elif is_local(m.source):
            warn.append(f"{m.key}: its source is a folder on this machine ({m.source}): not "
                        "exported; put it on the hub (or a volume the cluster mounts) and set "
                        "`source` to that repo")
        else:
            chosen.append(m)
    labels = _labels(chosen)
    out: list[_Model] = []
    for m in chosen:
        b = plan.backends[m.key]
        repo, rev = split_ref(m.source)
        if "@" not in m.source and m.key in opts.pulled:
            rev = opts.pulled[m.key]  # the weights this machine runs, to the commit
        cuda = b.device == "cuda"
        weights = b.terms.get("weights")
        parsers, args = parser_args(m, opts.parsers.get(m.key, (None, None)))
        out.append(_Model(
            m, labels[m.key], repo, rev,
            gpus=max(1, len(b.devices)) if cuda else 1,
            tensor_parallel=b.tensor_parallel if cuda else 1,
            memory=b.gpu_memory_utilization if cuda else None,
            batched=b.max_num_batched_tokens if cuda else 0,
            weights=weights * (b.tensor_parallel if cuda else 1) if weights else None,
            parsers=parsers, args=args))
        if cuda and b.kv_bytes_per_token is None:
            share = (f"the configured {m.memory}" if isinstance(m.memory, float) else
                     "an even split of the card")
            warn.append(f"{m.key}: its size and shape are unknown here ({m.source} is not "
                        "pulled, and the hub's metadata could not be read): one card, its "
                        f"memory share {share}; `llmctl pull {m.key}` and export again for "
                        "the planned figures")
    if out and plan.device != "cuda":
        warn.append("the plan is for CPU (no GPU here, or `device = \"cpu\"`): each model "
                    "asks for 1 GPU with vLLM's default memory share; `--assume 1x80GiB` "
                    "(the cluster's GPU) plans the split and tensor parallelism")
    warn += _shared_cards(plan, out)
    warn += _lifecycle(out, how)
    return out, warn


def _shared_cards(plan: Plan, models: list[_Model]) -> list[str]:
    """Models the plan puts on one card: on a cluster each pod gets whole GPUs."""
    exported = {x.m.key: x.m for x in models}
    out = []
    for card in plan.cards:
        keys, groups = [], set()
        for k in card.models:
            m = exported.get(k)
            if m is None or (m.group and m.group in groups):
                continue  # members of one group take turns in one place
            groups.add(m.group)
            keys.append(k)
        if len(keys) > 1:
            shares = " + ".join(f"{plan.backends[k].gpu_memory_utilization}" for k in keys)
            out.append(f"GPU {card.gpu.index}: {', '.join(keys)} share it in the plan "
                       f"({shares} of it); on the cluster each gets GPUs of its own and could "
                       f"use more: `--assume {len(keys)}x{card.gpu.total_bytes // GIB}GiB` "
                       "plans a card for each")
    return out


def _lifecycle(models: list[_Model], how: _Scaling) -> list[str]:
    """On-demand starts, groups and sleep swaps: llmctl's supervisor does them."""
    out = []
    groups: dict[str, list[str]] = {}
    for x in models:
        m = x.m
        if m.group:
            groups.setdefault(m.group, []).append(m.key)
        elif m.on_demand:
            out.append(f"{m.key}: start = \"on-demand\": the cluster runs it all the time; "
                       f"for scale to zero use {how.scale_to_zero}")
        if m.group and m.swap == "sleep":
            out.append(f"{m.key}: swap = \"sleep\": vLLM's sleep mode is driven by llmctl's "
                       "supervisor; on the cluster the model stays awake")
    for g, keys in groups.items():
        out.append(f"group {g} ({', '.join(keys)}): the cluster runs every member at once, "
                   f"each on GPUs of its own; {how.off} for those that should stay off")
    return out


def _proxy_only(cfg: Config, models: list[_Model], opts: Options, *, aliases: bool
                ) -> list[str]:
    """What only llmctl's proxy does, said when it is not kept in front."""
    keys = cfg.proxy.api_keys
    out = []
    if not keys:
        out.append("no API key is configured: the cluster's models would answer anyone who "
                   "reaches them; `llmctl config init` writes a config with one")
    if opts.proxy:
        return out
    fim = [x.m.key for x in models if x.m.fim != "none"]
    if fim:
        out.append(f"{', '.join(fim)}: fill-in-the-middle (`suffix`, `/infill`) is rendered "
                   "by llmctl's proxy and vLLM refuses it: add --proxy to keep llmctl in front")
    if opts.named_keys:
        out.append(f"{opts.named_keys} named key(s) (`llmctl keys`), their limits and usage, "
                   "and the web page are llmctl's; the cluster takes one key: add --proxy")
    elif len(keys) > 1:
        out.append(f"proxy.api_keys has {len(keys)} keys; the cluster takes one (the first): "
                   "add --proxy to keep them all")
    if aliases:
        for x in models:
            if len(x.m.names) > 1:
                out.append(f"{x.m.key}: KServe serves it as {x.m.name} only; its other names "
                           f"({', '.join(x.m.names[1:])}) are llmctl's: add --proxy to keep them")
    return out


def _front(cfg: Config, models: list[_Model], url: Callable[[_Model], str], opts: Options
           ) -> tuple[Config, list[str]]:
    """The llmctl config that fronts the cluster: the same proxy (port, keys, limits, the
    web page) and names; each exported model a `url` backend to the cluster, sending the
    key the cluster's Secret holds; `url` models as they are."""
    warn = []
    key = cfg.proxy.api_keys[0] if cfg.proxy.api_keys else ""
    by_key = {x.m.key: x for x in models}
    front = []
    for m in cfg.models:
        if not m.managed:
            front.append(m)
            continue
        x = by_key.get(m.key)
        if x is None:
            continue  # a local folder: not on the cluster (said already)
        fim = m.fim
        if fim == "auto":
            # A `url` model's "auto" means none: write the family this tokenizer shows.
            if m.key in opts.fim:
                fim = opts.fim[m.key] or "none"
            else:
                warn.append(f"{m.key}: fim = \"auto\" and its tokenizer is not here: set "
                            "`fim` to its family in the front config for autocomplete")
        front.append(ModelConfig(key=m.key, name=m.name, url=url(x), api_key=key,
                                 aliases=m.aliases, max_model_len=m.max_model_len,
                                 max_num_seqs=m.max_num_seqs, fim=fim))
    return Config(proxy=cfg.proxy, engine=cfg.engine, models=tuple(front)), warn


def _finish(target: str, cfg: Config, docs: list[dict[str, Any]], models: list[_Model],
            warn: list[str], opts: Options, url: Callable[[_Model], str], router: str
            ) -> Export:
    if not models:
        raise ConfigError("nothing to export: no model has a hub repo as its `source`",
                          "`url` models and local folders stay on this side; a model the "
                          "cluster runs needs `source = \"ORG/NAME\"`")
    front = None
    if opts.proxy:
        front, more = _front(cfg, models, url, opts)
        warn = warn + more
    return Export(target, tuple(docs), tuple(warn), front, tuple(x.m.key for x in models),
                  router if opts.proxy else "", secret=bool(cfg.proxy.api_keys))


# ── production-stack ─────────────────────────────────────────────────────────

PS_SCALING = _Scaling(scale_to_zero="KEDA (the model's `keda:` block, minReplicaCount 0)",
                      off="set `enabled: false` on the modelSpec entries")


def production_stack(cfg: Config, plan: Plan, opts: Options | None = None) -> Export:
    """A values file for vllm-project/production-stack's chart (vllm/vllm-stack): one
    `modelSpec` entry per model; the API key from the Secret for the engines and the router."""
    opts = opts or Options()
    models, warn = _prepare(cfg, plan, opts, PS_SCALING)
    warn += _proxy_only(cfg, models, opts, aliases=False)
    tag = f"v{opts.vllm_version}" if re.fullmatch(r"\d+\.\d+\.\d+", opts.vllm_version) \
        else "latest"
    specs = []
    for x in models:
        m = x.m
        vllm: dict[str, Any] = {"maxModelLen": m.max_model_len, "maxNumSeqs": m.max_num_seqs}
        if x.tensor_parallel > 1:
            vllm["tensorParallelSize"] = x.tensor_parallel
        if x.memory is not None:
            vllm["gpuMemoryUtilization"] = x.memory
        # The chart passes --no-enable-prefix-caching unless this is true; vLLM's default
        # (and so llmctl's) is on.
        vllm["enablePrefixCaching"] = True
        # Every name and alias is a served name: the router routes by what each engine's
        # /v1/models lists.
        vllm["extraArgs"] = ["--served-model-name", *m.names, *x.engine_args()]
        specs.append({
            "name": x.label, "repository": PS_IMAGE, "tag": tag,
            "modelURL": x.repo, "modelRevision": x.revision, "replicaCount": 1,
            "requestCPU": x.cpus, "requestMemory": f"{x.host_memory_gib}Gi",
            "requestGPU": x.gpus, "pvcStorage": f"{x.disk_gib}Gi", "vllmConfig": vllm,
        })
    engine: dict[str, Any] = {
        # A new pod cannot get the GPUs the old one holds: replace, do not roll (the
        # chart's multi-GPU example says the same).
        "strategy": {"type": "Recreate"},
        "modelSpec": specs,
    }
    if cfg.proxy.api_keys:
        engine["vllmApiKey"] = {"secretName": SECRET_NAME, "secretKey": SECRET_KEY}
    router = opts.router_url or PS_ROUTER.format(namespace=opts.namespace)
    return _finish("production-stack", cfg, [{"servingEngineSpec": engine}], models, warn,
                   opts, lambda x: router, router)


# ── KServe ───────────────────────────────────────────────────────────────────

KS_SCALING = _Scaling(scale_to_zero="`spec.scaling` (KEDA or WVA, minReplicas 0)",
                      off="delete their LLMInferenceService, or set `spec.replicas: 0`")


def kserve(cfg: Config, plan: Plan, opts: Options | None = None) -> Export:
    """`LLMInferenceService` manifests, one per model: the weights from `hf://REPO:REV`,
    KServe's own vLLM template, the plan's flags in `VLLM_ADDITIONAL_ARGS`, the managed
    route, gateway and scheduler."""
    opts = opts or Options()
    models, warn = _prepare(cfg, plan, opts, KS_SCALING)
    warn += _proxy_only(cfg, models, opts, aliases=True)
    docs = []
    for x in models:
        m = x.m
        args = ["--max-model-len", str(m.max_model_len), "--max-num-seqs", str(m.max_num_seqs)]
        if x.memory is not None:
            args += ["--gpu-memory-utilization", f"{x.memory:.3f}"]
        env: list[dict[str, Any]] = []
        if cfg.proxy.api_keys:
            env.append({"name": "VLLM_API_KEY", "valueFrom": {
                "secretKeyRef": {"name": SECRET_NAME, "key": SECRET_KEY}}})
        # KServe's template runs `eval "exec vllm serve … ${VLLM_ADDITIONAL_ARGS} $@"`, so
        # this is one shell-quoted string.
        env.append({"name": "VLLM_ADDITIONAL_ARGS", "value": shlex.join(args + x.engine_args())})
        gpus = str(x.gpus)
        spec: dict[str, Any] = {
            "model": {"uri": f"hf://{x.repo}:{x.revision}", "name": m.name},
            "replicas": 1,
        }
        if x.tensor_parallel > 1:
            spec["parallelism"] = {"tensor": x.tensor_parallel}
        spec["router"] = {"route": {}, "gateway": {}, "scheduler": {}}
        spec["template"] = {"containers": [{
            "name": "main",
            "env": env,
            "resources": {
                "requests": {"cpu": str(x.cpus), "memory": f"{x.host_memory_gib}Gi",
                             "nvidia.com/gpu": gpus},
                "limits": {"nvidia.com/gpu": gpus},
            },
        }]}
        docs.append({"apiVersion": KS_API_VERSION, "kind": "LLMInferenceService",
                     "metadata": {"name": x.label, "namespace": opts.namespace},
                     "spec": spec})
    gateway = (opts.router_url or KS_GATEWAY).rstrip("/")
    return _finish("kserve", cfg, docs, models, warn, opts,
                   lambda x: f"{gateway}/{opts.namespace}/{x.label}", gateway)


BUILDERS: dict[str, Callable[[Config, Plan, Options], Export]] = {
    "production-stack": production_stack, "kserve": kserve}


def build(target: str, cfg: Config, plan: Plan, opts: Options | None = None) -> Export:
    return BUILDERS[target](cfg, plan, opts or Options())


# ── what the user runs next ──────────────────────────────────────────────────


def next_steps(e: Export, *, manifests: str, config_flag: str, front: str | None,
               namespace: str, router_given: bool) -> list[str]:
    """The commands that put the export to work, in order. `manifests` is the file written
    (or "FILE" for stdout), `config_flag` the `-c PATH` that names the config, if any."""
    ns = "" if namespace == "default" else f" -n {namespace}"
    steps = []
    if e.secret:
        steps.append(f"create the Secret with the key first (it is not in the file): kubectl "
                     f"create secret generic {SECRET_NAME}{ns} --from-literal={SECRET_KEY}="
                     f"\"$(llmctl config key{config_flag})\"")
    if e.target == "production-stack":
        steps.append("then: helm repo add vllm https://vllm-project.github.io/production-stack"
                     f" && helm install vllm vllm/vllm-stack{ns} -f {manifests}")
    else:
        steps.append(f"then: kubectl apply -f {manifests}   (KServe with its LLMInferenceService"
                     " controller and a Gateway installed)")
    if front:
        if not router_given:
            where = ("the router Service of a release named vllm" if e.target ==
                     "production-stack" else "KServe's Gateway (its Service name depends on "
                     "the Gateway implementation)")
            steps.append(f"the front config points at {e.router_url}, the in-cluster address of "
                         f"{where}: from outside the cluster pass --router-url (an ingress, a "
                         "load balancer, or `kubectl port-forward` to 127.0.0.1)")
        steps.append(f"then here: `llmctl down`, and `llmctl up -c {front}`: the same port, "
                     "names and keys, answered by the cluster")
    return steps


def header(e: Export, source: str, planned_for: str) -> list[str]:
    """The comment lines on top of the written file: where it came from and what is not in it."""
    lines = [f"Written by `llmctl export {e.target}` from {source}; plan: {planned_for}.",
             f"Models: {', '.join(e.models)}."]
    if e.secret:
        lines.append(f"The API key is not in this file: the servers read it from the Secret "
                     f"{SECRET_NAME} (key {SECRET_KEY}).")
    if e.target == "production-stack":
        lines.append(f"Image {PS_IMAGE}: its tag follows the vLLM here (latest when unknown); "
                     "requestCPU, requestMemory and pvcStorage are llmctl's estimates.")
    else:
        lines.append("The vLLM image is KServe's (its LLMInferenceServiceConfig template); cpu "
                     "and memory requests are llmctl's estimates.")
    return lines


# ── YAML ─────────────────────────────────────────────────────────────────────

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if v is None:
        return "null"
    # JSON's string escapes are YAML's double-quoted ones; quoting every string keeps
    # "1", "yes" and "0.45" strings.
    return json.dumps(str(v), ensure_ascii=False)


def _key(k: str) -> str:
    return k if _PLAIN_KEY.match(k) and k not in ("true", "false", "null", "yes", "no", "on",
                                                    "off", "y", "n") else json.dumps(k)


def _block(v: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, (dict, list)) and x:
                out.append(f"{pad}{_key(k)}:")
                out += _block(x, indent + 2) if isinstance(x, dict) else _block(x, indent)
            else:
                out.append(f"{pad}{_key(k)}: {_empty(x)}")
    else:
        for x in v:
            if isinstance(x, (dict, list)) and x:
                inner = _block(x, indent + 2)
                out.append(f"{pad}- {inner[0].lstrip()}")
                out += inner[1:]
            else:
                out.append(f"{pad}- {_empty(x)}")
    return out


def _empty(x: Any) -> str:
    if isinstance(x, dict):
        return "{}"
    if isinstance(x, list):
        return "[]"
    return _scalar(x)


def to_yaml(documents: tuple[dict[str, Any], ...] | list[dict[str, Any]],
            header: list[str] = ()) -> str:
    """Block-style YAML, one document per dict, `header` lines as comments on top."""
    out = [f"# {line}" if line else "#" for line in header]
    for i, d in enumerate(documents):
        if i or header:
            out.append("---")
        out += _block(d, 0)
    return "\n".join(out) + "\n"


def front_toml(front: Config, source: str) -> str:
    return (f"# llmctl config that fronts the cluster (`llmctl export --proxy` from {source}).\n"
            "# Every model is a `url` backend to the cluster; keys, limits, usage, the web page\n"
            "# and FIM stay with this proxy. It holds keys: keep it 0600.\n\n"
            + to_toml(front, masked=False))

