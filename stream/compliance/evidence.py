"""The evidence report: `python -m stream evidence --since DATE --out FILE.html`.

For a period, what the filter did and whether it kept its promises, as one
self-contained HTML file a privacy officer can hand over: the policy versions in
force, decisions by reason, retractions of the feed by cause, dead letters, the
objection propagation percentiles against the objective, the verifier's result and
the canaries' (from Prometheus when one is given), each figure with the command
that draws it again.

Where the numbers come from, and nothing else is read:
- Kafka (through `stream.connection.client_options`, so the security settings of
  every other command): `eligibility.decisions`, `training.retractions`,
  `content.events.dlq` and `accounts.objections`, each from the first record at or
  after `--since` (`offsets_for_times`) to its end offset taken at the start. A record
  belongs to the period by its Kafka timestamp (the filter's producers leave it to the
  client: the moment the record was sent);
- the verifier's result, handed in by the caller (the CLI runs the verifier
  in-process: this package imports nothing of the filter or the verifier);
- the Prometheus HTTP API when `--prometheus URL` is given: the canaries' series,
  the verifier's history over the period and the worker's own propagation histogram.

Privacy: the report holds counts, policy versions, reason codes and content ids
(the verifier's examples); never an account id, a pseudonym, a text or any other
payload. Account ids are read from the audit log and the objections only to pair an
objection with its retractions, in memory.

Layout: a pure part (`Period`; `Counts`, which counts record by record as they are
read, so memory grows with the objections, not with the audit log; `verdict`,
`render_html`, `figures`) and a thin shell (`read_period`, `query_prometheus`).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import html
import io
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from stream.compliance.wording import DECIDE_REASONS, RETRACT_CAUSES, SKIP_REASONS
from stream.config import Settings
from stream.connection import client_options, partition_counts, read_to_end
from stream.errors import StreamError

UTC: Final = dt.UTC
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)

# The objection objective, as deploy/prometheus/rules.yml states it for the burn-rate
# alerts: 99 % of objections propagated to the feed within 250 ms
# (tests/unit/test_evidence.py fails when the rules say otherwise).
OBJECTIVE_SECONDS: Final = 0.25
OBJECTIVE_SHARE: Final = 0.99
PROMETHEUS_TIMEOUT_SECONDS: Final = 15.0
# The figures `--figure NAME` draws alone (the HTML report holds all of them).
FIGURES: Final = ("decisions", "retractions", "dead_letters", "propagation", "timeline")

DEAD_LETTER_REASONS: Final[dict[str, str]] = {
    "malformed_json": "not JSON",
    "not_an_object": "JSON, but not an object",
    "schema_violation": "a field missing, of the wrong type or out of range",
    "key_mismatch": "the record's key is not its author",
    "out_of_range": "a date the rule cannot compute with",
    "processing_error": "its handling raised an unexpected error (isolated, failed closed)",
}


class EvidenceError(StreamError):
    """Raised when the report cannot be made: a bad date, a missing topic, Prometheus unreadable, no matplotlib."""


# --- the period ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """The half-open interval [since, until) the report covers, in UTC."""

    since: dt.datetime
    until: dt.datetime

    @property
    def since_ms(self) -> int:
        """`since` as Kafka timestamp milliseconds."""
        return _ms(self.since)

    @property
    def until_ms(self) -> int:
        """`until` as Kafka timestamp milliseconds."""
        return _ms(self.until)

    def holds(self, ms: int) -> bool:
        """Whether a record of this Kafka timestamp belongs to the period."""
        return self.since_ms <= ms < self.until_ms


def _ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def _from_ms(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=min(max(ms, 0), 253_370_764_800_000))


def parse_instant(text: str, option: str) -> dt.datetime:
    """`YYYY-MM-DD` (the start of that day, UTC) or an RFC 3339 time with its zone; EvidenceError otherwise."""
    value = text.strip()
    shape = (
        f"{option} {text!r}: expected a date (2026-12-01, midnight UTC) or a time with its zone (2026-12-01T09:30:00Z)"
    )
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise EvidenceError(shape) from None
    if moment.tzinfo is None:
        raise EvidenceError(f"{option} {text!r}: give the time zone (Z for UTC, or e.g. +01:00)")
    moment = moment.astimezone(UTC)
    if moment < _EPOCH:
        raise EvidenceError(f"{option} {text!r}: before 1970, older than any Kafka record")
    return moment


def make_period(since: str, until: str | None, now: dt.datetime) -> Period:
    """The period of `--since` and `--until` (default: now); EvidenceError unless since < until <= now."""
    start = parse_instant(since, "--since")
    end = parse_instant(until, "--until") if until is not None else now
    if end > now:
        raise EvidenceError(f"--until {until!r} is in the future (now is {utc_text(now)})")
    if start >= end:
        raise EvidenceError(f"--since {since!r} is not before the end of the period ({utc_text(end)})")
    return Period(start, end)


def utc_text(moment: dt.datetime) -> str:
    """A moment as RFC 3339 in UTC, to the second unless it has a fraction."""
    moment = moment.astimezone(UTC)
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


# --- what was read ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rec:
    """One record as read: Kafka timestamp, partition, offset and the value parsed (None when unreadable)."""

    ms: int
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any] | None


# topic -> partition -> (first offset read, end offset): the report's sources.
Ranges = dict[str, dict[int, tuple[int, int]]]


@dataclass(slots=True)
class Read:
    """Records of each topic as lists: what the unit tests count (the command counts as it reads)."""

    decisions: list[Rec] = field(default_factory=list)
    retractions: list[Rec] = field(default_factory=list)
    dead_letters: list[Rec] = field(default_factory=list)
    objections: list[Rec] = field(default_factory=list)


def _parse(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def read_period(settings: Settings, period: Period) -> tuple[Tallies, Ranges]:
    """Count the four topics from the period's start to their current end; EvidenceError for a missing topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    topics = settings.topics
    counts = Counts(period)
    wanted: dict[str, Callable[[Rec], None]] = {
        topics.decisions: counts.decision,
        topics.retractions: counts.retraction,
        topics.dlq: counts.dead_letter,
        topics.objections: counts.objection,
    }
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        client_id="eligibility-evidence",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    ranges: Ranges = {}
    try:
        partitions = await partition_counts(
            settings, list(wanted), client_id="eligibility-evidence", error=EvidenceError
        )
        tps = [TopicPartition(name, p) for name, n in partitions.items() for p in range(n)]
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: period.since_ms for tp in tps})
        starts = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}
        for tp in tps:
            ranges.setdefault(tp.topic, {})[tp.partition] = (starts[tp], ends[tp])
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        # Appended after the start: not part of this run.
        async for tp, records in read_to_end(consumer, ends, error=EvidenceError):
            add = wanted[tp.topic]
            for r in records:
                add(Rec(r.timestamp, tp.partition, r.offset, r.key, _parse(r.value)))
    except KafkaError as exc:
        raise EvidenceError(f"cannot read the topics from {settings.bootstrap_servers}: {exc!r}") from exc
    finally:
        await consumer.stop()
    return counts.result(), ranges


