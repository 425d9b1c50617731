"""The shipped monitoring files, without a running service: the Prometheus rules pass
``promtool``, name only metrics the service exports, and carry a runbook; the Grafana
dashboard queries through its data source variable; docker-compose.yml parses and mounts
files that exist; packaging pins torch through constraints.txt only.

Their queries returning the right numbers from a live service: test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from stream_infer.ops import Metrics
from stream_infer.reload import EnsembleRuntime
from tests.conftest import REPO
from tests.ops._prometheus import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    RULES,
    alert_rules,
    binaries,
    dashboard_queries,
    load_rules,
    recording_rules,
    rules_for_test,
    seconds,
    threshold,
)

# What the issue asked the alerts to cover, by the name each got.
ALERTS = {
    "StreamInferConsumerLagGrowing",  # consumer lag growing for N minutes
    "StreamInferConsumerLagHigh",  # lag in seconds above a bound
    "StreamInferDeadLetterRateHigh",  # dead-letter rate above a share of input
    "StreamInferNoPredictions",  # no predictions while candles are consumed
    "StreamInferNotReady",  # not ready for N minutes
    "StreamInferReloadFailed",  # a hot reload failed
    "StreamInferEnsembleTooOld",  # the serving ensemble older than a configured age
    "StreamInferSinkDroppingRows",  # the predictions sink dropping rows
    "StreamInferBrokerUnreachable",  # broker unreachable
}
_METRIC = re.compile(r"(?<![:\w])stream_infer_[a-z0-9_]+(?![:\w])")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
_RECORD_NAME = re.compile(r"^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$")


def _exported_names() -> set[str]:
    """Every sample name the service can export: its registry, plus the families the
    Postgres runtime adds at scrape time (sink and reloader)."""
    names: set[str] = set()
    for fam in Metrics().registry.collect():
        # a labelled family has no samples before its first labels (dead letters by reason)
        names |= {fam.name + suffix for suffix in _SUFFIXES.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    fake = SimpleNamespace(
        sink=SimpleNamespace(
            stats=lambda: dict.fromkeys(
                ("written", "duplicates", "dropped", "rejected", "failed_batches", "pending"), 0
            )
        ),
        reloader=SimpleNamespace(reconnects=0),
    )
    for fam in EnsembleRuntime.collect_metrics(fake):  # type: ignore[arg-type]
        names |= {s.name for s in fam.samples}
    # histogram series come as _bucket/_sum/_count, all present in the registry's samples
    return names


def _all_exprs() -> list[tuple[str, str]]:
    rules = load_rules()
    out = [(r.get("alert") or r["record"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    out += [(f"panel {q.panel} {q.ref}", q.expr) for q in dashboard_queries()]
    return out


# -- rules --------------------------------------------------------------------------------


@pytest.mark.services
def test_promtool_accepts_the_rules_and_the_compose_config(tmp_path: Path) -> None:
    _, promtool = binaries()
    for args in (["check", "rules", str(RULES)], ["check", "config", str(PROMETHEUS_CONFIG)]):
        res = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout + res.stderr
    # and the variant the live tests load
    variant = tmp_path / "rules.yml"
    variant.write_text(yaml.safe_dump(rules_for_test(load_rules())))
    res = subprocess.run(
        [promtool, "check", "rules", str(variant)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_the_issue_asked_for_exists_with_a_runbook() -> None:
    alerts = alert_rules(load_rules())
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), name
        runbook = ann.get("runbook", "")
        assert len(runbook) > 40, f"{name}: runbook too thin: {runbook!r}"
        # the docs page has a section per alert, linked from the runbook line
        assert f"docs/operations.md#{name.lower()}" in runbook, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        if "for" in rule:
            assert seconds(rule["for"]) >= 60, f"{name}: a production for: under a minute"
    docs = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for name in alerts:
        assert re.search(rf"^### {name}$", docs, flags=re.M), f"docs/operations.md lacks {name}"


def test_recording_rules_are_named_level_metric_operation() -> None:
    for name in recording_rules(load_rules()):
        assert _RECORD_NAME.match(name), name


def test_thresholds_ship_sane_production_values() -> None:
    rules = load_rules()
    assert threshold(rules, "consumer_lag_seconds") >= 60
    assert 0 < threshold(rules, "dead_letter_ratio") < 0.1
    assert 0 < threshold(rules, "lag_growth_ratio") < 0.5
    assert threshold(rules, "ensemble_age_seconds") >= 86400


def test_the_test_variant_changes_only_for_windows_and_named_thresholds() -> None:
    shipped = load_rules()
    variant = rules_for_test(shipped, thresholds={"consumer_lag_seconds": 4})
    for g1, g2 in zip(shipped["groups"], variant["groups"], strict=True):
        assert g1["name"] == g2["name"]
        for r1, r2 in zip(g1["rules"], g2["rules"], strict=True):
            if r1.get("record") == "stream_infer:alert_threshold:consumer_lag_seconds":
                assert r2["expr"] == "vector(4)"
                continue
            assert r1["expr"] == r2["expr"], r1.get("alert") or r1.get("record")
            assert {k: v for k, v in r1.items() if k != "for"} == {
                k: v for k, v in r2.items() if k != "for"
            }
            if "for" in r1:
                assert seconds(r2["for"]) * 60 == seconds(r1["for"])
    with pytest.raises(AssertionError, match="no such thresholds"):
        rules_for_test(shipped, thresholds={"nope": 1})


def test_rules_and_dashboard_name_only_metrics_the_service_exports() -> None:
    exported = _exported_names()
    recorded = set(recording_rules(load_rules()))
    for where, expr in _all_exprs():
        for name in _METRIC.findall(expr):
            assert name in exported, f"{where}: {name} is not exported by the service"
        for name in re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", expr):
            assert name in recorded, f"{where}: {name} is not a recording rule"


# -- dashboard ----------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out += _panels(p.get("panels", []))
    return out


def test_dashboard_queries_prometheus_through_its_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    want = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["instance"]["datasource"] == want
    panels = [p for p in _panels(dash["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(dash["panels"])}) == len(_panels(dash["panels"]))
    for p in panels:
        assert p["datasource"] == want, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == want, p["title"]
    titles = {p["title"] for p in panels}
    # what the issue asked the dashboard to show
    for needed in (
        "Throughput",
        "End-to-end latency",
        "Latency per stage (p99)",
        "Lag per partition (records)",
        "Lag per partition (seconds)",
        "Dead letters by reason",
        "Serving ensemble",
        "Reloads (24 h)",
        "Sink rows by result",
    ):
        assert needed in titles, needed
    assert len(dashboard_queries()) >= 20


# -- packaging ----------------------------------------------------------------------------


def _constraints() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def test_torch_is_a_range_in_pyproject_and_pinned_by_the_constraints_file() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    torch = reqs["torch"]
    assert not any(s.operator in ("==", "===") for s in torch.specifier), torch
    pinned = _constraints()["torch"]
    assert Version(pinned) in torch.specifier, (pinned, str(torch.specifier))
    for script in ("scripts/test", "scripts/demo"):
        text = (REPO / script).read_text(encoding="utf-8")
        installs = [ln for ln in text.splitlines() if "pip install" in ln]
        assert installs and all("-c constraints.txt" in ln for ln in installs), script
    # the README says what the tests ran with
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"torch {pinned}" in readme
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in readme
