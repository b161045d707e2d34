"""The metrics bundle: every series the filter exports, in one typed place.

Add a metric here, initialise each of its label values in `create()` (so no
Grafana panel starts empty and `rate()` works from the first scrape), and document
it in the README's metrics table (a test checks the two agree). Labels come from
closed sets only (the core's enums, `Input`, `Stage`, `MemoryPart`, partition
numbers), never ids.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.values import ValueClass

from stream import __version__
from stream.core.engine import BatchResult, OutputTopic
from stream.core.models import DeadLetterReason, Reason, RetractCause, SkipReason
from stream.core.state import EntryKind
from stream.runtime.interrupt import Cut
from stream.runtime.partitions import StoreOrigin


class Input(StrEnum):
    """The input topics, as the `input` label of consumed records and lag."""

    CONTENT = "content"
    PROFILES = "profiles"
    OBJECTIONS = "objections"


class Stage(StrEnum):
    """Where a batch's time goes, in the order the worker spends it: the `stage` label."""

    GATE = "gate"
    DECIDE = "decide"
    STORE = "store"
    PRODUCE = "produce"
    COMMIT = "commit"


class MemoryPart(StrEnum):
    """What RocksDB's memory is held in: the `part` label of the store memory gauge."""

    MEMTABLES = "memtables"
    BLOCK_CACHE = "block_cache"


# Seconds. The end-to-end objective is p99 <= 50 ms, so resolution is finest below
# 100 ms; the tail buckets show backlog after a restart or a rebalance.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)
# Seconds. The objection objective is p99 <= 250 ms: buckets straddle it closely.
OBJECTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)
# Seconds from the upstream event_time: includes the platform's own delay, so wider.
EVENT_TIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0)


class _Outcomes(TypedDict):
    decisions: Counter
    dead_letters: Counter
    retractions: Counter
    skips: Counter
    released: Counter
    records_in: Counter
    records_out: Counter


class _Latencies(TypedDict):
    batch_seconds: Histogram
    stage_seconds: Histogram
    broker_latency: Histogram
    event_time_latency: Histogram
    objection_propagation: Histogram


class _State(TypedDict):
    consumer_lag: Gauge
    state_entries: Gauge
    store_memory: Gauge
    deferred_items: Gauge


class _Shadow(TypedDict):
    shadow_differences: Counter


class _Health(TypedDict):
    ready: Gauge
    recovering: Gauge
    rebalances: Counter
    partitions_assigned: Counter
    last_batch: Gauge
    delivery_failures: Counter
    gate_listings: Counter
    batch_replays: Counter
    batches_given_up: Counter
    stuck: Gauge
    loop_step: Gauge
    dev_pseudonym_key: Gauge


@dataclass(frozen=True, slots=True)
class Metrics:
    """Every series the worker exports, in one registry; `create` builds them with every label value."""

    registry: CollectorRegistry
    decisions: Counter
    dead_letters: Counter
    retractions: Counter
    records_in: Counter
    records_out: Counter
    batch_seconds: Histogram
    stage_seconds: Histogram
    broker_latency: Histogram
    event_time_latency: Histogram
    objection_propagation: Histogram
    consumer_lag: Gauge
    state_entries: Gauge
    store_memory: Gauge
    deferred_items: Gauge
    ready: Gauge
    recovering: Gauge
    rebalances: Counter
    partitions_assigned: Counter
    last_batch: Gauge
    delivery_failures: Counter
    gate_listings: Counter
    skips: Counter
    released: Counter
    batch_replays: Counter
    batches_given_up: Counter
    stuck: Gauge
    loop_step: Gauge
    dev_pseudonym_key: Gauge
    shadow_differences: Counter

    @classmethod
    def create(
        cls, registry: CollectorRegistry | None = None, *, policy_version: str = "", shadow: bool = False
    ) -> Metrics:
        """The bundle in `registry` (a new one by default), every label value initialised at zero.

        `shadow`: a shadow policy runs, so the shadow's reason pairs are initialised too;
        without one the series has no samples (156 pairs that would only ever be zero).
        """
        r = registry if registry is not None else CollectorRegistry()
        m = cls(registry=r, **_outcomes(r), **_latencies(r), **_state(r), **_health(r), **_shadow(r))
        _initialise_labels(m)
        if shadow:
            _initialise_shadow_labels(m)
        Info("eligibility_build", "Version of the filter and of the policy in force", registry=r).info(
            {"version": __version__, "policy_version": policy_version}
        )
        add_standard_collectors(r)
        return m

    def count_batch(self, result: BatchResult) -> None:
        """Count a performed batch's decisions, dead letters, retractions, skips, releases and outputs."""
        for reason, n in result.decisions.items():
            self.decisions.labels(reason=reason.value, eligible=_eligible(reason)).inc(n)
        for dl, n in result.dead_letters.items():
            self.dead_letters.labels(reason=dl.value).inc(n)
        for cause, n in result.retractions.items():
            self.retractions.labels(cause=cause.value).inc(n)
        for skip, n in result.skips.items():
            self.skips.labels(reason=skip.value).inc(n)
        if result.released:
            self.released.inc(result.released)
        for topic, n in Tally(p.topic for p in result.records()).items():
            self.records_out.labels(output=topic.value).inc(n)
        for (in_force, shadow), n in result.shadow_differences.items():
            self.shadow_differences.labels(in_force_reason=in_force.value, shadow_reason=shadow.value).inc(n)


