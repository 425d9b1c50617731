"""A real Prometheus for the tests: Debian's ``prometheus`` package (installed here when
missing and possible), started on a free port with a config of the test's own, and read
through its HTTP API.

The rules it loads are the shipped ones (``ops/prometheus/stream_infer.rules.yml``) with only
the ``for:`` windows shortened (minutes become seconds) and chosen threshold series set:
every expression stays as shipped (``tests/ops/test_rules.py`` checks that).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_infer.kafka import free_port
from tests.conftest import REPO

RULES = REPO / "ops" / "prometheus" / "stream_infer.rules.yml"
PROMETHEUS_CONFIG = REPO / "ops" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "stream_infer.json"

# Grafana's own variables in the dashboard's queries, as Grafana would fill them in for the
# test (all instances; the rate window Grafana picks for a 15 s scrape interval).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_install_error: str | None = None
_install_tried = False


# -- the binaries -------------------------------------------------------------------------


def _install() -> str | None:
    """``apt-get install prometheus`` (after ``apt-get update`` if the first try fails);
    None when done, else why not."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get here to install Debian's prometheus package"
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return "not root and no sudo: cannot apt-get install prometheus"
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    try:
        first = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if first.returncode != 0:
            subprocess.run(
                [*sudo, apt, "update", "-q"], env=env, capture_output=True, text=True, timeout=600
            )
            again = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
            if again.returncode != 0:
                return f"apt-get install prometheus failed: {again.stderr.strip()[-500:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install prometheus failed: {exc}"
    return None


def binaries() -> tuple[str, str]:
    """(prometheus, promtool): from PATH, else installed from Debian's package; skips with
    the reason where neither works (tests/conftest.py makes that a failure in CI)."""
    global _install_error, _install_tried
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if prom is None or tool is None:
        if not _install_tried:
            _install_tried = True
            _install_error = _install()
        prom, tool = shutil.which("prometheus"), shutil.which("promtool")
        if prom is None or tool is None:
            pytest.skip(
                "no prometheus/promtool on PATH and Debian's prometheus package could not be "
                f"installed: {_install_error or 'installed, yet not on PATH'}"
            )
    return prom, tool


# -- the rules as the test loads them -----------------------------------------------------


def seconds(duration: str) -> int:
    """A Prometheus duration of hours/minutes/seconds ("1h", "10m", "90s") in seconds."""
    m = _DURATION.match(duration.strip())
    if m is None or not any(m.groups()):
        raise ValueError(f"unsupported duration {duration!r}")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return 3600 * h + 60 * mi + s


def load_rules(path: Path = RULES) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def alert_rules(rules: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def recording_rules(rules: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["record"]: r for g in rules["groups"] for r in g["rules"] if "record" in r}


def threshold(rules: Mapping[str, Any], name: str) -> float:
    """The shipped value of ``stream_infer:alert_threshold:<name>`` (``vector(N)``)."""
    expr = recording_rules(rules)[f"stream_infer:alert_threshold:{name}"]["expr"]
    m = re.fullmatch(r"\s*vector\(([0-9.eE+-]+)\)\s*", expr)
    assert m is not None, f"threshold {name} is not vector(N): {expr!r}"
    return float(m.group(1))


def rules_for_test(
    rules: Mapping[str, Any], *, thresholds: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The shipped rules with every ``for:`` shortened 60 times (10m -> 10s) and the named
    thresholds replaced; nothing else changes."""
    out: dict[str, Any] = json.loads(json.dumps(rules))
    wanted = dict(thresholds or {})
    for group in out["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, seconds(rule['for']) // 60)}s"
            name = rule.get("record", "")
            prefix = "stream_infer:alert_threshold:"
            if name.startswith(prefix) and name[len(prefix) :] in wanted:
                rule["expr"] = f"vector({wanted.pop(name[len(prefix) :])})"
    assert not wanted, f"no such thresholds: {sorted(wanted)}"
    return out


def for_seconds(rules: Mapping[str, Any], alert: str) -> int:
    """An alert's ``for:`` in seconds (0 when it has none)."""
    rule = alert_rules(rules)[alert]
    return seconds(rule["for"]) if "for" in rule else 0


# -- the dashboard ------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str  # as Grafana sends it (its variables filled in)


def dashboard_queries(path: Path = DASHBOARD) -> list[PanelQuery]:
    """Every query of every panel (rows' nested panels too), Grafana variables filled in."""
    dash = json.loads(path.read_text(encoding="utf-8"))
    out: list[PanelQuery] = []

    def walk(panels: Sequence[Mapping[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                expr = t["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"{p['title']}: unfilled variable in {expr!r}"
                out.append(PanelQuery(p["title"], t.get("refId", "A"), expr))

    walk(dash["panels"])
    return out


# -- the server ---------------------------------------------------------------------------


class Prometheus:
    """A Prometheus process scraping ``targets`` every ``interval_s`` and evaluating
    ``rules`` as often, its data in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        rules: Mapping[str, Any],
        *,
        interval_s: float = 1.0,
        job: str = "stream-infer",
    ) -> None:
        prom, _ = binaries()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
        interval = f"{int(interval_s * 1000)}ms"
        config = {
            "global": {
                "scrape_interval": interval,
                "evaluation_interval": interval,
                "scrape_timeout": f"{int(interval_s * 800)}ms",
            },
            "rule_files": [str(workdir / "rules.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                prom,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.started = time.time()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def _get(self, path: str, **params: Any) -> Any:
        q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}{path}" + (f"?{q}" if q else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: {exc.code} {exc.read()[:500]!r}") from None
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"prometheus exited: {self.tail()}"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            assert time.monotonic() < deadline, f"prometheus not ready: {self.tail()}"
            time.sleep(0.1)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self._get("/api/v1/query", query=expr, time=at)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(
        self, expr: str, at: float | None = None
    ) -> dict[tuple[tuple[str, str], ...], float]:
        """The query's samples as {sorted labels: value}."""
        return {
            tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in self.query(expr, at)
        }

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) from /api/v1/alerts."""
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def targets_up(self) -> bool:
        return all(t["health"] == "up" for t in self._get("/api/v1/targets")["activeTargets"])


def alert_state(prom: Prometheus, name: str) -> str | None:
    """ "firing", "pending" or None for the alert ``name`` (firing wins over pending)."""
    states = {a["state"] for a in prom.alerts() if a["labels"].get("alertname") == name}
    return "firing" if "firing" in states else "pending" if "pending" in states else None


@contextlib.contextmanager
def running(*args: Any, **kw: Any) -> Iterator[Prometheus]:
    prom = Prometheus(*args, **kw)
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()
