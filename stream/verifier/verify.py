"""The verifier's Kafka shell: read the topics to their end offsets, compare, report; once or continuously.

`verify` reads every input, the compacted feed and the deferred changelog and
returns the pure comparison's `Report`; `main_verify` (`python -m stream verify`)
runs it once or every interval and serves the gauges from its own registry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client import start_http_server

from stream.config import Settings
from stream.connection import client_options, partition_counts, read_to_end
from stream.errors import StreamError
from stream.verifier.compare import DEFAULT_EXAMPLES, Report, RetractionRecord, compare
from stream.verifier.errors import VerifyError
from stream.verifier.report import VerifierMetrics, render, to_json
from stream.verifier.rule import KEY_ID_HEADER, Reason, read_policy
from stream.verifier.state import State
from stream.verifier.trainers import trainer_lags

# What scripts, tests and the CLI import from here: the shell's entry points and the report.
__all__ = ["Reason", "Report", "VerifyError", "broker_time", "main_verify", "render", "to_json", "verify"]

log = logging.getLogger(__name__)

UTC: Final = dt.UTC
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_PORT: Final = 6067
# Continuous mode runs beside a live filter: a difference younger than this is
# probably still in flight, not a fault (the filter's objective is well under a second).
DEFAULT_CONTINUOUS_GRACE_SECONDS: Final = 60.0

# --- the Kafka shell ----------------------------------------------------------------


# Producers choose a record's CreateTime: any 64-bit number, -1 when there is none.
_LAST_BROKER_MS: Final = (dt.datetime(9999, 1, 1, tzinfo=UTC) - _EPOCH) // dt.timedelta(milliseconds=1)


def broker_time(ms: int) -> dt.datetime:
    """A record's timestamp as a datetime, clamped to 1970..9999: no timestamp may make the verifier raise."""
    return _EPOCH + dt.timedelta(milliseconds=min(max(ms, 0), _LAST_BROKER_MS))


async def verify(
    settings: Settings,
    *,
    now: dt.datetime | None = None,
    grace_seconds: float = 0.0,
    examples: int = DEFAULT_EXAMPLES,
) -> Report:
    """Read the inputs and the feed from the beginning to the end offsets taken at start; compare.

    Raises VerifyError when a topic is missing, the broker cannot be read, or the
    policy file is unusable.
    """
    from aiokafka.errors import KafkaError

    now = dt.datetime.now(UTC) if now is None else now
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    policy = read_policy(settings.policy_path)
    try:
        read = await _read(settings)
    except KafkaError as exc:
        raise VerifyError(f"cannot read the topics from {settings.bootstrap_servers}: {exc!r}") from exc
    return compare(
        read.state,
        read.feed,
        policy,
        pseudonym_key=settings.pseudonym_key,
        previous_pseudonym_key=settings.previous_pseudonym_key,
        key_ids=read.key_ids,
        now=now,
        grace_seconds=grace_seconds,
        content_truncated=read.truncated,
        examples=examples,
        held=read.held,
        tombstones=read.tombstones,
        retractions=read.retractions,
    )


@dataclass(slots=True)
class _Read:
    """What one run read: the inputs' state, the live feed and held items, the feed's tombstones, the retractions."""

    state: State
    truncated: bool  # time retention removed content events
    feed: dict[bytes, bytes] = field(default_factory=dict)
    held: dict[bytes, bytes] = field(default_factory=dict)
    # Each content id with a tombstone still in the feed's log: the latest one's broker time.
    tombstones: dict[bytes, dt.datetime] = field(default_factory=dict)
    retractions: list[RetractionRecord] = field(default_factory=list)
    # Each live feed record's `pseudonym_key_id` header, by content id (key rotation).
    key_ids: dict[bytes, str] = field(default_factory=dict)