def add_standard_collectors(registry: CollectorRegistry) -> None:
    """The process and Python series every Prometheus client exports by default, in `registry`.

    prometheus_client adds them to its global registry only; the bundle has a registry
    of its own (tests build many), so they are added here: `process_cpu_seconds_total`,
    `process_resident_memory_bytes`, open file descriptors and start time (Linux's
    /proc), `python_gc_*` and `python_info`, the series the standard process dashboards
    and alerts read.
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def _initialise_labels(m: Metrics) -> None:
    """Every label value at zero from the start: no Grafana panel starts empty and `rate()` works."""
    for reason in Reason:
        m.decisions.labels(reason=reason.value, eligible=_eligible(reason))
    for skip in SkipReason:
        m.skips.labels(reason=skip.value)
    for dl in DeadLetterReason:
        m.dead_letters.labels(reason=dl.value)
    for cause in RetractCause:
        m.retractions.labels(cause=cause.value)
    for name in Input:
        m.records_in.labels(input=name.value)
    for topic in OutputTopic:
        m.records_out.labels(output=topic.value)
    for stage in Stage:
        m.stage_seconds.labels(stage=stage.value)
    for kind in EntryKind:
        m.state_entries.labels(kind=kind.value)
    for part in MemoryPart:
        m.store_memory.labels(part=part.value)
    for origin in StoreOrigin:
        m.partitions_assigned.labels(store=origin.value)
    for cut in Cut:
        m.batches_given_up.labels(cause=cut.value)


def _initialise_shadow_labels(m: Metrics) -> None:
    """Every pair of different reasons at zero: the only pairs the shadow counts."""
    for in_force in Reason:
        for shadow in Reason:
            if shadow is not in_force:
                m.shadow_differences.labels(in_force_reason=in_force.value, shadow_reason=shadow.value)


def _outcomes(r: CollectorRegistry) -> _Outcomes:
    """What the engine decided and what went in and out."""
    return _Outcomes(
        decisions=Counter(
            "eligibility_decisions_total", "Upserts decided, by the rule's reason", ["reason", "eligible"], registry=r
        ),
        dead_letters=Counter(
            "eligibility_dead_letters_total", "Input records sent to the dead-letter topic", ["reason"], registry=r
        ),
        retractions=Counter(
            "eligibility_retractions_total", "Published items retracted, by cause", ["cause"], registry=r
        ),
        skips=Counter(
            "eligibility_skips_total",
            "Content events that changed nothing (a duplicate, a late event, or after a delete), by reason",
            ["reason"],
            registry=r,
        ),
        released=Counter(
            "eligibility_released_items_total",
            "Held items released (their copy removed) because they became ineligible for another reason",
            registry=r,
        ),
        records_in=Counter("eligibility_input_records_total", "Records consumed, by input", ["input"], registry=r),
        records_out=Counter(
            "eligibility_output_records_total", "Records acknowledged by the broker, by output", ["output"], registry=r
        ),
    )


def _latencies(r: CollectorRegistry) -> _Latencies:
    """How long batches and their stages take, and how long an input takes to reach the outputs."""
    return _Latencies(
        batch_seconds=Histogram(
            "eligibility_batch_duration_seconds",
            "From deciding one batch to its outputs acknowledged, its store written and its content marked done",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        stage_seconds=Histogram(
            "eligibility_batch_stage_seconds",
            "Time one batch spends in each stage: freshness gate, decide, store writes, produce, commit",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        broker_latency=Histogram(
            "eligibility_processing_latency_seconds",
            "From a content record's broker timestamp to the broker acknowledging its outputs",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        event_time_latency=Histogram(
            "eligibility_event_time_latency_seconds",
            "From a content event's upstream event_time to the broker acknowledging its outputs",
            buckets=EVENT_TIME_BUCKETS,
            registry=r,
        ),
        objection_propagation=Histogram(
            "eligibility_objection_propagation_seconds",
            "From an objection's append to accounts.objections to the last of its tombstones acknowledged",
            buckets=OBJECTION_BUCKETS,
            registry=r,
        ),
    )


def _state(r: CollectorRegistry) -> _State:
    """How far behind the inputs are, and what the partition stores hold."""
    return _State(
        consumer_lag=Gauge(
            "eligibility_consumer_lag_records",
            "Records of an input partition not yet processed (end offset minus position)",
            ["input", "partition"],
            registry=r,
        ),
        state_entries=Gauge(
            "eligibility_state_entries",
            "Entries in the partition stores (RocksDB estimate), by kind",
            ["kind"],
            registry=r,
        ),
        store_memory=Gauge(
            "eligibility_store_memory_bytes",
            "Memory RocksDB holds for this worker's partition stores: memtables and the shared block cache",
            ["part"],
            registry=r,
        ),
        deferred_items=Gauge(
            "eligibility_deferred_items", "Items held because the author's notice period is still running", registry=r
        ),
    )


def _shadow(r: CollectorRegistry) -> _Shadow:
    """What a shadow policy (STREAM_SHADOW_POLICY_PATH) would have decided differently."""
    return _Shadow(
        shadow_differences=Counter(
            "eligibility_shadow_differences_total",
            "Upserts the shadow policy decides with another reason than the policy in force, by the pair of reasons",
            ["in_force_reason", "shadow_reason"],
            registry=r,
        ),
    )


def _health(r: CollectorRegistry) -> _Health:
    """Whether the worker is ready, making progress, and how often it had to replay."""
    return _Health(
        ready=Gauge("eligibility_ready", "1 when partitions are assigned and state has caught up", registry=r),
        recovering=Gauge(
            "eligibility_recovering", "1 while assigned partitions' state is being rebuilt or caught up", registry=r
        ),
        rebalances=Counter("eligibility_rebalances_total", "Partition assignments received", registry=r),
        partitions_assigned=Counter(
            "eligibility_partitions_assigned_total",
            "Partitions assigned, by where their store came from: kept open, resumed from disk, rebuilt from topics",
            ["store"],
            registry=r,
        ),
        last_batch=Gauge(
            "eligibility_last_batch_timestamp_seconds",
            "Unix time of the last commit of content offsets (at most STREAM_COMMIT_INTERVAL_MS after a batch)",
            registry=r,
        ),
        delivery_failures=Counter(
            "eligibility_delivery_failures_total",
            "Batches that failed (e.g. outputs not acknowledged) and were replayed",
            registry=r,
        ),
        gate_listings=Counter(
            "eligibility_gate_listings_total",
            "Batches whose freshness gate asked the broker for end offsets (the fetch responses did not prove it)",
            registry=r,
        ),
        batch_replays=Counter(
            "eligibility_batch_replays_total",
            "Failed attempts at a batch, each followed by a replay from the last commit",
            registry=r,
        ),
        batches_given_up=Counter(
            "eligibility_batches_given_up_total",
            "Batches given up uncommitted because a rebalance or a stop began (replayed by the partitions' next owner)",
            ["cause"],
            registry=r,
        ),
        stuck=Gauge(
            "eligibility_worker_stuck",
            "1 while the same batch has failed STUCK_AFTER_FAILURES times in a row (the worker is then not ready)",
            registry=r,
        ),
        loop_step=Gauge(
            "eligibility_loop_step_seconds",
            "Seconds the worker's loop has spent in its current step (0 while it waits idle for records); "
            "at 120 it is stalled: /ready answers 503",
            registry=r,
        ),
        dev_pseudonym_key=Gauge(
            "eligibility_dev_pseudonym_key",
            "1 when pseudonyms are made with the public development key (STREAM_DEV_MODE=1 and no key set)",
            registry=r,
        ),
    )


class HistogramCells:
    """The per-bucket counters and the sum inside a prometheus_client Histogram: the one place they are read.

    Why: `observe_many` adds a whole batch's observations with one increment per
    bucket; prometheus_client has no public call for that (`Histogram.observe` takes
    one value, ~8 µs each, and `collect()` only reads). These attributes have been
    unchanged since prometheus_client 0.4; `tests/unit/test_metrics.py` fails if a
    release renames them or changes what they hold.
    """

    def __init__(self, histogram: Histogram) -> None:
        self.bounds: Sequence[float] = histogram._upper_bounds  # noqa: SLF001 - see the class docstring
        self.buckets: Sequence[ValueClass] = histogram._buckets  # noqa: SLF001
        self.sum: ValueClass = histogram._sum  # noqa: SLF001


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """Observe every value, with one increment per bucket instead of one call per value.

    The hot path observes two latencies per event; `Histogram.observe` costs ~8 µs
    each, a bisect a fraction of that. `tests/unit/test_metrics.py` checks it against `observe`.
    """
    cells = HistogramCells(histogram)
    bounds = cells.bounds
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value
        total += value
    for i, n in enumerate(counts):
        if n:
            cells.buckets[i].inc(n)
    cells.sum.inc(total)


def _eligible(reason: Reason) -> str:
    return "true" if reason is Reason.ELIGIBLE else "false"
