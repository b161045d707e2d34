"""The report for people (`render`), for machines (`to_json`) and for Prometheus (`VerifierMetrics`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import orjson
from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector

from stream.verifier.compare import Problem, Report, RetractionProblem, Tally
from stream.verifier.rule import VIOLATION_REASONS
from stream.verifier.trainers import TrainerMetrics

UTC: Final = dt.UTC

# --- output -------------------------------------------------------------------------


def _printable(content_id: str) -> str:
    # Ids are compared exactly and may hold anything; a terminal must not be steered by them.
    return content_id if content_id.isprintable() else ascii(content_id)


def _line(label: str, tally: Tally, indent: str = "  ") -> str:
    shown = ", ".join(_printable(c) for c in tally.examples)
    more = ", ..." if tally.count > len(tally.examples) else ""
    return f"{indent}{label}: {tally.count}" + (f"  [{shown}{more}]" if tally.count else "")


def render(report: Report) -> str:
    """The report for a person: counts and a few content ids; never text, birth dates or account ids."""
    c = report.inputs
    verdict = "OK" if report.ok else "FAILED"
    lines = [
        f"training.feed verification at {_timestamp(report.checked_at)}, policy {report.policy_version}: {verdict}",
        f"  inputs: {c.content} content events ({c.content_invalid} invalid, "
        f"{c.content_skipped} superseded or after a delete), "
        f"{c.profiles} profile records, {c.objections} objection records"
        + ("; older content events are past retention" if report.content_truncated else ""),
        f"  feed items: {report.feed_items}, held items: {report.held_items}, "
        f"expected eligible: {report.expected_eligible}"
        + (f", grace {report.grace_seconds:g}s" if report.grace_seconds else ""),
        f"  violations: {report.violation_count}",
    ]
    lines += [_line(reason.value, t, "    ") for reason, t in report.violations.items() if t.count]
    lines.append(_line("losses", report.losses))
    lines.append(f"  minimisation problems: {report.minimisation_count}")
    lines += [_line(problem.value, t, "    ") for problem, t in report.minimisation.items() if t.count]
    lines.append(
        f"  retraction problems: {report.retraction_problem_count} "
        f"({report.retraction_records} records on training.retractions)"
    )
    lines += [_line(problem.value, t, "    ") for problem, t in report.retraction_problems.items() if t.count]
    lines.append(_line("excused (author's state changed since the upsert; not failing)", report.excused))
    lines.append(_line("pending (younger than the grace; not failing)", report.pending))
    lines.append(_line("stale (feed holds an older version; not failing)", report.stale))
    lines.append(_line("unverifiable (content event past retention; not failing)", report.unverifiable))
    return "\n".join(lines)


def _timestamp(d: dt.datetime) -> str:
    return d.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _tally(t: Tally) -> dict[str, object]:
    return {"count": t.count, "examples": list(t.examples)}


def to_json(report: Report) -> bytes:
    """The report for machines: every reason and problem kind present, zero or not."""
    c = report.inputs
    return orjson.dumps(
        {
            "ok": report.ok,
            "exit_status": report.exit_status,
            "checked_at": _timestamp(report.checked_at),
            "policy_version": report.policy_version,
            "grace_seconds": report.grace_seconds,
            "inputs": {
                "content_events": c.content,
                "content_events_invalid": c.content_invalid,
                "content_events_skipped": c.content_skipped,
                "profile_records": c.profiles,
                "objection_records": c.objections,
                "content_truncated": report.content_truncated,
            },
            "feed_items": report.feed_items,
            "held_items": report.held_items,
            "expected_eligible": report.expected_eligible,
            "violations": {
                "count": report.violation_count,
                "by_reason": {r.value: _tally(t) for r, t in report.violations.items()},
            },
            "losses": _tally(report.losses),
            "minimisation_problems": {
                "count": report.minimisation_count,
                "by_kind": {p.value: _tally(t) for p, t in report.minimisation.items()},
            },
            "retraction_problems": {
                "count": report.retraction_problem_count,
                "records": report.retraction_records,
                "by_kind": {p.value: _tally(t) for p, t in report.retraction_problems.items()},
            },
            "excused": _tally(report.excused),
            "pending": _tally(report.pending),
            "stale": _tally(report.stale),
            "unverifiable": _tally(report.unverifiable),
        },
        option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
    )


# --- metrics ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifierMetrics:
    """The verifier's gauges, in their own registry (the filter's /metrics is another process)."""

    registry: CollectorRegistry
    violations: Gauge
    losses: Gauge
    excused: Gauge
    minimisation_problems: Gauge
    retraction_problems: Gauge
    feed_items: Gauge
    expected_eligible: Gauge
    last_run: Gauge
    trainers: TrainerMetrics

    @classmethod
    def create(
        cls, registry: CollectorRegistry | None = None, *, trainer_groups: tuple[str, ...] = (), ack_hours: int = 24
    ) -> VerifierMetrics:
        """The gauges in `registry` (a new one by default), every label value initialised at zero.

        `trainer_groups` and `ack_hours` are STREAM_TRAINER_GROUPS and STREAM_TRAINER_ACK_HOURS.
        """
        r = registry if registry is not None else CollectorRegistry()
        m = cls(
            registry=r,
            violations=Gauge(
                "eligibility_verifier_violations",
                "Feed items the verifier's own rule refuses, by reason (last run)",
                ["reason"],
                registry=r,
            ),
            losses=Gauge("eligibility_verifier_losses", "Eligible items missing from the feed (last run)", registry=r),
            excused=Gauge(
                "eligibility_verifier_excused",
                "Eligible items missing from the feed whose author's state changed since the upsert (last run)",
                registry=r,
            ),
            minimisation_problems=Gauge(
                "eligibility_verifier_minimisation_problems",
                "Feed values breaking data minimisation, by kind (last run)",
                ["kind"],
                registry=r,
            ),
            retraction_problems=Gauge(
                "eligibility_verifier_retraction_problems",
                "Feed tombstones without a training.retractions record, records without a tombstone, "
                "and bad retraction records, by kind (last run)",
                ["kind"],
                registry=r,
            ),
            feed_items=Gauge(
                "eligibility_verifier_feed_items", "Live items on the compacted feed (last run)", registry=r
            ),
            expected_eligible=Gauge(
                "eligibility_verifier_expected_eligible", "Items the verifier's rule allows (last run)", registry=r
            ),
            last_run=Gauge(
                "eligibility_verifier_last_run_timestamp_seconds",
                "When the last successful run judged the feed (alert when it falls behind)",
                registry=r,
            ),
            trainers=TrainerMetrics(r, trainer_groups, ack_hours),
        )
        for reason in VIOLATION_REASONS:
            m.violations.labels(reason=reason.value)
        for problem in Problem:
            m.minimisation_problems.labels(kind=problem.value)
        for kind in RetractionProblem:
            m.retraction_problems.labels(kind=kind.value)
        # The process and Python series (CPU, resident memory, GC, version), which
        # prometheus_client adds to its global registry only; this registry is the verifier's own.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        return m

    def update(self, report: Report) -> None:
        """Set every gauge from the last run's report."""
        for reason, tally in report.violations.items():
            self.violations.labels(reason=reason.value).set(tally.count)
        for problem, tally in report.minimisation.items():
            self.minimisation_problems.labels(kind=problem.value).set(tally.count)
        for kind, tally in report.retraction_problems.items():
            self.retraction_problems.labels(kind=kind.value).set(tally.count)
        self.losses.set(report.losses.count)
        self.excused.set(report.excused.count)
        self.feed_items.set(report.feed_items)
        self.expected_eligible.set(report.expected_eligible)
        self.last_run.set(report.checked_at.timestamp())