async def _read(settings: Settings) -> _Read:
    """The state of the inputs, the live feed and held items, the feed's tombstones and training.retractions."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # the shell's dependency; the pure part needs no Kafka

    topics = settings.topics
    counts = await partition_counts(
        settings,
        [topics.feed, topics.deferred, topics.retractions, topics.content, topics.profiles, topics.objections],
        client_id="eligibility-verifier",
        error=VerifyError,
    )
    partitions = {name: [TopicPartition(name, p) for p in range(n)] for name, n in counts.items()}
    # No group: nothing is committed, and the filter's group never sees this reader.
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        client_id="eligibility-verifier",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    try:
        # The outputs' end offsets first, the inputs' after: every feed and held record
        # read was then caused by input records that are read too (no false
        # unknown_content, no held item judged without the event it holds). The
        # retractions' ends after the feed's: a tombstone read has its record read too,
        # unless the two were in flight at that instant (the grace covers that).
        ends = dict(await consumer.end_offsets(partitions[topics.feed] + partitions[topics.deferred]))
        ends.update(await consumer.end_offsets(partitions[topics.retractions]))
        inputs = partitions[topics.content] + partitions[topics.profiles] + partitions[topics.objections]
        ends.update(await consumer.end_offsets(inputs))
        starts = await consumer.beginning_offsets(partitions[topics.content])
        truncated = any(offset > 0 for offset in starts.values())

        # A memory past timedelta's range (a setting of millions of years) is "never forget".
        state = State(item_memory=dt.timedelta(days=min(settings.item_memory_days, dt.timedelta.max.days)))
        read = _Read(state, truncated)
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        async for tp, records in read_to_end(consumer, ends, error=VerifyError):
            if tp.topic in (topics.feed, topics.deferred):
                live = read.feed if tp.topic == topics.feed else read.held
                for r in records:
                    if r.key is None:
                        continue  # a compacted topic refuses keyless records; nothing to judge
                    if r.value is None:
                        live.pop(r.key, None)
                        if tp.topic == topics.feed:
                            read.tombstones[r.key] = broker_time(r.timestamp)
                    else:
                        live[r.key] = r.value
                    if tp.topic == topics.feed:
                        _note_key_id(read.key_ids, r.key, r.value, r.headers)
            elif tp.topic == topics.retractions:
                read.retractions.extend((r.key, r.value, broker_time(r.timestamp)) for r in records)
            elif tp.topic == topics.content:
                for r in records:
                    state.apply_content(r.key, r.value, broker_time(r.timestamp), tp.partition)
            elif tp.topic == topics.profiles:
                for r in records:
                    state.apply_profile(r.key, r.value, broker_time(r.timestamp))
            else:
                for r in records:
                    state.apply_objection(r.key, r.value, broker_time(r.timestamp))
    finally:
        await consumer.stop()
    return read


def _note_key_id(key_ids: dict[bytes, str], key: bytes, value: bytes | None, headers: Any) -> None:
    """Remember the key id header of a live feed record (the last one, if repeated); forget it on a tombstone."""
    named = [v for k, v in headers or () if k == KEY_ID_HEADER and isinstance(v, bytes)] if value is not None else []
    if named:
        key_ids[key] = named[-1].decode("utf-8", "replace")
    else:
        key_ids.pop(key, None)


def _write_json(path: Path, data: bytes) -> None:
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    # Replace atomically: a scraper or a person never reads half a report.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main_verify(
    settings: Settings,
    json_path: Path | None,
    once: bool,
    interval: float,
    *,
    port: int = DEFAULT_PORT,
    grace_seconds: float | None = None,
    examples: int = DEFAULT_EXAMPLES,
    stop: threading.Event | None = None,
) -> int:
    """Run once (exit 1 on any violation, loss or minimisation problem, else 0), or every `interval` s.

    Once: the text report on stdout, the JSON report to `json_path` (`-`: stdout,
    instead of the text). Continuously: gauges on `port`, one log line per run, the
    JSON report rewritten at `json_path`; runs until interrupted (or `stop` is set:
    then it returns the last run's status), a failed run is logged and retried at
    the next interval.
    """
    read_policy(settings.policy_path)  # a bad policy file fails at start, not on every run
    if once:
        report = asyncio.run(verify(settings, grace_seconds=grace_seconds or 0.0, examples=examples))
        if json_path is None or str(json_path) != "-":
            print(render(report), flush=True)
        if json_path is not None:
            _write_json(json_path, to_json(report))
        return report.exit_status

    grace = DEFAULT_CONTINUOUS_GRACE_SECONDS if grace_seconds is None else grace_seconds
    metrics = VerifierMetrics.create(trainer_groups=settings.trainer_groups, ack_hours=settings.trainer_ack_hours)
    server, _ = start_http_server(port, registry=metrics.registry)
    log.info("verify: metrics on port %d, a run every %.0fs, grace %.0fs", port, interval, grace)
    try:
        return _run_continuously(settings, metrics, json_path, interval, grace, examples, stop or threading.Event())
    finally:
        server.shutdown()
        server.server_close()


def _run_continuously(
    settings: Settings,
    metrics: VerifierMetrics,
    json_path: Path | None,
    interval: float,
    grace: float,
    examples: int,
    stop: threading.Event,
) -> int:
    from aiokafka.errors import KafkaError

    status = 0
    while not stop.is_set():
        started = time.monotonic()
        if settings.trainer_groups:
            try:
                metrics.trainers.update(asyncio.run(trainer_lags(settings, dt.datetime.now(UTC))))
            except (StreamError, KafkaError, OSError, TimeoutError) as exc:
                log.warning("verify: trainer acknowledgements not read, retrying in %.0fs: %s", interval, exc)
        try:
            report = asyncio.run(verify(settings, grace_seconds=grace, examples=examples))
        except (StreamError, KafkaError, OSError, TimeoutError) as exc:
            # The gauges keep the last results; last_run_timestamp_seconds shows the gap.
            log.warning("verify: run failed, retrying in %.0fs: %s", interval, exc)
        else:
            metrics.update(report)
            status = report.exit_status
            if json_path is not None:
                _write_json(json_path, to_json(report))
            log.info(
                "verify: ok=%s feed_items=%d expected=%d violations=%d losses=%d minimisation=%d excused=%d "
                "pending=%d stale=%d unverifiable=%d",
                report.ok,
                report.feed_items,
                report.expected_eligible,
                report.violation_count,
                report.losses.count,
                report.minimisation_count,
                report.excused.count,
                report.pending.count,
                report.stale.count,
                report.unverifiable.count,
            )
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    return status
