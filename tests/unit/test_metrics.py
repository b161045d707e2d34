"""The metrics bundle and the README's metrics table describe the same series."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from stream.runtime.metrics import Metrics

README = Path(__file__).resolve().parents[2] / "README.md"


def _exported() -> dict[str, set[str]]:
    """Metric family name -> label names, as a scrape shows the name."""
    registry = CollectorRegistry()
    metrics = Metrics.create(registry, policy_version="v")
    labels_of = {
        m._name: set(m._labelnames) - {"le"}  # declared labels, even of a gauge with no sample yet
        for m in (getattr(metrics, f) for f in metrics.__dataclass_fields__)
        if hasattr(m, "_labelnames")
    }
    families: dict[str, set[str]] = {}
    for family in registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        families[family.name + suffix] = labels_of.get(family.name, set()) or {
            k for sample in family.samples for k in sample.labels if k != "le"
        }
    return families


def _documented() -> dict[str, set[str]]:
    rows = re.findall(r"^\| `(eligibility_[a-z_]+)` \|([^|]*)\|", README.read_text(), flags=re.M)
    # The label names are the backticked words before any parenthesised list of values.
    return {name: set(re.findall(r"`([a-z_]+)`", re.sub(r"\(.*?\)", "", labels))) for name, labels in rows}


def test_metrics_readme_table_lists_exactly_the_exported_metrics_with_their_labels() -> None:
    exported = _exported()
    documented = _documented()
    assert set(documented) == set(exported)
    for name, labels in exported.items():
        assert labels == documented[name], name


def test_metrics_every_label_value_initialised_at_startup() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry)
    for reason in ("private_message", "eligible", "created_while_minor"):
        eligible = "true" if reason == "eligible" else "false"
        assert registry.get_sample_value("eligibility_decisions_total", {"reason": reason, "eligible": eligible}) == 0
    assert registry.get_sample_value("eligibility_dead_letters_total", {"reason": "key_mismatch"}) == 0
    assert registry.get_sample_value("eligibility_retractions_total", {"cause": "objection"}) == 0
    assert registry.get_sample_value("eligibility_output_records_total", {"output": "deferred"}) == 0


def test_metrics_observe_many_counts_exactly_like_observe() -> None:
    from stream.runtime.metrics import LATENCY_BUCKETS, observe_many

    values = [0.0, 0.001, 0.0011, 0.05, 0.0500001, 3.0, 60.0, 61.0, 1e9] + [i / 997 for i in range(2000)]
    one, many = CollectorRegistry(), CollectorRegistry()
    from prometheus_client import Histogram

    h1 = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=one)
    h2 = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=many)
    for v in values:
        h1.observe(v)
    observe_many(h2, values)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        family = next(iter(registry.collect()))
        return {(s.name, tuple(s.labels.items())): s.value for s in family.samples if not s.name.endswith("_created")}

    assert samples(one) == samples(many)
    assert samples(one)[("h_count", ())] == len(values)
