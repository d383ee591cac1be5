"""`llmctl check`: the install and a running stack, checked the way a client uses them.

May import: config, engine, hub, procs, state. Each check is a row (name, result,
detail); `ok` is None for a check that did not apply (skipped). The stack checks are the
old compose stack's validation suite: health, readiness, a key accepted and a wrong one
refused, the model list, a chat answer per model, streaming, an unknown model, a
malformed body.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from . import config as cfgmod
from . import hub, procs, state
from .engine import python_for

WRONG_KEY = "sk-llmctl-check-wrong-key"


@dataclass
class Row:
    name: str
    ok: bool | None  # None: skipped
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_IMPORTS = """
import importlib.util, json
out = {}
for mod in ("vllm", "transformers"):
    try:
        __import__(mod)
        out[mod] = None
    except Exception as e:
        out[mod] = f"{type(e).__name__}: {e}"[:200]
out["torchvision"] = importlib.util.find_spec("torchvision") is not None
print(json.dumps(out))
"""


def install(cfg: cfgmod.Config) -> list[Row]:
    """What `up` needs of this machine: vLLM importable, no torchvision mismatch, the
    ports, the weights (or the disk for them)."""
    rows = []
    py = python_for(cfg)
    try:
        r = subprocess.run([py, "-c", _IMPORTS], capture_output=True, text=True, timeout=180)
        found = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        found = None
    if found is None:
        rows.append(Row("vLLM and transformers import", False,
                        f"{py} could not run the import check"))
    else:
        bad = {m: e for m, e in found.items() if m != "torchvision" and e}
        rows.append(Row("vLLM and transformers import", not bad,
                        "; ".join(f"{m}: {e}" for m, e in bad.items()) or py))
        rows.append(Row("no torchvision beside the CPU torch", not found["torchvision"],
                        "torchvision is installed: `pip uninstall torchvision` (scripts/"
                        "setup.sh does)" if found["torchvision"] else "none installed"))
    running = state.running_stack() is not None
    ports = [("proxy", cfg.proxy.port)] + [(m.key, m.port) for m in cfg.models if m.managed]
    busy = [f"{k} {p}" + (f" ({h})" if (h := procs.port_holder(p)) else "")
            for k, p in ports if not procs.port_free(p)]
    if running:
        rows.append(Row("ports", None, "held by the running stack"))
    else:
        rows.append(Row("ports free", not busy, ", ".join(busy) or
                        ", ".join(str(p) for _, p in ports)))
    for m in cfg.models:
        if not m.managed:
            continue
        folder = hub.resolve(m.source)
        if folder is not None:
            rows.append(Row(f"weights: {m.key}", True, str(folder)))
            continue
        free = shutil.disk_usage(cfgmod.models_dir().parent if not cfgmod.models_dir().exists()
                                 else cfgmod.models_dir()).free
        rows.append(Row(f"weights: {m.key}", False, f"{m.source} is not pulled "
                        f"(`llmctl pull {m.key}`; {free / 1024**3:.0f} GiB free on disk)"))
    return rows


def abilities(m: dict[str, Any]) -> str:
    """A /v1/models entry's FIM, tools and reasoning, as one line."""
    t = m.get("tools") or {}
    tools = "none (vLLM refuses requests with tools)" if not t else t.get("parser", "?") + (
        "" if t.get("trained") is not False else
        " (not trained for tools: `auto` tool use is unreliable)")
    return (f"FIM {m.get('fim') or 'none'} · tools {tools} · reasoning "
            f"{(m.get('reasoning') or {}).get('parser') or 'none'}")