# --- the counts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionSpan:
    """A policy version seen on the audit log in the period: first and last record, and how many."""

    version: str
    first: dt.datetime
    last: dt.datetime
    records: int


@dataclass(frozen=True, slots=True)
class Propagation:
    """Objection propagation in the period, from the audit log: each measured objection's seconds."""

    objections: int  # `objected` records on accounts.objections in the period
    withdrawals: int  # `withdrawn` records or tombstones in the period
    without_retractions: int  # objections after which no item of the author was retracted
    seconds: tuple[float, ...]  # one per objection that retracted items: to the last retraction

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile of the measured objections (None when none was measured)."""
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    @property
    def within_objective(self) -> int:
        """Measured objections propagated within OBJECTIVE_SECONDS."""
        return sum(1 for s in self.seconds if s <= OBJECTIVE_SECONDS)

    @property
    def share_within(self) -> float | None:
        """The share of measured objections within the objective (None when none was measured)."""
        return self.within_objective / len(self.seconds) if self.seconds else None

    @property
    def meets_objective(self) -> bool | None:
        """Whether at least OBJECTIVE_SHARE were within OBJECTIVE_SECONDS (None when none was measured)."""
        share = self.share_within
        return None if share is None else share >= OBJECTIVE_SHARE


@dataclass(frozen=True, slots=True)
class Tallies:
    """Every count of the report, from the records of the period."""

    decisions: Counter[str]  # `decide` records by reason
    skips: Counter[str]  # `skip` records by reason
    audit_retractions: Counter[str]  # `retract` records of the audit log by cause
    retractions: Counter[str]  # training.retractions records by cause: items taken off the feed
    dead_letters: Counter[str]  # by reason
    dead_letter_topics: Counter[str]  # by the topic the record came from
    unreadable: Counter[str]  # records of our own topics that do not parse, by topic
    versions: tuple[VersionSpan, ...]
    propagation: Propagation
    bucket_seconds: int
    timeline: dict[str, list[int]]  # series name -> count per bucket from the period's start

    @property
    def eligible(self) -> int:
        """Decisions that put an item on the feed."""
        return self.decisions.get("eligible", 0)

    @property
    def decided(self) -> int:
        """Every `decide` record of the period."""
        return sum(self.decisions.values())

    @property
    def empty(self) -> bool:
        """Nothing at all happened in the period."""
        return not (
            self.decided
            or self.skips
            or self.audit_retractions
            or self.retractions
            or self.dead_letters
            or self.propagation.objections
            or self.propagation.withdrawals
        )


# Timeline buckets: the smallest of these giving at most TIMELINE_BUCKETS bars.
_BUCKETS: Final = (5, 10, 15, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
TIMELINE_BUCKETS: Final = 60


def bucket_seconds(period: Period) -> int:
    """The width of one bar of the timeline for this period."""
    span = (period.until - period.since).total_seconds()
    return next((b for b in _BUCKETS if span / b <= TIMELINE_BUCKETS), _BUCKETS[-1])


def _text(value: dict[str, Any] | None, name: str) -> str | None:
    field_value = value.get(name) if value is not None else None
    return field_value if isinstance(field_value, str) else None


class Counts:
    """The report's counts, taken record by record as they are read.

    Memory grows with the objections and their retractions, not with the decisions: a
    period of millions of audit records keeps only counters. Records after `until`
    are read too, but only to close objections made before it.
    """

    def __init__(self, period: Period) -> None:
        """Empty counts for `period`."""
        self.period = period
        self.decisions: Counter[str] = Counter()
        self.skips: Counter[str] = Counter()
        self.audit: Counter[str] = Counter()
        self.retractions: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.dead_topics: Counter[str] = Counter()
        self.unreadable: Counter[str] = Counter()
        self.spans: dict[str, list[int]] = {}
        self.width = bucket_seconds(period)
        self.bars = max(1, math.ceil((period.until_ms - period.since_ms) / (self.width * 1000)))
        self.timeline = {name: [0] * self.bars for name in ("eligible", "refused", "retracted", "dead_letters")}
        # author -> Kafka times of their `retract` records of cause `objection` (any time read).
        self.retracted: dict[str, list[int]] = {}
        self.objections: list[Rec] = []

    def _bar(self, ms: int) -> int:
        return min(self.bars - 1, (ms - self.period.since_ms) // (self.width * 1000))

    def decision(self, r: Rec) -> None:
        """Count one audit record."""
        v = r.value
        action = _text(v, "action")
        if action == "retract" and _text(v, "cause") == "objection":
            author = _text(v, "author_id")
            if author is not None:
                self.retracted.setdefault(author, []).append(r.ms)
        if not self.period.holds(r.ms):
            return
        if v is None:
            self.unreadable["eligibility.decisions"] += 1
            return
        version = _text(v, "policy_version") or "(none)"
        span = self.spans.setdefault(version, [r.ms, r.ms, 0])
        span[0], span[1], span[2] = min(span[0], r.ms), max(span[1], r.ms), span[2] + 1
        if action == "decide":
            reason = _text(v, "reason") or "(none)"
            self.decisions[reason] += 1
            self.timeline["eligible" if reason == "eligible" else "refused"][self._bar(r.ms)] += 1
        elif action == "skip":
            self.skips[_text(v, "reason") or "(none)"] += 1
        elif action == "retract":
            self.audit[_text(v, "cause") or "(none)"] += 1
        else:
            self.unreadable["eligibility.decisions"] += 1

    def retraction(self, r: Rec) -> None:
        """Count one record of training.retractions."""
        if not self.period.holds(r.ms):
            return
        if r.value is None:
            self.unreadable["training.retractions"] += 1
            return
        self.retractions[_text(r.value, "cause") or "(none)"] += 1
        self.timeline["retracted"][self._bar(r.ms)] += 1

    def dead_letter(self, r: Rec) -> None:
        """Count one dead letter."""
        if self.period.holds(r.ms):
            self.dead[_text(r.value, "reason") or "(unreadable)"] += 1
            self.dead_topics[_text(r.value, "topic") or "(unknown)"] += 1
            self.timeline["dead_letters"][self._bar(r.ms)] += 1

    def objection(self, r: Rec) -> None:
        """Keep one record of accounts.objections (its key, time, place and status) for the pairing."""
        status = _text(r.value, "status")
        self.objections.append(Rec(r.ms, r.partition, r.offset, r.key, {"status": status} if status else None))

    def result(self) -> Tallies:
        """The counts, with each objection of the period paired with its retractions."""
        versions = tuple(
            VersionSpan(version, _from_ms(first), _from_ms(last), n)
            for version, (first, last, n) in sorted(self.spans.items(), key=lambda kv: kv[1][0])
        )
        return Tallies(
            decisions=self.decisions,
            skips=self.skips,
            audit_retractions=self.audit,
            retractions=self.retractions,
            dead_letters=self.dead,
            dead_letter_topics=self.dead_topics,
            unreadable=self.unreadable,
            versions=versions,
            propagation=_pair(self.retracted, self.objections, self.period),
            bucket_seconds=self.width,
            timeline=self.timeline,
        )


def tally(read: Read, period: Period) -> Tallies:
    """The counts of records already read into lists (the command counts as it reads)."""
    counts = Counts(period)
    for roles, add in (
        (read.decisions, counts.decision),
        (read.retractions, counts.retraction),
        (read.dead_letters, counts.dead_letter),
        (read.objections, counts.objection),
    ):
        for r in roles:
            add(r)
    return counts.result()


def propagation(read: Read, period: Period) -> Propagation:
    """Objection propagation of the period from records already read into lists."""
    return tally(read, period).propagation


def _pair(retracted: Mapping[str, list[int]], objection_records: Iterable[Rec], period: Period) -> Propagation:
    """Each objection of the period paired with the retractions it caused, from the audit log.

    An `objected` record's time is its Kafka timestamp on accounts.objections; its
    propagation ends at the last `retract` record of cause `objection` of that author
    before the account's next objection record. The audit record goes out in the same
    awaited step as the feed's tombstone (README, "How the worker processes a batch"),
    and unlike the compacted feed the audit log keeps it for years. Retractions between
    the previous objection record and this one count too, so a worker clock a little
    behind the objection form's cannot lose them. An objection with no such retraction
    had nothing on the feed (or is not yet applied): counted apart, not measured.
    """
    # An account's records share a partition: offset order is their order.
    by_account: dict[bytes, list[Rec]] = {}
    for r in sorted(objection_records, key=lambda r: (r.partition, r.offset)):
        if r.key is not None:
            by_account.setdefault(r.key, []).append(r)
    objections = withdrawals = without = 0
    seconds: list[float] = []
    for key, records in by_account.items():
        times = retracted.get(key.decode("utf-8", "replace"), [])
        for i, r in enumerate(records):
            if not period.holds(r.ms):
                continue
            if _text(r.value, "status") != "objected":
                withdrawals += 1
                continue
            objections += 1
            after = records[i - 1].ms if i > 0 else -1
            before = records[i + 1].ms if i + 1 < len(records) else math.inf
            caused = [t for t in times if after < t < before]
            if caused:
                seconds.append(max(0.0, (max(caused) - r.ms) / 1000))
            else:
                without += 1
    return Propagation(objections, withdrawals, without, tuple(seconds))


# --- the other sources: the verifier and Prometheus -----------------------------------


@dataclass(frozen=True, slots=True)
class Canaries:
    """The canaries' results over the period, from Prometheus."""

    failures: float
    propagations: float
    p99_seconds: float | None


