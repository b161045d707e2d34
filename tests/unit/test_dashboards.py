"""The Grafana dashboards: generated, committed as generated, and reading only real series.

The committed JSON under dashboards/ must be byte-for-byte what dashboards/build.py
writes (edit the code, not the JSON); every panel queries Prometheus; every metric a
query names is one stream/runtime/metrics.py defines (a renamed metric would otherwise leave
an empty panel that nobody notices). Whether each query returns data from a real
worker is tests/integration/test_prometheus.py's job.

The PromQL helpers live in tests/unit/promql.py, shared with test_alert_rules.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.promql import SYNTHETIC, defined_metric_names, metric_names_in

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
COMMITTED = sorted(DASHBOARDS.glob("*.json"))
DATASOURCES = DASHBOARDS / "provisioning" / "datasources" / "prometheus.yml"


def _dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return [p for p in panels if p["type"] != "row"]


def _exprs() -> list[tuple[str, str]]:
    return [
        (f"{path.name}: {panel['title']}", target["expr"])
        for path in COMMITTED
        for panel in _panels(_dashboard(path))
        for target in panel.get("targets", [])
    ]


def test_metric_names_in_promql_ignores_functions_labels_ranges_and_grouping() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{le="0.25", x=~"y|z"}[$__rate_interval])))'
        " / on (instance) group_left (version) b_info + time() - max(c:recorded:rate5m offset 5m > 1e3) and bool d"
    )
    assert metric_names_in(expr) == {"a_bucket", "b_info", "c:recorded:rate5m", "d"}


def test_dashboards_committed_json_is_exactly_what_build_py_generates(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DASHBOARDS / "build.py"), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    generated = sorted(tmp_path.glob("*.json"))
    assert [p.name for p in generated] == [p.name for p in COMMITTED], "run: python dashboards/build.py"
    for path in generated:
        assert path.read_bytes() == (DASHBOARDS / path.name).read_bytes(), (
            f"dashboards/{path.name} differs from what dashboards/build.py generates: "
            "edit build.py, run `python dashboards/build.py` and commit both"
        )


def test_dashboards_overview_and_compliance_exist_with_unique_uids() -> None:
    uids = [_dashboard(p)["uid"] for p in COMMITTED]
    assert {"eligibility-overview", "eligibility-compliance"} <= set(uids)
    assert len(uids) == len(set(uids))


def test_dashboards_overview_has_every_panel_the_readme_metrics_table_names() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = {
        title.strip()
        for cell in re.findall(r"^\| `eligibility_[a-z_]+` \|.*\|([^|]*)\|\s*$", readme, flags=re.M)
        for title in cell.split(";")
        if title.strip()
    }
    overview = _dashboard(DASHBOARDS / "eligibility-overview.json")
    titles = {p["title"] for p in overview["panels"]} | {
        c["title"] for p in overview["panels"] for c in p.get("panels", [])
    }
    assert named, "README's metrics table has no panel column"
    assert named - titles == set(), "README names panels (or rows) the overview dashboard does not have"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_dashboard_every_panel_has_a_promql_target(path: Path) -> None:
    panels = _panels(_dashboard(path))
    assert panels
    for panel in panels:
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: target without a PromQL expr"
            assert target.get("refId"), f"panel {panel['title']!r}: target without refId"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['title']!r}: duplicate refIds {ref_ids}"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_dashboard_panel_ids_unique(path: Path) -> None:
    dashboard = _dashboard(path)
    ids = [p["id"] for p in dashboard["panels"]] + [c["id"] for p in dashboard["panels"] for c in p.get("panels", [])]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_dashboard_queries_the_datasource_variable_whose_default_is_the_provisioned_prometheus(path: Path) -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {d["uid"] for d in provisioned if d["type"] == "prometheus"}
    dashboard = _dashboard(path)
    (datasource,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    assert datasource["current"]["value"] in uids
    for panel in _panels(dashboard):
        refs = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
        for ref in refs:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, (panel["title"], ref)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_dashboard_has_namespace_job_and_instance_variables_from_the_datasource_variable(path: Path) -> None:
    variables = {v["name"]: v for v in _dashboard(path)["templating"]["list"]}
    assert {"datasource", "namespace", "job", "instance"} <= set(variables)
    for name in ("namespace", "job", "instance"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        assert v["query"].startswith("label_values(eligibility_build_info") and v["includeAll"], name
        assert v["current"]["value"] == "$__all", name
    # All namespaces must match series without the label (a Prometheus outside Kubernetes); All jobs must
    # not be `.*`, or `up` would count every job's targets as workers.
    assert variables["namespace"]["allValue"] == ".*"
    assert "allValue" not in variables["job"]


def _unscoped(expr: str) -> list[str]:
    """The series selectors of `expr` that do not carry the dashboard's scope variables."""
    wrong = []
    for name in metric_names_in(expr):
        required = (
            ('namespace=~"$namespace"', 'job=~"$verifier_job"')
            # The verifier's series: its own, and the trainers' acknowledgements it reads.
            if name.startswith(("eligibility_verifier_", "eligibility_trainer_"))
            # The canary objectors' series (python -m stream canary).
            else ('namespace=~"$namespace"', 'job=~"$canary_job"')
            if name.startswith("eligibility_canary_")
            else ('namespace=~"$namespace"', 'job=~"$job"', 'instance=~"$instance"')
        )
        for match in re.finditer(rf"(?<![\w:]){re.escape(name)}(\{{[^}}]*\}})?(?![\w:])", expr):
            matchers = match.group(1) or ""
            if not all(m in matchers for m in required):
                wrong.append(match.group(0))
    return wrong


def test_unscoped_finds_a_selector_without_the_variables() -> None:
    scoped = 'eligibility_ready{namespace=~"$namespace", job=~"$job", instance=~"$instance"}'
    assert _unscoped(f"sum({scoped})") == []
    assert _unscoped(f'sum({scoped}) / sum(eligibility_ready{{job=~"$job"}})') == ['eligibility_ready{job=~"$job"}']
    assert _unscoped('time() - max(eligibility_verifier_losses{namespace=~"$namespace", job=~"$job"})') != []


@pytest.mark.parametrize(("panel", "expr"), _exprs(), ids=[p for p, _ in _exprs()])
def test_dashboard_query_selects_every_series_within_the_variables(panel: str, expr: str) -> None:
    assert _unscoped(expr) == [], f"{panel}: selectors outside the namespace/job/instance variables"


@pytest.mark.parametrize(("panel", "expr"), _exprs(), ids=[p for p, _ in _exprs()])
def test_dashboard_query_names_only_metrics_defined_in_stream_metrics(panel: str, expr: str) -> None:
    names = metric_names_in(expr)
    assert names, f"{panel}: no metric in {expr!r}"
    unknown = names - defined_metric_names() - SYNTHETIC
    assert not unknown, f"{panel}: {sorted(unknown)} exported neither by the worker's nor the verifier's registry"
