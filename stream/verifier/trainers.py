"""Trainers' acknowledgements: how far each trainer's consumer group on `training.retractions` lags.

A trainer acknowledges a retraction by committing its consumer group past the record
(`stream.feed.acknowledge`) once the item is deleted from what it trains on. For each
group named in STREAM_TRAINER_GROUPS this reads the group's committed offsets and the
topic's ends: the records not yet acknowledged, and the broker time of the oldest of
them. The verifier exports both, so an alert fires when a trainer leaves a retraction
unapplied longer than STREAM_TRAINER_ACK_HOURS.

In the verifier, not the worker: the verifier is one process (the worker runs as
several replicas, each of which would export the same series) and its job is
compliance, of which a trainer that does not unlearn is a part. It imports nothing
of the filter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from stream.config import Settings
from stream.connection import client_options
from stream.verifier.errors import VerifyError


@dataclass(frozen=True, slots=True)
class TrainerLag:
    """One trainer group's unacknowledged retractions and the age of the oldest (0 when none)."""

    group: str
    unacknowledged: int
    oldest_seconds: float


async def trainer_lags(settings: Settings, now: dt.datetime) -> list[TrainerLag]:
    """The lag of each group of `settings.trainer_groups` on training.retractions, in that order.

    A group with no committed offset has acknowledged nothing: everything retention
    still keeps counts. Raises VerifyError when the topic does not exist.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    if not settings.trainer_groups:
        return []
    topic = settings.topics.retractions
    admin = AIOKafkaAdminClient(**client_options(settings), client_id="eligibility-verifier")
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            raise VerifyError(f"topic {topic!r} does not exist (see `python -m stream topics check`)")
        described: list[Any] = await admin.describe_topics([topic])
        tps = [TopicPartition(topic, p["partition"]) for t in described for p in t["partitions"]]
        committed = {
            group: await admin.list_consumer_group_offsets(group, partitions=tps) for group in settings.trainer_groups
        }
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        **client_options(settings), client_id="eligibility-verifier", group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        lags: list[TrainerLag] = []
        stamps: dict[tuple[Any, int], float] = {}  # (partition, offset) -> broker time, read once for all groups
        for group in settings.trainer_groups:
            count, oldest = 0, None
            for tp in tps:
                meta = committed[group].get(tp)
                position = max(meta.offset if meta is not None and meta.offset >= 0 else 0, starts[tp])
                if position >= ends[tp]:
                    continue
                count += ends[tp] - position
                if (tp, position) not in stamps:
                    stamps[tp, position] = await _broker_time(consumer, tp, position)
                oldest = stamps[tp, position] if oldest is None else min(oldest, stamps[tp, position])
            age = max(0.0, now.timestamp() - oldest) if oldest is not None else 0.0
            lags.append(TrainerLag(group, count, age))
        return lags
    finally:
        await consumer.stop()


async def _broker_time(consumer: Any, tp: Any, offset: int) -> float:
    """The timestamp (s) of the first record at or after `offset`: the oldest one a group has not acknowledged."""
    consumer.assign([tp])
    consumer.seek(tp, offset)
    for _ in range(20):
        fetched = await consumer.getmany(tp, timeout_ms=500, max_records=1)
        if fetched.get(tp):
            return float(fetched[tp][0].timestamp) / 1000
    raise VerifyError(f"cannot read {tp.topic}[{tp.partition}]@{offset} within 10 s")


class TrainerMetrics:
    """The trainers' gauges in the verifier's registry; every configured group's series exists from the start."""

    def __init__(self, registry: Any, groups: tuple[str, ...] = (), ack_hours: int = 24) -> None:
        from prometheus_client import Gauge

        self.unacknowledged = Gauge(
            "eligibility_trainer_unacknowledged_retractions",
            "Records on training.retractions past the trainer group's committed offset (last run)",
            ["group"],
            registry=registry,
        )
        self.oldest = Gauge(
            "eligibility_trainer_oldest_unacknowledged_retraction_seconds",
            "Age of the oldest retraction the trainer group has not acknowledged; 0 when none (last run)",
            ["group"],
            registry=registry,
        )
        self.deadline = Gauge(
            "eligibility_trainer_acknowledgement_deadline_seconds",
            "How long a trainer may leave a retraction unapplied (STREAM_TRAINER_ACK_HOURS)",
            registry=registry,
        )
        self.deadline.set(ack_hours * 3600)
        for group in groups:
            self.unacknowledged.labels(group=group)
            self.oldest.labels(group=group)

    def update(self, lags: list[TrainerLag]) -> None:
        """Set each group's gauges from one reading."""
        for lag in lags:
            self.unacknowledged.labels(group=lag.group).set(lag.unacknowledged)
            self.oldest.labels(group=lag.group).set(lag.oldest_seconds)
