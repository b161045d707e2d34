"""Grafana dashboards as code: `python dashboards/build.py` writes the committed JSON.

Owns the two dashboards the stack provisions (dashboards/provisioning/): the SREs'
overview and the compliance view. Every query reads only series that
stream/runtime/metrics.py defines, through the Prometheus data source provisioned with uid
`prometheus`; tests/unit/test_dashboards.py checks both, and that the committed
JSON is exactly what this file generates. tests/integration/test_prometheus.py
runs every query against a real Prometheus scraping a real worker.

Edit this file, never the JSON: run `python dashboards/build.py` and commit both.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
    TimePicker,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    DataSourceRef,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    Panel,
    Threshold,
    ThresholdsMode,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent

# Every panel queries the data source the `datasource` variable picks; its default is
# the one dashboards/provisioning/datasources/prometheus.yml provisions.
PROVISIONED_DATASOURCE = "prometheus"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every worker query is scoped by the namespace, job and instance variables, and every
# verifier query by the namespace and verifier-job variables. `namespace=~".*"` (All)
# also matches series without the label (a Prometheus outside Kubernetes); a job's All
# is the alternation of the jobs found, so `up` is never read from unrelated jobs.
SCOPE = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'
VERIFIER_SCOPE = 'namespace=~"$namespace", job=~"$verifier_job"'
# The canary objectors' series (`python -m stream canary`, port 6068), by the canary-job variable.
CANARY_SCOPE = 'namespace=~"$namespace", job=~"$canary_job"'
CANARY_SERIES = "eligibility_canary_last_check_timestamp_seconds"
# The series each variable takes its values from: every worker exports the build info,
# every verifier its last-run timestamp.
WORKER_SERIES = "eligibility_build_info"
VERIFIER_SERIES = "eligibility_verifier_last_run_timestamp_seconds"

# Objectives (README, stream/runtime/metrics.py): p99 of processing latency <= 50 ms; 99% of
# objections propagated to the feed within 250 ms. The latter's histogram has a bucket
# boundary exactly at 0.25 s, so "share within the objective" is exact, not interpolated.
PROCESSING_OBJECTIVE_S = 0.05
OBJECTION_OBJECTIVE_S = 0.25
OBJECTION_TARGET = 0.99
# deploy/prometheus/rules.yml pages at these burn rates (1h and 6h windows).
FAST_BURN = 14.4
SLOW_BURN = 6.0
NO_PROGRESS_S = 120

RATE = "$__rate_interval"
# Label matchers the queries add to the scope.
ON_CONTENT = 'input="content"'
ON_OBJECTIONS = 'input="objections"'
ELIGIBLE = 'eligible="true"'
RETRACTED = 'outcome="retracted"'
# The verifier's default interval (`python -m stream verify`, 300 s); it is stale at
# three intervals (EligibilityVerifierStale, deploy/prometheus/rules.yml).
VERIFIER_STALE_S = 900


# -- query and panel helpers --------------------------------------------------------------


def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    return q


def sel(metric: str, *matchers: str) -> str:
    """`metric` selected within the dashboard's namespace, job and instance variables (and `matchers`)."""
    return metric + "{" + ", ".join((SCOPE, *matchers)) + "}"


def verifier_sel(metric: str, *matchers: str) -> str:
    """A verifier series selected within the namespace and verifier-job variables (and `matchers`)."""
    return metric + "{" + ", ".join((VERIFIER_SCOPE, *matchers)) + "}"


def canary_sel(metric: str, *matchers: str) -> str:
    """A canary series selected within the namespace and canary-job variables (and `matchers`)."""
    return metric + "{" + ", ".join((CANARY_SCOPE, *matchers)) + "}"


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({sel(histogram + '_bucket')}[{RATE}])))"


ELIGIBLE_SHARE = (
    f"sum(rate({sel('eligibility_decisions_total', ELIGIBLE)}[{RATE}]))"
    f" / sum(rate({sel('eligibility_decisions_total')}[{RATE}]))"
)


def quantiles(histogram: str) -> list[Dataquery]:
    return [
        query(quantile(0.5, histogram), "p50", ref="A"),
        query(quantile(0.99, histogram), "p99", ref="B"),
    ]


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=v, color=c) for v, c in steps])


