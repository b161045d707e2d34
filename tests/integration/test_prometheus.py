"""Every dashboard query answers from a real Prometheus scraping a real worker, verifier and canary under load.

A real worker process (`python -m stream worker`, uuid-named topics) decides a
generated workload, and a real verifier (`python -m stream verify`) checks the feed
every few seconds, and the canary objectors (`python -m stream canary`) probe it,
while a real Prometheus server (Debian's package binary, installed by
scripts/install-prometheus.sh) scrapes all three every second and evaluates
deploy/prometheus/rules.yml. Then each PromQL expression of each panel of the
committed dashboards, with Grafana's variables given the values their own queries find
(or All), must return at least one series: a panel that would show "No data" fails,
naming the panel. The dashboards' job and instance variables must find the worker, the
verifier and the canary. Last, a canary item planted on the feed makes
EligibilityCanaryFailures fire on that Prometheus.

Locally a missing prometheus binary skips loudly; under CI=true it is a failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import missing

from .harness import free_port, http_get, process_env, send, unique_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
JOB = "eligibility-filter"  # the job name of deploy/prometheus/prometheus.yml, which the dashboards select on
VERIFIER_JOB = "eligibility-verifier"
CANARY_JOB = "eligibility-canary"

# Grafana's built-in variables, as Grafana would fill them for a short time range at a
# 1 s scrape interval, and the dashboards' own as Grafana fills them with All selected
# (a job's All is the alternation of the jobs its query finds; the namespace's and the
# instance's is `.*`). A query with any other `$` variable fails the test: give it a
# value here when a dashboard starts using one.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$namespace": ".*",
    "$job": f"({JOB})",
    "$instance": ".*",
    "$verifier_job": f"({VERIFIER_JOB})",
    "$canary_job": f"({CANARY_JOB})",
}
COUNT = 3000


def _exprs() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = [p for p in dashboard["panels"]] + [c for p in dashboard["panels"] for c in p.get("panels", [])]
        for panel in panels:
            for target in panel.get("targets", []):
                yield f"{path.name} / {panel['title']} / {target['refId']}", target["expr"]


def _label_values(query: str) -> tuple[str, str]:
    """Grafana's `label_values(series, label)` variable query as its series selector and label."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match, query
    return match.group(1), match.group(2)


def _substituted(expr: str) -> str:
    # Longest first: $__interval is a prefix of $__interval_ms and the like.
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}: add it to GRAFANA_VARIABLES"
    return expr


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if path is None:
        reason = "no prometheus binary: run scripts/install-prometheus.sh (Debian's prometheus package)"
        missing("PROMETHEUS", "dashboard query test", reason)
    return path


_free_port = free_port
_env = process_env
_get = http_get


