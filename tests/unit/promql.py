"""PromQL helpers the dashboard and alert-rule tests share: which series a query names."""

from __future__ import annotations

import re
from functools import cache

from stream.compliance.canary import CanaryMetrics
from stream.runtime.metrics import Metrics
from stream.verifier.report import VerifierMetrics

# Series Prometheus itself adds to every scrape target.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)


@cache
def defined_metric_names() -> frozenset[str]:
    """Every series name the worker, the verifier or the canary can export: from fresh registries of each.

    The standard process and Python collectors are in all (`process_*`, `python_*`).
    """
    names: set[str] = set()
    for registry in (Metrics.create().registry, VerifierMetrics.create().registry, CanaryMetrics.create().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return frozenset(names)


def metric_names_in(expr: str) -> set[str]:
    """The metric (or recorded series) names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries (Grafana's $__ variables)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", text):
        name = match.group(1)
        if name.lower() not in _KEYWORDS:
            names.add(name)
    return names
