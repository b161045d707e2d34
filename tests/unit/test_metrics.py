"""The metrics bundle and the README's metrics table describe the same series."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.runtime.metrics import Metrics

README = Path(__file__).resolve().parents[2] / "README.md"


def _exported() -> dict[str, set[str]]:
    """Metric family name -> label names, as a scrape shows the name."""
    registry = CollectorRegistry()
    # With a shadow policy: the shadow's series have samples only then.
    metrics = Metrics.create(registry, policy_version="v", shadow=True)
    # `create` initialises every label value but the lag's (its partitions come with an
    # assignment): one sample, so the scrape shows its label names too.
    metrics.consumer_lag.labels(input="content", partition="0").set(0)
    families: dict[str, set[str]] = {}
    for family in registry.collect():
        if not family.name.startswith("eligibility_"):
            continue  # the standard process and Python collectors: test_metrics_scrape_has_the_standard_...
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        families[family.name + suffix] = {k for sample in family.samples for k in sample.labels if k != "le"}
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


def _scraped(registry: CollectorRegistry) -> dict[str, float]:
    """Sample name -> value, as Prometheus reads the text a scrape returns (first sample of each name)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, sample.value)
    return samples


STANDARD_SERIES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "python_gc_collections_total",
    "python_gc_objects_collected_total",
    "python_info",
)


def test_metrics_scrape_has_the_standard_process_and_python_series() -> None:
    scraped = _scraped(Metrics.create().registry)
    assert set(STANDARD_SERIES) <= set(scraped), sorted(set(STANDARD_SERIES) - set(scraped))
    assert scraped["process_resident_memory_bytes"] > 1 << 20  # this process's, read from /proc
    assert scraped["process_start_time_seconds"] > 1_600_000_000
    assert "eligibility_build_info" in scraped  # the bundle's own series are still there


def test_metrics_verifier_scrape_has_the_standard_process_and_python_series() -> None:
    from stream.verifier.report import VerifierMetrics

    scraped = _scraped(VerifierMetrics.create().registry)
    assert set(STANDARD_SERIES) <= set(scraped), sorted(set(STANDARD_SERIES) - set(scraped))
    assert "eligibility_verifier_last_run_timestamp_seconds" in scraped


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


def test_metrics_histogram_cells_are_the_buckets_and_sum_prometheus_client_counts() -> None:
    """Fails if a prometheus_client release renames or reshapes the internals `HistogramCells` reads."""
    from prometheus_client import Histogram

    from stream.runtime.metrics import LATENCY_BUCKETS, HistogramCells

    histogram = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for value in (0.001, 0.3, 0.3, 100.0):
        histogram.observe(value)
    cells = HistogramCells(histogram)
    assert list(cells.bounds) == [*LATENCY_BUCKETS, float("inf")]
    assert len(cells.buckets) == len(cells.bounds)
    per_bucket = [bucket.get() for bucket in cells.buckets]
    assert per_bucket[0] == 1 and per_bucket[LATENCY_BUCKETS.index(0.5)] == 2 and per_bucket[-1] == 1
    assert sum(per_bucket) == 4
    assert cells.sum.get() == 0.001 + 0.3 + 0.3 + 100.0