def stack(url: str, key: str | None, timeout: float = 120.0) -> list[Row]:
    """The proxy (or any OpenAI-compatible server) as clients use it."""
    base = url.rstrip("/").removesuffix("/v1")
    rows: list[Row] = []
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=timeout, trust_env=False) as c:
        def call(method: str, path: str, **kw: Any) -> httpx.Response | str:
            try:
                return c.request(method, base + path, **kw)
            except httpx.HTTPError as e:
                return f"{type(e).__name__}: {e}"[:200]

        r = call("GET", "/health")
        rows.append(Row("proxy answers /health", isinstance(r, httpx.Response) and
                        r.status_code == 200, _said(r)))
        if not rows[-1].ok:
            return rows  # nothing else can pass
        r = call("GET", "/ready")
        rows.append(Row("a model is ready (/ready)", isinstance(r, httpx.Response) and
                        r.status_code == 200, _said(r)))
        r = call("GET", "/v1/models", headers=auth)
        models = r.json().get("data", []) if isinstance(r, httpx.Response) and \
            r.status_code == 200 else []
        rows.append(Row("key accepted (/v1/models)", isinstance(r, httpx.Response) and
                        r.status_code == 200, _said(r) if not models else
                        f"{len(models)} model(s)"))
        r = call("GET", "/v1/models", headers={"Authorization": f"Bearer {WRONG_KEY}"})
        if isinstance(r, httpx.Response) and r.status_code == 200:
            rows.append(Row("wrong key refused", None if not key else False,
                            "the server takes any key (no keys configured)"))
        else:
            rows.append(Row("wrong key refused", isinstance(r, httpx.Response) and
                            r.status_code == 401, _said(r)))
        rows.append(Row("model list", bool(models), ", ".join(m.get("id", "?") for m in models)
                        or "no models listed"))
        for m in models:
            if "tools" in m:  # an llmctl proxy says what each model can do
                rows.append(Row(f"can: {m.get('id')}", True, abilities(m)))
        ready = [m for m in models if m.get("state", "RUNNING") == "RUNNING"]
        for m in models:
            if m.get("start") == "on-demand" and m.get("state") in ("STOPPED", "SLEEPING"):
                rows.append(Row(f"chat: {m['id']}", None, f"{m['state']}, on demand: a "
                                "request would start it (`llmctl start` it to check it)"))
                continue
            r = call("POST", "/v1/chat/completions", headers=auth, json={
                "model": m["id"], "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hi"}]})
            ok = isinstance(r, httpx.Response) and r.status_code == 200 and \
                bool(_content(r))
            rows.append(Row(f"chat: {m['id']}", ok, repr(_content(r))[:60] if ok else _said(r)))
        if ready:
            rows.append(_streaming(c, base, auth, ready[0]["id"]))
        r = call("POST", "/v1/chat/completions", headers=auth, json={
            "model": "llmctl-check-no-such-model", "messages": []})
        rows.append(Row("unknown model is 404", isinstance(r, httpx.Response) and
                        r.status_code == 404, _said(r)))
        r = call("POST", "/v1/chat/completions", headers={**auth, "Content-Type":
                                                          "application/json"},
                 content=b'{"model": ')
        rows.append(Row("malformed body is 400", isinstance(r, httpx.Response) and
                        r.status_code == 400, _said(r)))
    return rows


def _streaming(c: httpx.Client, base: str, auth: dict[str, str], model: str) -> Row:
    chunks, done = 0, False
    try:
        with c.stream("POST", base + "/v1/chat/completions", headers=auth, json={
                "model": model, "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": "Count to five"}]}) as r:
            if r.status_code != 200:
                return Row(f"streaming: {model}", False, f"HTTP {r.status_code}")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    done = done or line == "data: [DONE]"
                    chunks += not done
    except httpx.HTTPError as e:
        return Row(f"streaming: {model}", False, f"{type(e).__name__}: {e}"[:200])
    return Row(f"streaming: {model}", chunks > 0 and done,
               f"{chunks} chunks, then [DONE]" if done else f"{chunks} chunks, no [DONE]")


def _content(r: Any) -> str:
    try:
        return r.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


def _said(r: httpx.Response | str) -> str:
    if isinstance(r, str):
        return r
    try:
        msg = r.json().get("error", {}).get("message")
    except (ValueError, AttributeError):
        msg = None
    return f"HTTP {r.status_code}" + (f": {msg[:120]}" if msg else "")
