"""Trainers' acknowledgements on the real broker: the verifier reads each named group's
position on training.retractions and exports what it has not acknowledged, and since when."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from stream.feed import acknowledge
from stream.verifier.trainers import TrainerMetrics, trainer_lags

from .harness import make_topics, unique_settings

pytestmark = pytest.mark.integration

TWO_DAYS_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)


async def test_trainer_lags_count_unacknowledged_retractions_and_age_of_the_oldest(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data", partitions=1)
    tag = settings.group_id
    groups = (f"{tag}-done", f"{tag}-late", f"{tag}-never")
    settings = replace(settings, trainer_groups=groups, trainer_ack_hours=24)
    await make_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(3):
            stamp = TWO_DAYS_AGO + dt.timedelta(hours=i)
            value = {
                "content_id": f"c-{i}",
                "retracted_at": stamp.isoformat().replace("+00:00", "Z"),
                "cause": "objection",
                "policy_version": "v",
            }
            await producer.send_and_wait(
                settings.topics.retractions,
                key=f"c-{i}".encode(),
                value=orjson.dumps(value),
                timestamp_ms=int(stamp.timestamp() * 1000),
            )
    finally:
        await producer.stop()
    await asyncio.to_thread(acknowledge, groups[0], {0: 3}, settings)
    await asyncio.to_thread(acknowledge, groups[1], {0: 1}, settings)

    now = dt.datetime.now(dt.UTC)
    lags = await trainer_lags(settings, now)
    assert [(lag.group, lag.unacknowledged) for lag in lags] == [(groups[0], 0), (groups[1], 2), (groups[2], 3)]
    assert lags[0].oldest_seconds == 0
    # The oldest unacknowledged record: c-1 (two days less an hour) for the late group, c-0 for the other.
    assert abs(lags[1].oldest_seconds - (now - TWO_DAYS_AGO - dt.timedelta(hours=1)).total_seconds()) < 5
    assert abs(lags[2].oldest_seconds - (now - TWO_DAYS_AGO).total_seconds()) < 5

    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry, settings.trainer_groups, settings.trainer_ack_hours)
    assert registry.get_sample_value("eligibility_trainer_unacknowledged_retractions", {"group": groups[2]}) == 0
    metrics.update(lags)
    assert registry.get_sample_value("eligibility_trainer_unacknowledged_retractions", {"group": groups[2]}) == 3
    assert registry.get_sample_value("eligibility_trainer_acknowledgement_deadline_seconds") == 24 * 3600
    late = registry.get_sample_value(
        "eligibility_trainer_oldest_unacknowledged_retraction_seconds", {"group": groups[1]}
    )
    assert late is not None and late > 24 * 3600  # past the deadline: the alert's condition


async def test_trainer_lags_without_groups_reads_nothing(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")  # no topics made: nothing may be read
    assert await trainer_lags(settings, dt.datetime.now(dt.UTC)) == []
