"""Prometheus rules: valid, unit-tested with promtool, and reading only series the worker exports.

promtool comes with Debian's `prometheus` package (scripts/install-prometheus.sh,
which `make test` runs first). Locally a missing promtool skips these tests loudly;
under CI=true it is a failure, never a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import missing
from tests.unit.promql import SYNTHETIC, defined_metric_names, metric_names_in

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool not found: run scripts/install-prometheus.sh (Debian's prometheus package)"
        missing("PROMTOOL", "alert rule tests", reason)
    return path


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # promtool resolves rule_files relative to the working directory in `test rules`.
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_promtool_check_passes(promtool: str) -> None:
    result = _run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_promtool_check_passes(promtool: str) -> None:
    result = _run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_promtool_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_every_alert_has_a_firing_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case["exp_alerts"]}
    silent = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts without a test where they fire"
    assert alerts - silent == set(), "alerts without a test where they stay silent"


def test_rules_every_alert_has_severity_and_summary() -> None:
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_rules_name_only_metrics_defined_in_stream_metrics_or_recorded_here() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        names = metric_names_in(rule["expr"])
        assert names, rule
        unknown = names - defined_metric_names() - SYNTHETIC - recorded
        assert not unknown, (
            f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)} not exported by "
            "stream/runtime/metrics.py or stream/verifier/report.py"
        )


def test_rules_recorded_names_follow_level_metric_operation_convention() -> None:
    for rule in _rules():
        if "record" in rule:
            level, _, rest = rule["record"].partition(":")
            assert level == "eligibility" and rest.count(":") == 1, rule["record"]


def _anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer (GitHub's rule) gives the headings of `markdown`."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_rules_every_alert_has_a_runbook_url_whose_section_exists_in_docs_runbooks() -> None:
    anchors = _anchors(RUNBOOKS.read_text(encoding="utf-8"))
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert alerts
    for rule in alerts:
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md", f"{rule['alert']}: runbook_url {url!r} is not docs/runbooks.md#<anchor>"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/runbooks.md"
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: runbook_url points at another alert's section"


def test_rules_runbooks_have_a_section_per_alert_and_no_orphan() -> None:
    text = RUNBOOKS.read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (Eligibility\w+)\s*$", text, flags=re.M))
    assert sections == {rule["alert"] for rule in _rules() if "alert" in rule}
    for name in sections:
        body = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert part in body, f"{name}: its runbook lacks {part}"