async def _api(base: str, path: str, **params: str) -> Any:
    status, body = await _get(f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}")
    if status == 0:
        return None
    payload = json.loads(body)
    assert payload["status"] == "success", f"{path} {params}: {payload}"
    return payload["data"]


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class Process:
    """A child process with its log in a file; stopped with SIGTERM, then killed."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.name = Path(args[0]).name
        self._file = log.open("w")
        self.proc = subprocess.Popen(args, env=env, stdout=self._file, stderr=subprocess.STDOUT)

    def assert_running(self) -> None:
        assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}:\n{_tail(self.log)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


async def test_prometheus_every_dashboard_query_returns_series_from_a_real_worker(
    bootstrap: str, tmp_path: Path, prometheus_binary: str
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "worker-data")
    created = subprocess.run(
        [sys.executable, "-m", "stream", "topics", "create"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stderr

    worker_port, prometheus_port, verifier_port, canary_port = _free_port(), _free_port(), _free_port(), _free_port()
    while len({worker_port, prometheus_port, verifier_port, canary_port}) < 4:  # two probes may get the same port
        prometheus_port, verifier_port, canary_port = _free_port(), _free_port(), _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
                    {"job_name": VERIFIER_JOB, "static_configs": [{"targets": [f"127.0.0.1:{verifier_port}"]}]},
                    {"job_name": CANARY_JOB, "static_configs": [{"targets": [f"127.0.0.1:{canary_port}"]}]},
                ],
            }
        )
    )
    base = f"http://127.0.0.1:{prometheus_port}"
    # A shadow policy (the packaged one with DE enabled), so the compliance dashboard's rollout row has series.
    shadow = tmp_path / "shadow.toml"
    shadow.write_text(
        'version = "shadow-prometheus"\ncontent_types = ["post", "comment", "photo", "caption"]\nminimum_age = 18\n'
        "[jurisdictions.GB]\nnotice_period_days = 0\n[jurisdictions.BR]\nnotice_period_days = 30\n"
        "[jurisdictions.DE]\nnotice_period_days = 0\n"
    )
    worker = Process(
        [sys.executable, "-m", "stream", "worker"],
        tmp_path / "worker.log",
        _env(settings, STREAM_WEB_PORT=str(worker_port), STREAM_SHADOW_POLICY_PATH=str(shadow)),
    )
    verifier = Process(
        [
            sys.executable,
            "-m",
            "stream",
            "verify",
            "--interval",
            "2",
            "--grace",
            "0",
            "--port",
            str(verifier_port),
        ],
        tmp_path / "verifier.log",
        # A trainer group, so the compliance dashboard's trainer panels have series.
        _env(settings, STREAM_TRAINER_GROUPS="trainer-a"),
    )
    canary = Process(
        [
            sys.executable,
            "-m",
            "stream",
            "canary",
            "--port",
            str(canary_port),
            "--post-interval",
            "1",
            "--probe-interval",
            "0.5",
            "--deadline",
            "10",
        ],
        tmp_path / "canary.log",
        _env(settings),
    )
    prometheus = Process(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        async with asyncio.timeout(120):
            while (await _get(f"http://127.0.0.1:{worker_port}/ready"))[0] != 200:
                worker.assert_running()
                await asyncio.sleep(0.2)

        async with asyncio.timeout(60):  # Prometheus up and scraping the worker and the verifier
            while True:
                prometheus.assert_running()
                verifier.assert_running()
                canary.assert_running()
                targets = await _api(base, "/api/v1/targets")
                up = {t["labels"]["job"] for t in (targets or {}).get("activeTargets", []) if t["health"] == "up"}
                if {JOB, VERIFIER_JOB, CANARY_JOB} <= up:
                    break
                await asyncio.sleep(0.5)

        generated = subprocess.run(
            [sys.executable, "-m", "stream", "generate", "--count", str(COUNT), "--accounts", "300", "--no-progress"],
            env=_env(settings),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert generated.returncode == 0, generated.stderr

        consumed = f'sum(eligibility_input_records_total{{job="{JOB}", input="content"}}) >= {COUNT}'
        async with asyncio.timeout(120):  # the whole workload decided, and Prometheus has seen it
            while not (await _api(base, "/api/v1/query", query=consumed) or {}).get("result"):
                worker.assert_running()
                prometheus.assert_running()
                await asyncio.sleep(1)

        pending = dict(_exprs())
        assert pending, "no dashboard queries found"
        answers: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # rates need two scrapes in their window; gauges refresh periodically
        while pending and loop.time() < deadline:
            for panel, expr in list(pending.items()):
                data = await _api(base, "/api/v1/query", query=_substituted(expr))
                answers[panel] = data
                if data and data["result"]:
                    del pending[panel]
            if pending:
                await asyncio.sleep(1)
        assert not pending, "panels whose queries return no series (Grafana would show 'No data'):\n" + "\n".join(
            f"  {panel}: {expr}  -> {answers.get(panel)}" for panel, expr in pending.items()
        )

        # The variables' own queries (label_values(series{...}, label)) find the worker and the verifier.
        for dashboard in DASHBOARDS:
            for variable in json.loads(dashboard.read_text())["templating"]["list"]:
                if variable["type"] != "query":
                    continue
                series, label = _label_values(_substituted(variable["query"]))
                found = await _api(base, f"/api/v1/label/{label}/values", **{"match[]": series})
                expected = {"job": JOB, "verifier_job": VERIFIER_JOB, "canary_job": CANARY_JOB}.get(variable["name"])
                if variable["name"] == "namespace":
                    assert found == [], found  # no namespace label outside Kubernetes: All (.*) matches
                elif expected is not None:
                    assert found == [expected], (dashboard.name, variable["name"], found)
                else:
                    assert found == [f"127.0.0.1:{worker_port}"], (dashboard.name, variable["name"], found)

        groups = (await _api(base, "/api/v1/rules"))["groups"]
        assert {g["file"] for g in groups} == {str(RULES)}
        broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] == "err"]
        assert not broken, broken

        # The canary probed without failure; an item planted on the feed under its prefix fires the alert.
        assert not await _firing(base, "EligibilityCanaryFailures")
        retracted = f'eligibility_canary_probes_total{{job="{CANARY_JOB}", outcome="retracted"}} > 0'
        assert (await _api(base, "/api/v1/query", query=retracted))["result"], _tail(tmp_path / "canary.log")
        planted = f"{settings.canary_prefix}objector-0-0-planted"
        await send(settings, settings.topics.feed, [(planted.encode(), b'{"content_id": "' + planted.encode() + b'"}')])
        async with asyncio.timeout(60):
            while not (alerts := await _firing(base, "EligibilityCanaryFailures")):
                canary.assert_running()
                await asyncio.sleep(1)
        assert [a["labels"]["kind"] for a in alerts] == ["published"]
        assert planted in _tail(tmp_path / "canary.log")
    finally:
        prometheus.stop()
        canary.stop()
        verifier.stop()
        worker.stop()


async def _firing(base: str, name: str) -> list[dict[str, Any]]:
    """The alerts named `name` that the Prometheus at `base` has firing."""
    data = await _api(base, "/api/v1/alerts")
    return [a for a in (data or {}).get("alerts", []) if a["labels"]["alertname"] == name and a["state"] == "firing"]
