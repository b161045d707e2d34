"""The metrics bundle: every series the filter exports, in one typed place.

Add a metric here, initialise each of its label values in `create()` (so no
Grafana panel starts empty and `rate()` works from the first scrape), and document
it in the README's metrics table. Labels come from closed enums only, never ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream import __version__
from stream.engine import BatchResult
from stream.models import DeadLetterReason, Reason, RetractCause
from stream.state import StateKind

# Seconds. The latency objective is p99 <= 50 ms end to end, so resolution is finest
# below 100 ms; the tail buckets show backlog after a restart or rebalance.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    decisions: Counter
    dead_letters: Counter
    retractions: Counter
    records_in: Counter
    records_out: Counter
    batch_seconds: Histogram
    broker_to_feed_seconds: Histogram
    ready: Gauge
    delivery_failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None, *, policy_version: str = "") -> Metrics:
        registry = registry if registry is not None else CollectorRegistry()
        m = cls(
            registry=registry,
            decisions=Counter(
                "eligibility_decisions_total",
                "Upserts decided, by the rule's reason",
                ["reason", "eligible"],
                registry=registry,
            ),
            dead_letters=Counter(
                "eligibility_dead_letters_total",
                "Input records sent to the dead-letter topic",
                ["reason"],
                registry=registry,
            ),
            retractions=Counter(
                "eligibility_retractions_total", "Published items retracted, by cause", ["cause"], registry=registry
            ),
            records_in=Counter(
                "eligibility_input_records_total", "Records consumed, by input", ["input"], registry=registry
            ),
            records_out=Counter(
                "eligibility_output_records_total",
                "Records acknowledged by the broker, by output",
                ["output"],
                registry=registry,
            ),
            batch_seconds=Histogram(
                "eligibility_batch_duration_seconds",
                "Time to decide, produce and commit one fetched batch",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            broker_to_feed_seconds=Histogram(
                "eligibility_processing_latency_seconds",
                "From the input record's broker timestamp to the broker acknowledging its outputs",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            ready=Gauge(
                "eligibility_ready", "1 when partitions are assigned and state has caught up", registry=registry
            ),
            delivery_failures=Counter(
                "eligibility_delivery_failures_total",
                "Batches whose outputs the broker did not acknowledge (retried)",
                registry=registry,
            ),
        )
        for reason in Reason:
            m.decisions.labels(reason=reason.value, eligible=str(reason is Reason.ELIGIBLE).lower())
        for dl in DeadLetterReason:
            m.dead_letters.labels(reason=dl.value)
        for cause in RetractCause:
            m.retractions.labels(cause=cause.value)
        for name in ("content", *(k.value for k in StateKind)):
            m.records_in.labels(input=name)
        for name in ("feed", "decisions", "dlq"):
            m.records_out.labels(output=name)
        Info("eligibility_build", "Version of the filter and of the policy in force", registry=registry).info(
            {"version": __version__, "policy_version": policy_version}
        )
        return m

    def count_batch(self, result: BatchResult) -> None:
        for reason, n in result.decisions.items():
            self.decisions.labels(reason=reason.value, eligible=str(reason is Reason.ELIGIBLE).lower()).inc(n)
        for dl, n in result.dead_letters.items():
            self.dead_letters.labels(reason=dl.value).inc(n)
        for cause, n in result.retractions.items():
            self.retractions.labels(cause=cause.value).inc(n)
        for produce in result.produce:
            self.records_out.labels(output=produce.topic.value).inc()
