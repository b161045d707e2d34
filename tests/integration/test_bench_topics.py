"""The benchmarks measure the worker on the topics `topics create` makes, with production-sized content segments.

`bench.common.create_run_topics` makes every topic with the product's configs
(`topics.topic_specs`: cleanup policy, retention) and the content topic with Kafka's
default segment size instead of the local broker's 16 MiB (bench/notes.md, "Segment
rolls"). The objection benchmark then switches two topics to the broker's append time;
that must leave their other configs as they were (the legacy AlterConfigs request
resets every config it does not name).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench import common, objections
from stream.config import Settings
from stream.runtime.topics import topic_specs

from .harness import unique_settings, with_topics

pytestmark = pytest.mark.integration

NAMED = ("cleanup.policy", "retention.ms", "delete.retention.ms", "segment.bytes", "message.timestamp.type")


async def _configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """The named configs (NAMED) of each topic, as the broker describes them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        out: dict[str, dict[str, str]] = {}
        for response in responses:
            for _, _, _, name, entries in response.resources:
                out[name] = {entry[0]: entry[1] for entry in entries if entry[0] in NAMED}
        return out
    finally:
        await admin.close()


def _expected(settings: Settings) -> dict[str, dict[str, str]]:
    """Each topic's configs from the product's specs; the content topic's segments at CONTENT_SEGMENT_BYTES."""
    expected = {spec.name: dict(spec.configs) for spec in topic_specs(settings)}
    expected[settings.topics.content]["segment.bytes"] = str(common.CONTENT_SEGMENT_BYTES)
    return expected


async def test_run_topics_have_the_products_configs_and_production_sized_content_segments(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "a")
    # A second consumer of the same inputs, as every drain has: its outputs are its own.
    other = with_topics(
        unique_settings(bootstrap, tmp_path / "b"),
        content=settings.topics.content,
        profiles=settings.topics.profiles,
        objections=settings.topics.objections,
    )
    await common.create_run_topics(settings)
    await common.create_run_topics(other)
    for each in (settings, other):
        expected = _expected(each)
        described = await _configs(bootstrap, list(expected))
        for name, configs in expected.items():
            assert {k: described[name][k] for k in configs} == configs, name
    assert common.CONTENT_SEGMENT_BYTES == 1 << 30  # Kafka's default `log.segment.bytes`


async def test_the_objection_benchmarks_append_time_keeps_the_topics_other_configs(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await common.create_run_topics(settings)
    t = settings.topics
    await objections.log_append_time(settings, [t.objections, t.feed])
    expected = _expected(settings)
    described = await _configs(bootstrap, [t.objections, t.feed])
    for name in (t.objections, t.feed):
        assert described[name]["message.timestamp.type"] == "LogAppendTime"
        assert {k: described[name][k] for k in expected[name]} == expected[name], name
        assert described[name]["cleanup.policy"] == "compact"