@dataclass(frozen=True, slots=True)
class VerifierHistory:
    """The continuous verifier over the period, from Prometheus."""

    runs: float  # runs completed in the period
    max_violations: float  # the most violations of one reason at any run
    max_losses: float


@dataclass(frozen=True, slots=True)
class Monitoring:
    """What Prometheus said about the period; None for a part without series."""

    url: str
    canaries: Canaries | None
    verifier: VerifierHistory | None
    worker_share_within: float | None  # the worker's own histogram: share within the objective
    worker_objections: float | None


def query_prometheus(url: str, period: Period) -> Monitoring:
    """The canaries', the verifier's and the worker's series over the period, read at its end."""
    base = url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise EvidenceError(f"--prometheus {url!r}: expected an http:// or https:// URL")
    window = f"[{max(1, math.ceil((period.until - period.since).total_seconds()))}s]"

    def scalar(expr: str) -> float | None:
        query = urllib.parse.urlencode({"query": expr, "time": f"{period.until.timestamp():.3f}"})
        try:
            with urllib.request.urlopen(f"{base}/api/v1/query?{query}", timeout=PROMETHEUS_TIMEOUT_SECONDS) as answer:  # noqa: S310 (scheme checked above)
                body = orjson.loads(answer.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise EvidenceError(f"Prometheus at {base} cannot be read: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise EvidenceError(f"Prometheus at {base} refused {expr!r}: {error}")
        result = body.get("data", {}).get("result", [])
        if not result:
            return None
        number = float(result[0]["value"][1])
        return None if math.isnan(number) else number

    failures = scalar(f"sum(increase(eligibility_canary_failures_total{window}))")
    canaries = None
    if failures is not None:
        canaries = Canaries(
            failures=failures,
            propagations=scalar(f"sum(increase(eligibility_canary_propagation_seconds_count{window}))") or 0.0,
            p99_seconds=scalar(
                "histogram_quantile(0.99, sum by (le) "
                f"(increase(eligibility_canary_propagation_seconds_bucket{window})))"
            ),
        )
    # Each run sets the last-run time anew: its changes are the runs completed in the period. The
    # worst run is the largest count of one reason (or of losses) any scrape saw: exact at every
    # scrape, where a sum over reasons would need a subquery and its coarser steps.
    runs = scalar(f"max(changes(eligibility_verifier_last_run_timestamp_seconds{window}))")
    verifier = None
    if runs is not None:
        verifier = VerifierHistory(
            runs=runs,
            max_violations=scalar(f"max(max_over_time(eligibility_verifier_violations{window}))") or 0.0,
            max_losses=scalar(f"max(max_over_time(eligibility_verifier_losses{window}))") or 0.0,
        )
    within = f'le="{OBJECTIVE_SECONDS:g}"'
    objections = scalar(f"sum(increase(eligibility_objection_propagation_seconds_count{window}))")
    share = None
    if objections:
        share = scalar(
            f"sum(increase(eligibility_objection_propagation_seconds_bucket{{{within}}}{window}))"
            f" / sum(increase(eligibility_objection_propagation_seconds_count{window}))"
        )
    return Monitoring(base, canaries, verifier, share, objections)


# --- the verdict --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Compliant, not compliant, or not established; with the reasons, and what the report could not check."""

    compliant: bool | None
    reasons: tuple[str, ...]
    not_checked: tuple[str, ...]

    @property
    def title(self) -> str:
        """The verdict in two or three words."""
        return {True: "Compliant", False: "Not compliant", None: "Not established"}[self.compliant]


def verdict(t: Tallies, verifier: Mapping[str, Any] | None, monitoring: Monitoring | None) -> Verdict:
    """Not compliant on any failing check; compliant only when the verifier ran and nothing failed."""
    failing: list[str] = []
    passing: list[str] = []
    unchecked: list[str] = []
    if verifier is None:
        unchecked.append("the verifier did not run, so the feed itself was not checked")
    elif verifier.get("ok"):
        passing.append(
            f"the independent verifier found the feed exactly as the rule allows "
            f"({_items(verifier.get('feed_items', 0))} on it, no violation, loss, minimisation or retraction problem)"
        )
    else:
        failing.append(
            f"the independent verifier found {verifier['violations']['count']} violations, "
            f"{verifier['losses']['count']} losses, {verifier['minimisation_problems']['count']} minimisation "
            f"problems and {verifier['retraction_problems']['count']} retraction problems on the feed"
        )
    p = t.propagation
    objective = f"{OBJECTIVE_SHARE:.0%} within {OBJECTIVE_SECONDS * 1000:.0f} ms"
    if p.meets_objective is None:
        passing.append("no objection in the period had items on the feed to retract, so none was measured")
    elif p.meets_objective:
        passing.append(f"objections met the objective ({_share(p.share_within)} within, objective {objective})")
    else:
        failing.append(f"objections missed the objective: {_share(p.share_within)} within, objective {objective}")
    if monitoring is None or monitoring.canaries is None:
        unchecked.append("the canaries' results (give --prometheus with a Prometheus that scrapes the canary)")
    elif monitoring.canaries.failures > 0:
        failing.append(f"the canaries failed {monitoring.canaries.failures:.0f} times in the period")
    else:
        passing.append("no canary failed in the period")
    if monitoring is not None and monitoring.verifier is not None and monitoring.verifier.max_violations > 0:
        failing.append(
            f"the continuous verifier reported violations during the period (up to "
            f"{monitoring.verifier.max_violations:.0f} of one reason at a run)"
        )
    if failing:
        return Verdict(False, tuple(failing), tuple(unchecked))
    if verifier is None:
        return Verdict(None, tuple(passing), tuple(unchecked))
    return Verdict(True, tuple(passing), tuple(unchecked))


def _items(n: object) -> str:
    return "1 item" if n == 1 else (f"{n:,} items" if isinstance(n, int) else f"{n} items")


def _share(share: float | None) -> str:
    return "-" if share is None else f"{share:.2%}"


# --- the figures --------------------------------------------------------------------


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend; EvidenceError naming the extra when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvidenceError(
            "the evidence report draws its figures with matplotlib, which is not installed: "
            "pip install 'eligibility-filter[evidence]'"
        ) from None
    return plt


_GREEN, _GREY, _RED, _BLUE = "#2e7d32", "#78909c", "#c62828", "#1565c0"


def _bars(plt: Any, counts: Mapping[str, int], title: str, colour: Callable[[str], str]) -> Any:
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.32 * max(1, len(items))))
    if items:
        labels = [k for k, _ in items]
        values = [v for _, v in items]
        ax.barh(labels, values, color=[colour(k) for k in labels])
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,}", va="center", fontsize=8)
        ax.set_xlim(0, max(values) * 1.15)
        ax.xaxis.set_major_locator(_integer_ticks())
    else:
        ax.text(0.5, 0.5, "none in the period", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_title(title, fontsize=10, loc="left")
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _integer_ticks() -> Any:
    """Ticks at whole numbers only: the bars count records."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _propagation_figure(plt: Any, p: Propagation) -> Any:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    objective_ms = OBJECTIVE_SECONDS * 1000
    # A logarithmic axis from 1 ms: a propagation under 1 ms is drawn at 1 ms.
    ms = sorted(max(1.0, s * 1000) for s in p.seconds)
    if ms:
        share = [(i + 1) / len(ms) for i in range(len(ms))]
        ax.step([ms[0], *ms], [0.0, *share], where="post", color=_BLUE, label="objections retracted within x")
        if len(ms) <= 20:
            ax.plot(ms, share, "o", color=_BLUE, markersize=3)
        ax.set_xscale("log")
        ax.set_xlim(min(ms[0], objective_ms) / 2, max(ms[-1], objective_ms) * 2)
    else:
        ax.text(0.5, 0.5, "no objection measured in the period", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(
        OBJECTIVE_SECONDS * 1000, color=_RED, linestyle="--", label=f"objective: {OBJECTIVE_SECONDS * 1000:.0f} ms"
    )
    ax.axhline(OBJECTIVE_SHARE, color=_GREY, linestyle=":", label=f"{OBJECTIVE_SHARE:.0%} of objections")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("milliseconds from the objection to its last retraction", fontsize=8)
    ax.set_ylabel("share of objections", fontsize=8)
    ax.set_title("Objection propagation (cumulative)", fontsize=10, loc="left")
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _timeline_figure(plt: Any, t: Tallies, period: Period) -> Any:
    import matplotlib.dates as mdates

    fig, ax = plt.subplots(figsize=(9, 3.2))
    starts = [period.since + dt.timedelta(seconds=t.bucket_seconds * i) for i in range(len(t.timeline["eligible"]))]
    width = dt.timedelta(seconds=t.bucket_seconds * 0.9)
    ax.bar(starts, t.timeline["eligible"], width=width, align="edge", color=_GREEN, label="eligible")
    ax.bar(
        starts,
        t.timeline["refused"],
        width=width,
        align="edge",
        bottom=t.timeline["eligible"],
        color=_GREY,
        label="refused",
    )
    ax.plot(
        [s + width / 2 for s in starts],
        t.timeline["retracted"],
        color=_RED,
        marker=".",
        label="retracted from the feed",
    )
    # Room above the highest bar for the policy labels.
    highest = max((e + r for e, r in zip(t.timeline["eligible"], t.timeline["refused"], strict=True)), default=0)
    ax.set_ylim(0, max(1, highest, *t.timeline["retracted"]) * 1.15)
    for span in t.versions[1:]:
        ax.axvline(span.first, color=_BLUE, linestyle="--")
        ax.text(span.first, ax.get_ylim()[1], f" policy {span.version}", fontsize=7, color=_BLUE, va="top")
    # Ticks as fine as the period needs (seconds in a short one, days in a long one), in UTC.
    # matplotlib.dates declares no types for these constructors.
    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    ax.set_ylabel(f"records per {_duration(t.bucket_seconds)}", fontsize=8)
    ax.set_title("Decisions and retractions over the period (UTC)", fontsize=10, loc="left")
    ax.tick_params(labelsize=7)
    # Above the axes, right of the title: never over a bar or a policy label.
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _duration(seconds: int) -> str:
    for unit, size in (("week", 7 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            n = seconds // size
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds} seconds"


def figures(t: Tallies, period: Period, names: Iterable[str] = FIGURES) -> dict[str, bytes]:
    """Each named figure as PNG bytes."""
    plt = _pyplot()
    draw: dict[str, Callable[[], Any]] = {
        "decisions": lambda: _bars(
            plt, t.decisions, "Decisions by reason", lambda k: _GREEN if k == "eligible" else _GREY
        ),
        "retractions": lambda: _bars(plt, t.retractions, "Items retracted from the feed, by cause", lambda k: _RED),
        "dead_letters": lambda: _bars(plt, t.dead_letters, "Dead letters by reason", lambda k: _BLUE),
        "propagation": lambda: _propagation_figure(plt, t.propagation),
        "timeline": lambda: _timeline_figure(plt, t, period),
    }
    out: dict[str, bytes] = {}
    for name in names:
        fig = draw[name]()
        buffer = io.BytesIO()
        fig.tight_layout()
        # Fixed metadata: the same numbers draw the same bytes.
        fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)
        out[name] = buffer.getvalue()
    return out


# --- the report ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything the report shows."""

    period: Period
    generated_at: dt.datetime
    tallies: Tallies
    verifier: Mapping[str, Any] | None  # the verifier's JSON report (stream.verifier's to_json), None when not run
    verifier_note: str  # why it did not run, or when it ran
    monitoring: Monitoring | None
    verdict: Verdict
    topics: Mapping[str, str]  # role -> topic name
    ranges: Mapping[str, Mapping[int, tuple[int, int]]]


def figures_json(e: Evidence) -> dict[str, Any]:
    """The report's numbers as one JSON-ready object (`--json`)."""
    t, p = e.tallies, e.tallies.propagation
    m = e.monitoring
    return {
        "period": {"since": utc_text(e.period.since), "until": utc_text(e.period.until)},
        "generated_at": utc_text(e.generated_at),
        "verdict": {
            "compliant": e.verdict.compliant,
            "reasons": list(e.verdict.reasons),
            "not_checked": list(e.verdict.not_checked),
        },
        "empty": t.empty,
        "policy_versions": [
            {"version": v.version, "first": utc_text(v.first), "last": utc_text(v.last), "records": v.records}
            for v in t.versions
        ],
        "decisions": {"total": t.decided, "eligible": t.eligible, "by_reason": dict(sorted(t.decisions.items()))},
        "skips": dict(sorted(t.skips.items())),
        "audit_retractions": dict(sorted(t.audit_retractions.items())),
        "retractions": {"total": sum(t.retractions.values()), "by_cause": dict(sorted(t.retractions.items()))},
        "dead_letters": {
            "total": sum(t.dead_letters.values()),
            "by_reason": dict(sorted(t.dead_letters.items())),
            "by_topic": dict(sorted(t.dead_letter_topics.items())),
        },
        "unreadable": dict(sorted(t.unreadable.items())),
        "propagation": {
            "objective_seconds": OBJECTIVE_SECONDS,
            "objective_share": OBJECTIVE_SHARE,
            "objections": p.objections,
            "withdrawals": p.withdrawals,
            "without_retractions": p.without_retractions,
            "measured": len(p.seconds),
            "within_objective": p.within_objective,
            "share_within": p.share_within,
            "meets_objective": p.meets_objective,
            "p50_seconds": p.quantile(0.5),
            "p90_seconds": p.quantile(0.9),
            "p99_seconds": p.quantile(0.99),
            "max_seconds": max(p.seconds) if p.seconds else None,
        },
        "timeline": {"bucket_seconds": t.bucket_seconds, **t.timeline},
        "verifier": dict(e.verifier) if e.verifier is not None else None,
        "prometheus": None
        if m is None
        else {
            "url": m.url,
            "canaries": None
            if m.canaries is None
            else {
                "failures": m.canaries.failures,
                "propagations": m.canaries.propagations,
                "p99_seconds": m.canaries.p99_seconds,
            },
            "verifier": None
            if m.verifier is None
            else {
                "runs": m.verifier.runs,
                "max_violations": m.verifier.max_violations,
                "max_losses": m.verifier.max_losses,
            },
            "worker_objections": m.worker_objections,
            "worker_share_within": m.worker_share_within,
        },
    }


def reproduce(e: Evidence, figure: str | None = None) -> str:
    """The command that makes this report (or one figure of it) again from the same records."""
    command = f"python -m stream evidence --since {utc_text(e.period.since)} --until {utc_text(e.period.until)}"
    if figure is not None:
        return f"{command} --figure {figure} --out {figure}.png"
    if e.monitoring is not None:
        command += f" --prometheus {e.monitoring.url}"
    return f"{command} --out evidence.html"


_CSS: Final = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:#1c2833;
max-width:980px;margin:24px auto;padding:0 20px;line-height:1.45;font-size:15px}
h1{font-size:24px;margin-bottom:2px}h2{font-size:19px;border-bottom:1px solid #ccd;padding-bottom:3px;margin-top:30px}
.sub{color:#566;margin-top:0}.summary{border:2px solid #999;border-radius:6px;padding:10px 18px;margin:14px 0}
.ok{border-color:#2e7d32;background:#f1f8f1}.bad{border-color:#c62828;background:#fdf1f1}.unk{border-color:#b7950b;background:#fefbea}
.verdict{font-size:21px;font-weight:bold;margin:4px 0 6px}.ok .verdict{color:#2e7d32}.bad .verdict{color:#c62828}
.unk .verdict{color:#8a6d00}table{border-collapse:collapse;margin:8px 0;font-size:14px}
td,th{border:1px solid #d5d8dc;padding:3px 9px;text-align:left;vertical-align:top}th{background:#f2f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}.kpi td:first-child{color:#444}
figure{margin:10px 0}img{max-width:100%}pre{background:#f4f6f7;padding:6px 9px;font-size:12px;white-space:pre-wrap;
overflow-wrap:anywhere;margin:4px 0}figcaption{font-size:13px;color:#444}.note{font-size:13px;color:#555}
"""


def _h(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], numeric: Iterable[int] = ()) -> str:
    nums = set(numeric)
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{_h(c)}</td>' if i in nums else f"<td>{_h(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(e: Evidence, name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_h(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_h(caption)} To draw it again:</figcaption><pre>{_h(reproduce(e, name))}</pre></figure>"
    )


def _counted(counts: Counter[str], words: Mapping[str, str]) -> list[tuple[str, str, str]]:
    return [
        (code, f"{n:,}", words.get(code, "a code this report does not know: see the contract"))
        for code, n in counts.most_common()
    ]


def _seconds_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def render_html(e: Evidence, pngs: Mapping[str, bytes]) -> str:
    """The whole report as one HTML document with nothing external: styles inline, figures as data URIs."""
    t, p, v = e.tallies, e.tallies.propagation, e.verdict
    klass = {True: "ok", False: "bad", None: "unk"}[v.compliant]
    period = f"{utc_text(e.period.since)} to {utc_text(e.period.until)} (UTC)"
    activity = (
        "<p><b>No activity was recorded in this period</b>: no decisions, retractions, dead letters or objections.</p>"
        if t.empty
        else ""
    )
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>Compliance evidence {_h(period)}</title><style>{_CSS}</style></head><body>",
        "<h1>Compliance evidence: the training eligibility filter</h1>",
        f'<p class="sub">Period {_h(period)}; report made {_h(utc_text(e.generated_at))}</p>',
        f'<div class="summary {klass}"><div class="verdict">{_h(v.title)}</div>',
        activity,
        "<ul>" + "".join(f"<li>{_h(r)}</li>" for r in v.reasons) + "</ul>",
        (
            "<p>Not covered by this report:</p><ul>" + "".join(f"<li>{_h(r)}</li>" for r in v.not_checked) + "</ul>"
            if v.not_checked
            else ""
        ),
        _table(
            ["in the period", ""],
            [
                ("items decided", f"{t.decided:,}"),
                ("of which used for training (eligible)", f"{t.eligible:,}"),
                ("items retracted from the training feed", f"{sum(t.retractions.values()):,}"),
                ("records that could not be processed (dead letters)", f"{sum(t.dead_letters.values()):,}"),
                ("objections received", f"{p.objections:,}"),
                (
                    f"objections retracted within {OBJECTIVE_SECONDS * 1000:.0f} ms (objective {OBJECTIVE_SHARE:.0%})",
                    f"{_share(p.share_within)} of {len(p.seconds):,} measured",
                ),
                ("canary failures", _canary_summary(e.monitoring)),
                ("policy versions in force", ", ".join(s.version for s in t.versions) or "-"),
            ],
            numeric=[1],
        ),
        "</div>",
        '<p class="note">This report holds counts, reason codes, policy versions and content ids only: '
        "no account id, pseudonym, text or other content of any record.</p>",
        "<h2>1. Policy versions in force</h2>",
        "<p>The version of the eligibility rule each audit record names. A change of version is a change of the rule "
        "(a country enabled, an age changed).</p>",
        _table(
            ["policy version", "first record", "last record", "audit records"],
            [(s.version, utc_text(s.first), utc_text(s.last), f"{s.records:,}") for s in t.versions]
            or [("-", "", "", "0")],
            numeric=[3],
        ),
        "<h2>2. Decisions by reason</h2>",
        "<p>Each public change of an item is decided by the first rule that applies; only <i>eligible</i> items go "
        "to training.</p>",
        _figure(e, "decisions", pngs["decisions"], "Decisions of the period by reason."),
        _table(["reason", "decisions", "meaning"], _counted(t.decisions, DECIDE_REASONS), numeric=[1]),
    ]
    if t.skips:
        parts += [
            "<p>Events that changed nothing (a repeated or late event, or one after the item's deletion):</p>",
            _table(["reason", "events", "meaning"], _counted(t.skips, SKIP_REASONS), numeric=[1]),
        ]
    parts += [
        "<h2>3. Retractions by cause</h2>",
        "<p>Items taken off the training feed (each a tombstone on the feed and a record on "
        f"<code>{_h(e.topics['retractions'])}</code>, which trainers read to delete them).</p>",
        _figure(e, "retractions", pngs["retractions"], "Items retracted from the feed in the period, by cause."),
        _table(["cause", "items", "meaning"], _counted(t.retractions, RETRACT_CAUSES), numeric=[1]),
        '<p class="note">The audit log\'s retract records by cause, which also count deletions of items that were '
        "never on the feed: "
        + _h(", ".join(f"{c} {n:,}" for c, n in t.audit_retractions.most_common()) or "none")
        + ".</p>",
        "<h2>4. Dead letters</h2>",
        "<p>Input records the filter could not read. None is lost: each is kept with its reason on "
        f"<code>{_h(e.topics['dead_letters'])}</code>, and an item it names is failed closed (taken off the feed).</p>",
        _figure(e, "dead_letters", pngs["dead_letters"], "Dead letters of the period by reason."),
        _table(["reason", "records", "meaning"], _counted(t.dead_letters, DEAD_LETTER_REASONS), numeric=[1]),
        '<p class="note">By source topic: '
        + _h(", ".join(f"{c} {n:,}" for c, n in t.dead_letter_topics.most_common()) or "none")
        + ".</p>",
        "<h2>5. Objection propagation</h2>",
        f"<p>The objective: {OBJECTIVE_SHARE:.0%} of objections take their author's items off the feed within "
        f"{OBJECTIVE_SECONDS * 1000:.0f} ms (the alert rules' objective). Measured here from each objection's time on "
        f"<code>{_h(e.topics['objections'])}</code> to the last retraction it caused on the audit log.</p>",
        _table(
            ["measure", "value"],
            [
                ("objections received", f"{p.objections:,}"),
                ("measured (had items on the feed)", f"{len(p.seconds):,}"),
                ("nothing to retract (no item on the feed)", f"{p.without_retractions:,}"),
                ("withdrawn objections", f"{p.withdrawals:,}"),
                ("p50", _seconds_ms(p.quantile(0.5))),
                ("p90", _seconds_ms(p.quantile(0.9))),
                ("p99", _seconds_ms(p.quantile(0.99))),
                ("slowest", _seconds_ms(max(p.seconds) if p.seconds else None)),
                (f"within {OBJECTIVE_SECONDS * 1000:.0f} ms", f"{p.within_objective:,} ({_share(p.share_within)})"),
                (
                    "objective met",
                    {True: "yes", False: "NO", None: "nothing measured"}[p.meets_objective],
                ),
            ],
            numeric=[1],
        ),
        _figure(e, "propagation", pngs["propagation"], "Share of objections retracted within a given time."),
    ]
    m = e.monitoring
    if m is not None and m.worker_objections:
        parts.append(
            f'<p class="note">The worker\'s own measure (Prometheus, also counting objections with nothing to '
            f"retract): {m.worker_objections:,.0f} objections, {_share(m.worker_share_within)} within "
            f"{OBJECTIVE_SECONDS * 1000:.0f} ms.</p>"
        )
    parts += ["<h2>6. The independent verifier</h2>", _verifier_html(e)]
    parts += ["<h2>7. Canaries</h2>", _canaries_html(m)]
    parts += [
        "<h2>8. Activity over the period</h2>",
        _figure(e, "timeline", pngs["timeline"], "Decisions and retractions over time."),
        "<h2>9. Sources and method</h2>",
        "<p>Read from Kafka, each topic from the first record at or after the period's start to its end when the "
        "report was made; a record counts in the period by its Kafka timestamp. "
        + ("Prometheus: " + _h(m.url) + "." if m is not None else "No Prometheus was given.")
        + "</p>",
        _table(
            ["topic", "partitions", "records read"],
            [
                (name, len(parts_), f"{sum(end - start for start, end in parts_.values()):,}")
                for name, parts_ in sorted(e.ranges.items())
            ],
            numeric=[1, 2],
        ),
        "<p>The whole report again, from the same records:</p>",
        f"<pre>{_h(reproduce(e))}</pre>",
        "</body></html>",
    ]
    return "".join(parts)


def _verifier_html(e: Evidence) -> str:
    r = e.verifier
    if r is None:
        return f"<p>Not available: {_h(e.verifier_note)}.</p>"
    rows = [
        ("result", "passed" if r.get("ok") else "FAILED"),
        ("checked at", r.get("checked_at", "-")),
        ("policy version", r.get("policy_version", "-")),
        ("items on the feed", f"{r.get('feed_items', 0):,}"),
        ("items the rule allows", f"{r.get('expected_eligible', 0):,}"),
        ("violations (items on the feed the rule refuses)", f"{r['violations']['count']:,}"),
        ("losses (allowed items missing from the feed)", f"{r['losses']['count']:,}"),
        ("minimisation problems", f"{r['minimisation_problems']['count']:,}"),
        ("retraction problems", f"{r['retraction_problems']['count']:,}"),
    ]
    examples = [
        (f"violation: {reason}", t["count"], ", ".join(t["examples"]))
        for reason, t in r["violations"]["by_reason"].items()
        if t["count"]
    ]
    if r["losses"]["count"]:
        examples.append(("loss", r["losses"]["count"], ", ".join(r["losses"]["examples"])))
    html_parts = [
        "<p>A separate program with its own reading of the rule rebuilt every account's and item's state from the "
        "inputs and compared it with the training feed as it is now (at the report's making, not only the period). "
        f"{_h(e.verifier_note)}.</p>",
        _table(["measure", "value"], rows, numeric=[1]),
    ]
    if examples:
        html_parts.append(
            "<p>Examples (content ids):</p>" + _table(["kind", "items", "content ids"], examples, numeric=[1])
        )
    m = e.monitoring
    if m is not None and m.verifier is not None:
        html_parts.append(
            f"<p>The continuous verifier during the period (Prometheus): {m.verifier.runs:,.0f} runs completed; "
            f"the worst run found {m.verifier.max_violations:,.0f} violations of one reason and "
            f"{m.verifier.max_losses:,.0f} losses.</p>"
        )
    return "".join(html_parts)


def _canary_summary(m: Monitoring | None) -> str:
    if m is None or m.canaries is None:
        return "not available"
    c = m.canaries
    return f"{c.failures:,.0f} ({c.propagations:,.0f} probes timed)"


def _canaries_html(m: Monitoring | None) -> str:
    if m is None:
        return (
            "<p>Not available: no Prometheus was given (<code>--prometheus URL</code>). The canaries are synthetic "
            "objecting accounts that keep posting; their results live in Prometheus.</p>"
        )
    if m.canaries is None:
        return f"<p>Not available: Prometheus at {_h(m.url)} has no canary series for the period.</p>"
    c = m.canaries
    return _table(
        ["measure", "value"],
        [
            ("canary failures (an item on the feed, or an objection too slow)", f"{c.failures:,.0f}"),
            ("canary objections measured", f"{c.propagations:,.0f}"),
            ("canary propagation p99", _seconds_ms(c.p99_seconds)),
        ],
        numeric=[1],
    )


def build(
    t: Tallies,
    ranges: Ranges,
    period: Period,
    *,
    settings: Settings,
    now: dt.datetime,
    verifier: Mapping[str, Any] | None,
    verifier_note: str,
    monitoring: Monitoring | None,
) -> Evidence:
    """The report's content from the counts and the offsets read."""
    topics = settings.topics
    return Evidence(
        period=period,
        generated_at=now,
        tallies=t,
        verifier=verifier,
        verifier_note=verifier_note,
        monitoring=monitoring,
        verdict=verdict(t, verifier, monitoring),
        topics={
            "decisions": topics.decisions,
            "retractions": topics.retractions,
            "dead_letters": topics.dlq,
            "objections": topics.objections,
        },
        ranges=ranges,
    )


def json_bytes(e: Evidence) -> bytes:
    """`figures_json` as indented JSON."""
    return orjson.dumps(figures_json(e), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


# --- the command ----------------------------------------------------------------------


def make_report(
    settings: Settings,
    *,
    since: str,
    until: str | None,
    out: Path,
    json_path: Path | None = None,
    prometheus: str | None = None,
    figure: str | None = None,
    run_verifier: Callable[[], Mapping[str, Any]] | None = None,
    now: dt.datetime | None = None,
) -> Evidence:
    """`python -m stream evidence`: read, count, draw and write the report (or one figure) to `out`.

    `run_verifier` returns the verifier's JSON report as a mapping (the CLI runs the
    verifier in-process); a StreamError it raises becomes the report's note, not a
    failure: the rest of the evidence still stands. With `figure`, only that figure is
    written (as PNG), and neither the verifier nor Prometheus is asked.
    """
    now = dt.datetime.now(UTC) if now is None else now
    period = make_period(since, until, now)
    if figure is not None and figure not in FIGURES:
        raise EvidenceError(f"--figure {figure!r}: one of {', '.join(FIGURES)}")
    _pyplot()  # a missing matplotlib fails before the topics are read
    tallies, ranges = asyncio.run(read_period(settings, period))
    verifier: Mapping[str, Any] | None = None
    if figure is not None or run_verifier is None:
        note = "not run (--no-verify)" if figure is None else "not needed for one figure"
    else:
        try:
            verifier = run_verifier()
        except StreamError as exc:
            note = f"the verifier could not run: {exc}"
        else:
            note = f"It ran in-process when the report was made, at {verifier.get('checked_at', '?')}"
    monitoring = query_prometheus(prometheus, period) if prometheus and figure is None else None
    evidence = build(
        tallies,
        ranges,
        period,
        settings=settings,
        now=now,
        verifier=verifier,
        verifier_note=note,
        monitoring=monitoring,
    )
    if figure is not None:
        _write(out, figures(evidence.tallies, period, [figure])[figure])
    else:
        _write(out, render_html(evidence, figures(evidence.tallies, period)).encode("utf-8"))
    if json_path is not None:
        _write(json_path, json_bytes(evidence))
    return evidence


def _write(path: Path, data: bytes) -> None:
    """Replace `path` atomically: nobody reads half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise EvidenceError(f"cannot write {path}: {exc.strerror}") from None
