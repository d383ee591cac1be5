"""The shipped Grafana dashboards: up to date with scripts/gen_dashboards.py, importable as
they are (a datasource variable, every panel on it, a valid grid), every llmctl metric
they name made by the proxy and the observer, and each series on the conditional list
shown with fake readings. The e2e suite (tests/e2e/test_monitoring.py) runs every
expression against a real Prometheus scraping the demo stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from llmctl import config, monitor
from llmctl.cli import app
from llmctl.gpu import Gauges
from llmctl.observe import Observer
from llmctl.proxy.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_the_shipped_files_are_what_the_generator_makes():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_dashboards.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", monitor.NAMES)
def test_each_dashboard_is_importable_as_it_is(name):
    d = monitor.dashboards()[f"llmctl-{name}.json"]
    assert d["uid"] == f"llmctl-{name}" and d["title"] and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["query"]["query"].startswith("label_values(")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cell & cells, f"{p['title']} overlaps another panel"
        cells |= cell
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["fieldConfig"]["defaults"]["unit"], f"{p['title']} has no unit"
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            used = {w for w in ("$model", "$key") if w in t["expr"]}
            assert used <= {f"${v}" for v in variables}, f"{p['title']}: {used}"


def test_every_llmctl_metric_named_is_made_by_the_proxy_or_the_observer():
    """Our own renames are caught here, without a stack; vLLM's names by the e2e suite."""
    m = Metrics()
    m.prime(["coder"], [("admin", ["coder"])])
    m.child("scrape_failures", "coder")  # as the proxy makes it, for each managed model
    cards = (Gauges(0, "RTX 6000", 20 << 30, 48 << 30, 0.75, 61.0, 250.5),)
    coder = SimpleNamespace(model=config.ModelConfig(key="coder", name="coder",
                                                     source="org/x", port=8000),
                            state="RUNNING", proc=None)
    exported = names(generate_latest(m.registry).decode()) | \
        names(Observer([coder], gauges=lambda: cards).text())
    named = {n for d in monitor.dashboards().values() for _, e in monitor.expressions(d)
             for n in monitor.metric_names(e) if n.startswith("llmctl_")}
    assert named and named - exported == set()


def test_the_conditional_series_exist_with_fake_nvml_readings():
    """Each series on the declared list is made when its condition holds (a card whose
    NVML reports everything), and not on a machine without one."""
    cards = (Gauges(0, "RTX 6000", 20 << 30, 48 << 30, 0.75, 61.0, 250.5),)
    assert set(monitor.CONDITIONAL) <= names(Observer([], gauges=lambda: cards).text())
    assert not set(monitor.CONDITIONAL) & names(Observer([], gauges=lambda: ()).text())
    named = {n for d in monitor.dashboards().values() for _, e in monitor.expressions(d)
             for n in monitor.metric_names(e)}
    assert set(monitor.CONDITIONAL) <= named  # nothing on the list that no panel uses


def test_monitor_dashboards_writes_the_files_and_says_so(tmp_path):
    out = tmp_path / "grafana" / "dashboards"
    r = CliRunner().invoke(app, ["monitor", "dashboards", str(out)])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["llmctl-engines.json", "llmctl-hardware.json", "llmctl-overview.json"]
    assert json.loads((out / "llmctl-overview.json").read_text())["uid"] == "llmctl-overview"
    assert "(new)" in r.output
    (out / "llmctl-engines.json").write_text("{}")
    r = CliRunner().invoke(app, ["monitor", "dashboards", str(out)])
    assert "llmctl-engines.json (updated)" in r.output and "(unchanged)" in r.output
    assert json.loads((out / "llmctl-engines.json").read_text())["uid"] == "llmctl-engines"


def test_monitor_dashboards_into_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    r = subprocess.run([sys.executable, "-m", "llmctl", "monitor", "dashboards", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr
    assert f.read_text() == "mine"
