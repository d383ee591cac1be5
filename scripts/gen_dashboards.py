"""Regenerate the Grafana dashboards shipped in the package (llmctl/dashboards/*.json) from
the panel lists below. `--check` fails when a file is stale.

    .venv/bin/python scripts/gen_dashboards.py [--check]

Each dashboard is importable as it is: a `datasource` variable (any Prometheus) and a
`model` variable (and `key` on the overview) read from the scrape itself. The e2e suite
runs every expression here against a real Prometheus scraping the demo stack, and fails
on a metric the stack does not export (tests/e2e/test_monitoring.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "llmctl" / "dashboards"

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
M = 'model=~"$model"'


def q(expr: str, legend: str = "", **extra: object) -> dict:
    return {"expr": expr, "legendFormat": legend, **extra}


def quantiles(metric: str, where: str = M, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list:
    return [q(f"histogram_quantile({x}, sum by (le, model) (rate({metric}_bucket{{{where}}}"
              f"{RATE})))", f"{{{{model}}}} p{round(x * 100)}") for x in qs]


def panel(title: str, unit: str, targets: list[dict], *, description: str = "",
          kind: str = "timeseries", w: int = 12, h: int = 8, **options: object) -> dict:
    return {"title": title, "kind": kind, "unit": unit, "targets": targets,
            "description": description, "w": w, "h": h, **options}


def row(title: str) -> dict:
    return {"row": title}


# Tokens the engines generated and read, per second (vLLM's counters): on two dashboards.
TOKENS = [q(f"sum by (model) (rate(vllm:generation_tokens_total{{{M}}}{RATE}))",
            "{{model}} generated"),
          q(f"sum by (model) (rate(vllm:prompt_tokens_total{{{M}}}{RATE}))", "{{model}} prompt")]

OVERVIEW = [
    row("Traffic"),
    panel("Requests/s by model", "reqps",
          [q(f"sum by (model) (rate(llmctl_requests_total{{{M}}}{RATE}))", "{{model}}")],
          description="Every request the proxy answered, by the llmctl model it was for."),
    panel("Errors/s by model and status", "reqps",
          [q(f'sum by (model, status) (rate(llmctl_requests_total{{{M}, status!~"2.."}}'
             f"{RATE}))", "{{model}} {{status}}")],
          description="Answers that were not 2xx: 4xx are the caller's (429: a limit or a "
          "full queue), 5xx the stack's (503: not ready, 504: no answer in time)."),
    panel("Time to first token (through the proxy)", "s",
          quantiles("llmctl_time_to_first_byte_seconds"),
          description="From the request reaching the proxy to the backend's first byte."),
    panel("End-to-end latency", "s", quantiles("llmctl_request_duration_seconds"),
          description="From the request reaching the proxy to its last byte."),
    panel("Tokens/s by model", "short",
          TOKENS,
          description="Tokens the engines generated and read, per second (vLLM's counters)."),
    panel("Requests in flight", "short",
          [q(f"sum by (model) (llmctl_requests_in_flight{{{M}}})", "{{model}}")],
          description="Requests being served now, queued ones included."),
    row("Keys"),
    panel("Requests/s by key", "reqps",
          [q(f'sum by (key) (rate(llmctl_key_requests_total{{key=~"$key", {M}}}{RATE}))',
             "{{key}}")],
          description="By the key's name (never the key); the config's keys are 'admin'."),
    panel("Tokens/s by key", "short",
          [q(f'sum by (key, kind) (rate(llmctl_key_tokens_total{{key=~"$key", {M}}}'
             f"{RATE}))", "{{key}} {{kind}}")],
          description="Prompt and completion tokens charged to each key."),
    row("Models"),
    panel("Model state", "none",
          [q(f"max by (model, state) (llmctl_backend_state{{{M}}}) == 1", "",
             instant=True, format="table")], kind="table",
          description="The state each model is in now (STOPPED, STARTING, RUNNING, …)."),
    panel("Failures reaching a backend /s", "reqps",
          [q(f"sum by (model, kind) (rate(llmctl_upstream_errors_total{{{M}}}{RATE}))",
             "{{model}} {{kind}}")],
          description="Timeouts, refused connections and streams cut midway."),
]

ENGINES = [
    row("Scheduling"),
    panel("Requests running and waiting", "short",
          [q(f"sum by (model) (vllm:num_requests_running{{{M}}})", "{{model}} running"),
           q(f"sum by (model) (vllm:num_requests_waiting{{{M}}})", "{{model}} waiting")],
          description="In the engine's batch, and queued in the engine for a slot."),
    panel("KV cache use", "percentunit",
          [q(f"max by (model) (vllm:kv_cache_usage_perc{{{M}}})", "{{model}}")],
          description="Share of the KV cache blocks in use; near 100 % means preemptions."),
    panel("Prefix cache hit rate", "percentunit",
          [q(f"sum by (model) (rate(vllm:prefix_cache_hits_total{{{M}}}{RATE})) / "
             f"clamp_min(sum by (model) (rate(vllm:prefix_cache_queries_total{{{M}}}{RATE})),"
             " 1e-9)", "{{model}}")],
          description="Prompt tokens found in the cache, of those looked up."),
    panel("Preemptions/s", "short",
          [q(f"sum by (model) (rate(vllm:num_preemptions_total{{{M}}}{RATE}))", "{{model}}")],
          description="Requests pushed out of the batch for want of KV cache."),
    row("Latency in the engine"),
    panel("Inter-token latency", "s",
          quantiles("vllm:inter_token_latency_seconds", qs=(0.5, 0.95)),
          description="Time between two tokens of one stream."),
    panel("Time to first token (engine)", "s",
          quantiles("vllm:time_to_first_token_seconds", qs=(0.5, 0.95)),
          description="As vLLM measures it: from its receiving the request."),
    panel("Queue time", "s",
          quantiles("vllm:request_queue_time_seconds", qs=(0.5, 0.95)),
          description="Time a request waited in the engine before it was scheduled."),
    panel("Engine tokens/s", "short",
          TOKENS),
    row("On-demand life"),
    panel("Starts, swaps and idle stops in the range", "short",
          [q(f"sum by (model) (increase(llmctl_backend_starts_total{{{M}}}[$__range]))",
             "{{model}} starts", instant=True),
           q(f"sum by (model) (increase(llmctl_backend_swaps_total{{{M}}}[$__range]))",
             "{{model}} swaps", instant=True),
           q(f"sum by (model) (increase(llmctl_backend_idle_stops_total{{{M}}}[$__range]))",
             "{{model}} idle stops", instant=True)], kind="bargauge",
          description="Starts that ended ready, swaps out for another model of the group, "
          "stops after idle_stop."),
    panel("Last start took", "s",
          [q(f"max by (model) (llmctl_backend_last_start_seconds{{{M}}})", "{{model}}")],
          description="From the start to ready, for each model's last start."),
    panel("Scrapes that left a model out /s", "short",
          [q(f"sum by (model) (rate(llmctl_backend_scrape_failures_total{{{M}}}{RATE}))",
             "{{model}}")],
          description="A model's server did not answer the proxy's scrape within 2 s, or "
          "sent something else than the text format: its series are missing meanwhile."),
]

HARDWARE = [
    row("GPUs (NVML; empty on a machine without one)"),
    panel("GPU memory", "bytes",
          [q("max by (gpu, name) (llmctl_gpu_memory_used_bytes)", "{{gpu}} {{name}} used"),
           q("max by (gpu, name) (llmctl_gpu_memory_total_bytes)", "{{gpu}} {{name}} total")]),
    panel("GPU utilisation", "percentunit",
          [q("max by (gpu, name) (llmctl_gpu_utilization_ratio)", "{{gpu}} {{name}}")],
          description="Share of NVML's last sample period the GPU was busy."),
    panel("GPU temperature", "celsius",
          [q("max by (gpu, name) (llmctl_gpu_temperature_celsius)", "{{gpu}} {{name}}")]),
    panel("GPU power", "watt",
          [q("max by (gpu, name) (llmctl_gpu_power_watts)", "{{gpu}} {{name}}")]),
    row("Machine"),
    panel("Memory", "bytes",
          [q("max(llmctl_host_memory_total_bytes) - max(llmctl_host_memory_available_bytes)",
             "used"),
           q("max(llmctl_host_memory_total_bytes)", "total")],
          description="Used: all but what can be had without swapping (MemAvailable)."),
    panel("CPU use", "percentunit",
          [q(f'sum(rate(llmctl_host_cpu_seconds_total{{mode="busy"}}{RATE})) / '
             f"clamp_min(sum(rate(llmctl_host_cpu_seconds_total{RATE})), 1e-9)", "machine"),
           q(f"sum by (model) (rate(llmctl_backend_cpu_seconds_total{{{M}}}{RATE})) / "
             "scalar(max(llmctl_host_cpus))", "{{model}}")],
          description="The whole machine's, and each model's process group's share of all "
          "its CPUs."),
    panel("Memory by model", "bytes",
          [q(f"sum by (model) (llmctl_backend_resident_bytes{{{M}}})", "{{model}}")],
          description="Resident memory of each started model's process group."),
    panel("CPU cores busy by model", "short",
          [q(f"sum by (model) (rate(llmctl_backend_cpu_seconds_total{{{M}}}{RATE}))",
             "{{model}}")]),
]

DASHBOARDS = {
    "overview": ("llmctl · overview", "Requests, errors, latency and tokens by model and by key.",
                 OVERVIEW, True),
    "engines": ("llmctl · engines", "vLLM's scheduling, caches and latencies, and on-demand life.",
                ENGINES, False),
    "hardware": ("llmctl · hardware", "GPUs from NVML, the machine's memory and CPU, and each "
                 "model's processes.", HARDWARE, False),
}


def variable(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-values"},
            "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "hide": 0, "regex": ""}


def grafana(uid: str, title: str, description: str, items: list[dict], keys: bool) -> dict:
    panels: list[dict] = []
    x = y = height = 0  # where the next panel goes; the height of the line being filled
    for i, item in enumerate(items, start=1):
        if x + item.get("w", 24) > 24 or "row" in item:
            x, y, height = 0, y + height, 0
        if "row" in item:
            panels.append({"id": i, "type": "row", "title": item["row"], "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
            continue
        w, h = item["w"], item["h"]
        targets = [{"refId": chr(ord("A") + j), "datasource": DS, "range": not t.get("instant"),
                    **t} for j, t in enumerate(item["targets"])]
        p = {"id": i, "type": item["kind"], "title": item["title"],
             "description": item["description"], "datasource": DS,
             "gridPos": {"h": h, "w": w, "x": x, "y": y}, "targets": targets,
             "fieldConfig": {"defaults": {"unit": item["unit"]}, "overrides": []}}
        if item["kind"] == "timeseries":
            p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1,
                                                      "fillOpacity": 10, "showPoints": "never",
                                                      "spanNulls": True}
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom",
                                       "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        panels.append(p)
        x, height = x + w, max(height, h)
    variables = [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                  "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
                  "options": [], "regex": ""},
                 variable("model", "Model", "label_values(llmctl_backend_state, model)")]
    if keys:
        variables.append(variable("key", "Key", "label_values(llmctl_key_requests_total, key)"))
    return {"uid": uid, "title": title, "description": description, "tags": ["llmctl"],
            "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
            "time": {"from": "now-1h", "to": "now"}, "refresh": "10s",
            "timepicker": {}, "timezone": "", "annotations": {"list": []}, "links": [],
            "templating": {"list": variables}, "panels": panels}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(grafana(f"llmctl-{name}", title, desc, items, keys),
                                       indent=2, ensure_ascii=False) + "\n"
            for name, (title, desc, items, keys) in DASHBOARDS.items()}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in render().items():
        path = OUT / name
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale: " + ", ".join(stale) + "; run .venv/bin/python scripts/gen_dashboards.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