def objective_line(limit: float) -> ThresholdsConfig:
    return thresholds((None, "green"), (limit, "red"))


class Ids:
    """Panel ids, unique within a dashboard and stable across builds (Grafana links use them)."""

    def __init__(self) -> None:
        self._next: Iterator[int] = itertools.count(1)

    def __call__(self) -> int:
        return next(self._next)


def series_panel(
    ids: Ids,
    title: str,
    description: str,
    unit: str,
    targets: list[Dataquery],
    *,
    span: int = 12,
    height: int = 8,
    objective: float | ThresholdsConfig | None = None,
    stacked: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(span)
        .height(height)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
    )
    for target in targets:
        panel = panel.with_target(target)
    if objective is not None:
        limits = objective if isinstance(objective, ThresholdsConfig) else objective_line(objective)
        panel = panel.thresholds(limits).thresholds_style(
            GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)
        )
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL).group("A"))
    return panel


def stat_panel(
    ids: Ids,
    title: str,
    description: str,
    unit: str,
    target: Dataquery,
    *,
    steps: ThresholdsConfig | None = None,
    span: int = 4,
    height: int = 4,
    text_mode: BigValueTextMode = BigValueTextMode.AUTO,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .with_target(target)
        .color_mode(BigValueColorMode.BACKGROUND if steps is not None else BigValueColorMode.NONE)
        .graph_mode(BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if steps is not None:
        panel = panel.thresholds(steps)
    return panel


def bars_panel(
    ids: Ids, title: str, description: str, target: Dataquery, *, span: int = 8, height: int = 10
) -> bargauge.Panel:
    return (
        bargauge.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit("short")
        .decimals(0)
        .min(0)
        .span(span)
        .height(height)
        .with_target(target)
        .display_mode(BarGaugeDisplayMode.BASIC)
        .orientation(VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def add(dashboard: Dashboard, *panels: Builder[Panel]) -> Dashboard:
    for panel in panels:
        dashboard = dashboard.with_panel(panel)
    return dashboard


def variable(
    name: str, label: str, series: str, description: str, *, of: str | None = None, all_value: str | None
) -> QueryVariable:
    """A multi-value variable of the values of label `of` (default: `name`) on `series`, All selected."""
    definition = f"label_values({series}, {of or name})"
    v = (
        QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(definition)
        .definition(definition)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )
    return v.all_value(all_value) if all_value is not None else v


def variables(*, verifier: bool) -> list[Builder[VariableModel]]:
    """datasource, namespace, job and instance (and the verifier's job): every query of the dashboard uses them."""
    found: list[Builder[VariableModel]] = [
        DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(VariableOption(selected=True, text=PROVISIONED_DATASOURCE, value=PROVISIONED_DATASOURCE)),
        variable(
            "namespace",
            "Namespace",
            WORKER_SERIES,
            "Kubernetes namespace of the workers (All also matches series without the label).",
            all_value=".*",
        ),
        variable(
            "job",
            "Job",
            f'{WORKER_SERIES}{{namespace=~"$namespace"}}',
            "Scrape job of the workers (eligibility-filter in deploy/prometheus/prometheus.yml).",
            all_value=None,  # All: the jobs found, never `.*` (up{} of unrelated jobs)
        ),
        variable(
            "instance",
            "Instance",
            f'{WORKER_SERIES}{{namespace=~"$namespace", job=~"$job"}}',
            "Worker processes.",
            all_value=".*",
        ),
    ]
    if verifier:
        found.append(
            variable(
                "verifier_job",
                "Verifier job",
                f'{VERIFIER_SERIES}{{namespace=~"$namespace"}}',
                "Scrape job of the compliance verifier (python -m stream verify, port 6067).",
                of="job",
                all_value=None,
            )
        )
    return found


def base(uid: str, title: str, description: str, time_from: str, *, verifier: bool = False) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["eligibility-filter", "generated"])
        .readonly()
        .refresh("30s")
        .time(time_from, "now")
        .timezone("utc")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .timepicker(TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m"]))
        .variables(variables(verifier=verifier))
    )


# -- the SREs' overview -------------------------------------------------------------------


def overview() -> Dashboard:
    ids = Ids()
    d = base(
        "eligibility-overview",
        "Eligibility filter: overview",
        "What SREs watch: throughput, decisions, latency against the objectives, backlog, "
        "dead letters, retractions and worker health. Generated by dashboards/build.py.",
        "now-1h",
    )

    d = d.with_row(Row("At a glance").id(ids()))
    d = add(
        d,
        stat_panel(
            ids,
            "Workers up",
            "Worker processes Prometheus can scrape (job eligibility-filter). 0 pages: EligibilityWorkerDown.",
            "none",
            query(f"sum({sel('up')})", instant=True),
            steps=thresholds((None, "red"), (1, "green")),
        ),
        stat_panel(
            ids,
            "Workers ready",
            "Workers whose partitions are assigned and whose state has caught up (/ready answers 200). "
            "Fewer than 'Workers up' for 5 minutes: EligibilityNotReady.",
            "none",
            query(f"sum({sel('eligibility_ready')})", instant=True),
            steps=thresholds((None, "red"), (1, "green")),
        ),
        stat_panel(
            ids,
            "Content lag",
            "Content records appended but not yet decided, over all partitions.",
            "short",
            query(f"sum({sel('eligibility_consumer_lag_records', ON_CONTENT)})", instant=True),
            steps=thresholds((None, "green"), (1000, "orange"), (10000, "red")),
        ),
        stat_panel(
            ids,
            "Eligible share",
            "Share of decided upserts that went to the training feed.",
            "percentunit",
            query(ELIGIBLE_SHARE, instant=True),
        ),
        stat_panel(
            ids,
            "Processing p99",
            "From a content record's broker timestamp to its outputs acknowledged. Objective: p99 <= 50 ms.",
            "s",
            query(quantile(0.99, "eligibility_processing_latency_seconds"), instant=True),
            steps=objective_line(PROCESSING_OBJECTIVE_S),
        ),
        stat_panel(
            ids,
            "Objection propagation p99",
            "From an objection's append to the last of its tombstones on the feed. Objective: p99 <= 250 ms.",
            "s",
            query(quantile(0.99, "eligibility_objection_propagation_seconds"), instant=True),
            steps=objective_line(OBJECTION_OBJECTIVE_S),
        ),
    )

    d = d.with_row(Row("Throughput and decisions").id(ids()))
    d = add(
        d,
        series_panel(
            ids,
            "Throughput in",
            "Records consumed per second from content.events, accounts.profiles and accounts.objections.",
            "rps",
            [query(f"sum by (input) (rate({sel('eligibility_input_records_total')}[{RATE}]))", "{{input}}")],
        ),
        series_panel(
            ids,
            "Throughput out",
            "Records per second acknowledged by the broker on training.feed, eligibility.decisions and the DLQ.",
            "rps",
            [query(f"sum by (output) (rate({sel('eligibility_output_records_total')}[{RATE}]))", "{{output}}")],
        ),
        series_panel(
            ids,
            "Decisions by reason",
            "Upserts decided per second, by the first rule that applied (README: The rule). "
            "A sudden shift between reasons usually means a policy or upstream change.",
            "rps",
            [query(f"sum by (reason) (rate({sel('eligibility_decisions_total')}[{RATE}]))", "{{reason}}")],
            span=16,
            stacked=True,
        ),
        series_panel(
            ids,
            "Eligible share",
            "Share of decided upserts that went to the training feed.",
            "percentunit",
            [query(ELIGIBLE_SHARE, "eligible")],
            span=8,
        ),
    )

    d = d.with_row(Row("Latency against the objectives").id(ids()))
    d = add(
        d,
        series_panel(
            ids,
            "Latency p50/p99",
            "Processing latency: p50 and p99 of the time from a content record's broker timestamp to the "
            "broker acknowledging its outputs. Dashed line: the 50 ms objective.",
            "s",
            quantiles("eligibility_processing_latency_seconds"),
            objective=PROCESSING_OBJECTIVE_S,
        ),
        series_panel(
            ids,
            "Objection propagation vs objective",
            "p50 and p99 of the product's headline service level. Dashed line: the 250 ms objective; "
            "the burn-rate alerts are EligibilityObjectionBudgetFastBurn and ...SlowBurn.",
            "s",
            quantiles("eligibility_objection_propagation_seconds"),
            objective=OBJECTION_OBJECTIVE_S,
        ),
        series_panel(
            ids,
            "Latency from event time",
            "Includes the platform's own delay before the event reached Kafka: compare with the processing "
            "latency to tell an upstream delay from ours.",
            "s",
            quantiles("eligibility_event_time_latency_seconds"),
        ),
        series_panel(
            ids,
            "Batch duration",
            "Time to process one fetched batch. Rising with flat input means slower state or broker.",
            "s",
            quantiles("eligibility_batch_duration_seconds"),
        ),
    )

    d = d.with_row(Row("Backlog").id(ids()))
    d = add(
        d,
        series_panel(
            ids,
            "Consumer lag",
            "End offset minus position for each input partition. Growing for 10 minutes above 10000 records: "
            "EligibilityLagGrowing. Objection lag delays objections: watch it first.",
            "short",
            [
                query(
                    f"sum by (input, partition) ({sel('eligibility_consumer_lag_records')})",
                    "{{input}} p{{partition}}",
                )
            ],
            span=16,
        ),
        series_panel(
            ids,
            "Deferred items",
            "Items refused only because the author's notice period is running; decided again when it ends.",
            "short",
            [query(f"sum({sel('eligibility_deferred_items')})", "held")],
            span=8,
        ),
    )

    d = d.with_row(Row("Dead letters and retractions").id(ids()))
    d = add(
        d,
        series_panel(
            ids,
            "Dead letters by reason",
            "Input records sent to content.events.dlq (with their bytes, replayable). Above 1% of the input "
            "for 10 minutes: EligibilityDeadLetterSpike.",
            "rps",
            [query(f"sum by (reason) (rate({sel('eligibility_dead_letters_total')}[{RATE}]))", "{{reason}}")],
        ),
        series_panel(
            ids,
            "Retractions by cause",
            "Published items withdrawn from the feed (tombstone + retract record). The freshness gate keeps "
            "these rare except for objections and deletions made after publication.",
            "rps",
            [query(f"sum by (cause) (rate({sel('eligibility_retractions_total')}[{RATE}]))", "{{cause}}")],
        ),
    )

    d = d.with_row(Row("Worker health").id(ids()))
    d = add(
        d,
        series_panel(
            ids,
            "Up (scrape succeeded)",
            "1 while Prometheus scrapes the worker. 0 for 2 minutes: EligibilityWorkerDown.",
            "none",
            [query(sel("up"), "{{instance}}")],
            span=8,
        ),
        series_panel(
            ids,
            "Ready, recovering, stalled, stuck",
            "ready: partitions assigned and state caught up. recovering: state being rebuilt or caught up "
            "(after a restart, a wiped data directory or a rebalance). Not ready for 5 minutes: "
            "EligibilityNotReady. stuck: the same batch failed 3 times in a row and is being replayed "
            "(EligibilityWorkerStuck); replays: failed attempts in the last 5 minutes. stalled: the "
            "loop has spent 2 minutes in one step (a wedge, or the broker out of reach): not ready; "
            "3 minutes: EligibilityWorkerStalled.",
            "none",
            [
                query(sel("eligibility_ready"), "ready {{instance}}", ref="A"),
                query(sel("eligibility_recovering"), "recovering {{instance}}", ref="B"),
                query(sel("eligibility_worker_stuck"), "stuck {{instance}}", ref="C"),
                query(f"increase({sel('eligibility_batch_replays_total')}[5m])", "replays {{instance}}", ref="D"),
                query(f"{sel('eligibility_loop_step_seconds')} >= bool 120", "stalled {{instance}}", ref="E"),
            ],
            span=8,
        ),
        series_panel(
            ids,
            "Time since last batch",
            "Seconds since the worker last committed a batch. Above 120 s while there is lag: "
            "EligibilityNoProgress. No data until the first batch.",
            "s",
            [
                query(
                    f"time() - max by (instance) ({sel('eligibility_last_batch_timestamp_seconds')} > 0)",
                    "{{instance}}",
                )
            ],
            span=8,
            objective=NO_PROGRESS_S,
        ),
        series_panel(
            ids,
            "Rebalances",
            "Partition assignments received in the last 5 minutes. A steady stream means workers keep "
            "joining and leaving the group (crash loop, slow batches past max.poll.interval). "
            "Partitions by store: kept (held on, nothing to restore), resumed (a store on disk brought up "
            "to date), rebuilt (read from the start of the topics: the slow one). Batches given up: "
            "batches abandoned uncommitted because a rebalance or a stop began, replayed by the "
            "partitions' next owner (work done twice, nothing lost).",
            "short",
            [
                query(
                    f"sum by (instance) (increase({sel('eligibility_rebalances_total')}[5m]))",
                    "assignments {{instance}}",
                    ref="A",
                ),
                query(
                    f"sum by (store) (increase({sel('eligibility_partitions_assigned_total')}[5m]))",
                    "partitions {{store}}",
                    ref="B",
                ),
                query(
                    f"sum by (cause) (increase({sel('eligibility_batches_given_up_total')}[5m]))",
                    "given up ({{cause}})",
                    ref="C",
                ),
            ],
            span=8,
        ),
        series_panel(
            ids,
            "Delivery failures",
            "Batches in the last 5 minutes whose outputs were not acknowledged and were replayed "
            "(duplicates possible, no loss). "
            "Repeated failures: EligibilityDeliveryFailures.",
            "short",
            [query(f"sum by (instance) (increase({sel('eligibility_delivery_failures_total')}[5m]))", "{{instance}}")],
            span=8,
        ),
        series_panel(
            ids,
            "State size",
            "Entries in the partition stores (RocksDB estimate): profiles, objections, published items, "
            "deferred items.",
            "short",
            [query(f"sum by (kind) ({sel('eligibility_state_entries')})", "{{kind}}")],
            span=8,
        ),
        series_panel(
            ids,
            "Store memory",
            "Memory RocksDB holds per worker: memtables and cached blocks, together within one budget "
            "(96 MiB by default, of which at most 56 MiB memtables; STREAM_STORE_MEMORY_MIB, stream/runtime/store.py). "
            "Flat once the budget is reached.",
            "bytes",
            [query(f"sum by (instance, part) ({sel('eligibility_store_memory_bytes')})", "{{instance}} {{part}}")],
            span=8,
        ),
        series_panel(
            ids,
            "Skipped events",
            "Content events in the last 5 minutes that changed nothing (order per item): `superseded`, a "
            "duplicate or an event older than the item's latest; `deleted`, an event after the item's "
            "delete. Upstream delivers at least once, so a trickle is normal; a surge means a replay upstream.",
            "short",
            [query(f"sum by (reason) (increase({sel('eligibility_skips_total')}[5m]))", "{{reason}}")],
            span=8,
        ),
        series_panel(
            ids,
            "Released held items",
            "Held items (notice period running) released in the last 5 minutes: their author objected, "
            "was deleted or changed so the item is refused for another reason, and its stored copy is gone.",
            "short",
            [query(f"sum by (instance) (increase({sel('eligibility_released_items_total')}[5m]))", "{{instance}}")],
            span=8,
        ),
        series_panel(
            ids,
            "Freshness gate listings",
            "Batches in the last 5 minutes whose freshness gate had to ask the broker for end offsets "
            "(a ListOffsets round trip on the batch's path) because the fetch responses did not prove the "
            "state current: a state partition left out of the content's fetch, or led by another broker "
            "than its content partition. Near 0 with one broker; with several it rises with the partitions "
            "whose leaders differ.",
            "short",
            [query(f"sum by (instance) (increase({sel('eligibility_gate_listings_total')}[5m]))", "{{instance}}")],
            span=8,
        ),
        series_panel(
            ids,
            "Process CPU",
            "CPU seconds per second each worker process spends (1 = one core): the standard process_cpu_seconds_total.",
            "short",
            [query(f"rate({sel('process_cpu_seconds_total')}[{RATE}])", "{{instance}}")],
            span=8,
        ),
        series_panel(
            ids,
            "Process memory",
            "Resident memory of each worker process (process_resident_memory_bytes): the store budget above, "
            "the fetched batches and Python's heap. Growing without bound: a leak to report.",
            "bytes",
            [query(sel("process_resident_memory_bytes"), "{{instance}}")],
            span=8,
        ),
    )
    return d.with_panel(
        stat_panel(
            ids,
            "Build and policy in force",
            "Version of the filter and of the policy each worker runs. Two policy versions at once are "
            "expected only during a rolling deploy.",
            "none",
            query(sel("eligibility_build_info"), "{{instance}}: {{version}}, policy {{policy_version}}", instant=True),
            span=24,
            height=3,
            text_mode=BigValueTextMode.NAME,
        )
    )


# -- the compliance view ------------------------------------------------------------------


def compliance() -> Dashboard:
    ids = Ids()
    within = sel("eligibility_objection_propagation_seconds_bucket", 'le="0.25"')
    total = sel("eligibility_objection_propagation_seconds_count")

    def slow_share(window: str) -> str:
        return f"(1 - sum(rate({within}[{window}])) / sum(rate({total}[{window}])))"

    d = base(
        "eligibility-compliance",
        "Eligibility filter: compliance",
        "For privacy and compliance staff: are objections honoured within the objective, does the independent "
        "verifier find the feed compliant, what was decided and retracted, under which policy. "
        "Generated by dashboards/build.py.",
        "now-24h",
        verifier=True,
    )
    d = d.with_row(Row("Objections honoured").id(ids()))
    d = add(
        d,
        stat_panel(
            ids,
            "Objections propagated within 250 ms",
            "Share of objections, in the selected range, whose tombstones all reached the feed within 250 ms. "
            "Objective: 99%.",
            "percentunit",
            query(f"sum(increase({within}[$__range])) / sum(increase({total}[$__range]))", instant=True),
            steps=thresholds((None, "red"), (OBJECTION_TARGET, "green")),
            span=6,
        ),
        stat_panel(
            ids,
            "Objections propagated",
            "Objections whose retractions were completed in the selected range.",
            "short",
            query(f"sum(increase({total}[$__range]))", instant=True),
            span=6,
        ),
        stat_panel(
            ids,
            "Objection records consumed",
            "Records read from accounts.objections in the selected range (objections and withdrawals).",
            "short",
            query(
                f"sum(increase({sel('eligibility_input_records_total', ON_OBJECTIONS)}[$__range]))",
                instant=True,
            ),
            span=6,
        ),
        stat_panel(
            ids,
            "Objections not yet applied",
            "Records on accounts.objections the filter has not read yet. Above 0 for long means objections "
            "wait: the SREs are paged by EligibilityLagGrowing / EligibilityNoProgress.",
            "short",
            query(f"sum({sel('eligibility_consumer_lag_records', ON_OBJECTIONS)})", instant=True),
            steps=thresholds((None, "green"), (1, "orange"), (1000, "red")),
            span=6,
        ),
        series_panel(
            ids,
            "Objection propagation p50 / p99",
            "Dashed line: the 250 ms objective.",
            "s",
            quantiles("eligibility_objection_propagation_seconds"),
            objective=OBJECTION_OBJECTIVE_S,
        ),
        series_panel(
            ids,
            "Objection objective: error-budget burn rate",
            "How fast the 1% budget of objections slower than 250 ms is being spent (1 = exactly on budget "
            "over 30 days). Pages at 14.4 over 1 h and 6 over 6 h (deploy/prometheus/rules.yml).",
            "none",
            [
                query(f"{slow_share('1h')} / {1 - OBJECTION_TARGET:g}", "1h window", ref="A"),
                query(f"{slow_share('6h')} / {1 - OBJECTION_TARGET:g}", "6h window", ref="B"),
            ],
            objective=thresholds((None, "green"), (SLOW_BURN, "orange"), (FAST_BURN, "red")),
        ),
    )

    d = d.with_row(Row("Independent verifier").id(ids()))
    d = add(
        d,
        stat_panel(
            ids,
            "Verifier: violations",
            "Feed items the verifier's own reading of the rule refuses, in its last run (python -m stream verify). "
            "Above 0 pages at once: EligibilityVerifierViolations (docs/runbooks.md).",
            "short",
            query(f"sum({verifier_sel('eligibility_verifier_violations')})", instant=True),
            steps=thresholds((None, "green"), (1, "red")),
            span=6,
        ),
        stat_panel(
            ids,
            "Verifier: losses",
            "Eligible items missing from the feed in the verifier's last run (excused ones, whose author changed "
            "since, not counted). Above 0 for 10 minutes: EligibilityVerifierLosses.",
            "short",
            query(f"sum({verifier_sel('eligibility_verifier_losses')})", instant=True),
            steps=thresholds((None, "green"), (1, "orange")),
            span=6,
        ),
        stat_panel(
            ids,
            "Verifier: items checked",
            "Live items on the compacted feed that the last run judged.",
            "short",
            query(f"sum({verifier_sel('eligibility_verifier_feed_items')})", instant=True),
            span=6,
        ),
        stat_panel(
            ids,
            "Verifier: time since last run",
            "Since the verifier's last successful run. Over 15 minutes (three default intervals): "
            "EligibilityVerifierStale. No data: no verifier is scraped (EligibilityVerifierAbsent).",
            "s",
            query(f"time() - max({verifier_sel('eligibility_verifier_last_run_timestamp_seconds')} > 0)", instant=True),
            steps=thresholds((None, "green"), (VERIFIER_STALE_S, "red")),
            span=6,
        ),
        series_panel(
            ids,
            "Verifier findings",
            "What each run found: violations by reason, losses, and excused items (missing because their author "
            "objected, was deleted or changed after the upsert: rightly retracted). The report names content ids.",
            "short",
            [
                query(f"sum by (reason) ({verifier_sel('eligibility_verifier_violations')})", "violation: {{reason}}"),
                query(f"sum({verifier_sel('eligibility_verifier_losses')})", "losses", ref="B"),
                query(f"sum({verifier_sel('eligibility_verifier_excused')})", "excused", ref="C"),
            ],
        ),
    )

    d = d.with_row(Row("What was decided, in the selected range").id(ids()))
    d = add(
        d,
        bars_panel(
            ids,
            "Decisions by reason",
            "Upserts decided, by the rule's first applicable reason. Every decision is in eligibility.decisions.",
            query(
                f"sum by (reason) (increase({sel('eligibility_decisions_total')}[$__range]))",
                "{{reason}}",
                instant=True,
            ),
        ),
        bars_panel(
            ids,
            "Retractions by cause",
            "Items withdrawn from the training feed (a tombstone and a retract record each).",
            query(
                f"sum by (cause) (increase({sel('eligibility_retractions_total')}[$__range]))",
                "{{cause}}",
                instant=True,
            ),
        ),
        bars_panel(
            ids,
            "Dead letters by reason",
            "Input records that could not be decided. None is lost: each is on content.events.dlq with its "
            "original bytes, for replay.",
            query(
                f"sum by (reason) (increase({sel('eligibility_dead_letters_total')}[$__range]))",
                "{{reason}}",
                instant=True,
            ),
        ),
    )
    d = d.with_panel(
        stat_panel(
            ids,
            "Policy in force",
            "Policy version each worker decides with; every feed record and decision carries it.",
            "none",
            query(sel("eligibility_build_info"), "{{instance}}: policy {{policy_version}}", instant=True),
            span=24,
            height=3,
            text_mode=BigValueTextMode.NAME,
        )
    )
    return shadow(canaries(trainers(d, ids), ids), ids)


def trainers(d: Dashboard, ids: Ids) -> Dashboard:
    """The compliance view's last row: do the trainers apply the retractions (training.retractions) in time?"""
    d = d.with_row(Row("Do trainers unlearn in time?").id(ids()))
    oldest = verifier_sel("eligibility_trainer_oldest_unacknowledged_retraction_seconds")
    return add(
        d,
        series_panel(
            ids,
            "Trainers: oldest unapplied retraction",
            "Per trainer consumer group (STREAM_TRAINER_GROUPS), the age of the oldest retraction on "
            "training.retractions it has not acknowledged (0: none), against the deadline STREAM_TRAINER_ACK_HOURS. "
            "Above it for 10 minutes: EligibilityTrainerRetractionsUnapplied (docs/runbooks.md).",
            "s",
            [
                query(f"max by (group) ({oldest})", "{{group}}"),
                query(
                    f"max({verifier_sel('eligibility_trainer_acknowledgement_deadline_seconds')})",
                    "deadline",
                    ref="B",
                ),
            ],
        ),
        series_panel(
            ids,
            "Trainers: unapplied retractions",
            "Per trainer consumer group, the retractions on training.retractions past its committed offset: "
            "items it may still train on although they left the feed (docs/trainers.md).",
            "short",
            [
                query(
                    f"max by (group) ({verifier_sel('eligibility_trainer_unacknowledged_retractions')})",
                    "{{group}}",
                )
            ],
        ),
    )


def shadow(d: Dashboard, ids: Ids) -> Dashboard:
    """The compliance view's rollout row: what a shadow policy (STREAM_SHADOW_POLICY_PATH) would decide differently."""
    d = d.with_row(Row("Policy rollout: shadow differences").id(ids()))
    differences = sel("eligibility_shadow_differences_total")
    decisions = sel("eligibility_decisions_total")
    return add(
        d,
        stat_panel(
            ids,
            "Shadow: share of decisions that would change",
            "In the selected range, the upserts a shadow policy decides with another reason than the policy in "
            "force, as a share of all decisions. Empty unless workers run a shadow (docs/policy-rollout.md).",
            "percentunit",
            query(
                f"sum(increase({differences}[$__range])) / sum(increase({decisions}[$__range]))",
                instant=True,
            ),
            span=6,
        ),
        series_panel(
            ids,
            "Shadow policy differences",
            "Per pair of reasons (in force -> shadow), the upserts the shadow policy would decide differently; "
            "never published. Each pair must follow from the change being rolled out (docs/policy-rollout.md); "
            "examples are on eligibility.shadow.",
            "short",
            [
                query(
                    f"sum by (in_force_reason, shadow_reason) (increase({differences}[{RATE}]))",
                    "{{in_force_reason}} -> {{shadow_reason}}",
                )
            ],
            span=18,
        ),
    )


def canaries(d: Dashboard, ids: Ids) -> Dashboard:
    """The compliance view's canary row: do synthetic objectors stay off the feed, how fast are they retracted?"""
    d = d.with_variable(
        variable(
            "canary_job",
            "Canary job",
            f'{CANARY_SERIES}{{namespace=~"$namespace"}}',
            "Scrape job of the canary objectors (python -m stream canary, port 6068).",
            of="job",
            all_value=None,
        )
    )
    d = d.with_row(Row("Canary objectors").id(ids()))
    failures = canary_sel("eligibility_canary_failures_total")
    propagation = canary_sel("eligibility_canary_propagation_seconds_bucket")
    return add(
        d,
        stat_panel(
            ids,
            "Canary failures",
            "In the selected range: items of synthetic objectors found on the feed, and probe objections not "
            "retracted within the canary's deadline. Above 0 pages: EligibilityCanaryFailures (docs/runbooks.md).",
            "short",
            query(f"sum(increase({failures}[$__range]))", instant=True),
            steps=thresholds((None, "green"), (1, "red")),
            span=6,
        ),
        stat_panel(
            ids,
            "Canary probes retracted",
            "Probe cycles in the selected range whose item was published, then retracted after the objection "
            'and timed (README, "Canary objectors").',
            "short",
            query(
                f"sum(increase({canary_sel('eligibility_canary_probes_total', RETRACTED)}[$__range]))",
                instant=True,
            ),
            span=6,
        ),
        series_panel(
            ids,
            "Canary failures and probes",
            "Per kind, canary failures; per outcome, probe cycles (not_published: the probe's item never reached "
            "the feed, so nothing was timed: the filter is down or far behind).",
            "short",
            [
                query(f"sum by (kind) (increase({failures}[{RATE}]))", "failure: {{kind}}"),
                query(
                    f"sum by (outcome) (increase({canary_sel('eligibility_canary_probes_total')}[{RATE}]))",
                    "probe: {{outcome}}",
                    ref="B",
                ),
            ],
            span=12,
        ),
        series_panel(
            ids,
            "Canary propagation p50 / p99",
            "From a probe's objection sent to its item's tombstone and retraction record read back, measured by "
            "the canary itself (an upper bound of the worker's own figure). Dashed line: the 250 ms objective.",
            "s",
            [
                query(f"histogram_quantile(0.5, sum by (le) (rate({propagation}[{RATE}])))", "p50", ref="A"),
                query(f"histogram_quantile(0.99, sum by (le) (rate({propagation}[{RATE}])))", "p99", ref="B"),
            ],
            objective=OBJECTION_OBJECTIVE_S,
            span=12,
        ),
    )


DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "eligibility-overview.json": overview,
    "eligibility-compliance.json": compliance,
}


def render(dashboard: Dashboard) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard.build()) + "\n"


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in DASHBOARDS.items():
        path = out_dir / name
        path.write_text(render(build()), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the JSON [dashboards/]")
    args = parser.parse_args(argv)
    for path in write(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
