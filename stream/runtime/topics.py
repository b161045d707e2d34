"""The topics of the contract and our three changelogs: layout, creation, start-up check.

`create_topics` is idempotent (existing topics are left as they are and reported);
`check_layout` refuses to start a worker whose inputs are missing or not
co-partitioned, with a message that says how to fix it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.config import Settings
from stream.connection import client_options
from stream.errors import TopicLayoutError

log = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic to create: its name and its configs (cleanup policy, retention)."""

    name: str
    configs: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Cleanup policies and retention of every topic, as the contract's table asks."""
    t = settings.topics
    compacted = {
        "cleanup.policy": "compact",
        # A tombstone must outlive any consumer's lag: the worker rebuilds a store
        # idle for 12 h (worker.STORE_MAX_IDLE_SECONDS), and a running worker that
        # falls days behind without restarting (a broker unreachable, a stuck batch
        # alerting all along) still reads an account's deletion within 7 days.
        "delete.retention.ms": str(7 * _DAY_MS),
    }
    return [
        TopicSpec(t.content, {"cleanup.policy": "delete", "retention.ms": str(7 * _DAY_MS)}),
        TopicSpec(t.profiles, compacted),
        TopicSpec(t.objections, compacted),
        # Trainers must see a retraction's tombstone: they may lag up to 7 days, or
        # else re-read the compacted feed from the beginning.
        TopicSpec(t.feed, {"cleanup.policy": "compact", "delete.retention.ms": str(7 * _DAY_MS)}),
        TopicSpec(t.decisions, {"cleanup.policy": "delete", "retention.ms": str(3 * 365 * _DAY_MS)}),
        TopicSpec(t.dlq, {"cleanup.policy": "delete", "retention.ms": str(30 * _DAY_MS)}),
        # Held decisions, keyed by item and written to the partition of the author's
        # content: co-partitioned with the inputs like them.
        TopicSpec(t.deferred, {"cleanup.policy": "compact", "delete.retention.ms": str(_DAY_MS)}),
        # The published-items index, the same way: what a partition's next owner must
        # be able to retract.
        TopicSpec(t.published, {"cleanup.policy": "compact", "delete.retention.ms": str(_DAY_MS)}),
        # The latest event applied to each item, the same way: so a partition's next
        # owner still skips a duplicate or late event (entries are tombstoned once
        # content.events no longer retains the events they guard against).
        TopicSpec(t.items, {"cleanup.policy": "compact", "delete.retention.ms": str(_DAY_MS)}),
        # For trainers: every retraction, kept as long as the audit log, so a trainer
        # holding a dataset built long ago still learns what left it (the feed's
        # tombstones are gone after 7 days). Delete policy: each record stays, none
        # replaces another.
        # (STREAM_RETRACTIONS_RETENTION_DAYS, 3 years by default, like the audit log.)
        TopicSpec(
            t.retractions,
            {"cleanup.policy": "delete", "retention.ms": str(settings.retractions_retention_days * _DAY_MS)},
        ),
        # Shadow mode's differences (docs/policy-rollout.md): read while a rule change is
        # watched, then of no use (the metric keeps the counts). `topics create` always
        # makes it, so a shadow can be started later; a worker requires it only with one.
        TopicSpec(t.shadow, {"cleanup.policy": "delete", "retention.ms": str(7 * _DAY_MS)}),
    ]


async def create_topics(
    settings: Settings, more_configs: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """Create every missing topic; return each topic's outcome (`created` or `exists`).

    `more_configs` adds configs to named topics beyond the contract's (the benchmarks
    give the content topic a production broker's segment size, bench/common.py).
    """
    admin = AIOKafkaAdminClient(**client_options(settings), client_id="eligibility-topics")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        outcome: dict[str, str] = {}
        for spec in topic_specs(settings):
            if spec.name in existing:
                outcome[spec.name] = "exists"
                continue
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            settings.partitions,
                            settings.replication_factor,
                            topic_configs={**spec.configs, **(more_configs or {}).get(spec.name, {})},
                        )
                    ]
                )
                outcome[spec.name] = "created"
            except TopicAlreadyExistsError:
                outcome[spec.name] = "exists"
        # Creation returns before every broker's metadata knows the topic: wait for it,
        # so a worker started right after `topics create` finds its topics.
        deadline = asyncio.get_running_loop().time() + 30
        wanted = {spec.name for spec in topic_specs(settings)}
        while not wanted <= set(await admin.list_topics()):
            if asyncio.get_running_loop().time() > deadline:
                raise TopicLayoutError(f"topics not visible 30 s after creation: {sorted(wanted)}")
            await asyncio.sleep(0.2)
        return outcome
    finally:
        await admin.close()


async def partition_counts(settings: Settings, names: list[str]) -> dict[str, int | None]:
    """Partitions of each named topic; None where the topic does not exist."""
    admin = AIOKafkaAdminClient(**client_options(settings), client_id="eligibility-check")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [n for n in names if n in existing]
        described: list[Any] = await admin.describe_topics(present) if present else []
        counts: dict[str, int | None] = dict.fromkeys(names)
        for topic in described:
            if topic.get("error_code", 0) == 0:
                counts[topic["topic"]] = len(topic["partitions"])
        return counts
    finally:
        await admin.close()


def layout_problems(counts: dict[str, int | None], inputs: tuple[str, ...]) -> list[str]:
    """What is wrong with the topic layout, in words an operator can act on. Pure."""
    problems = [f"topic {name!r} does not exist" for name, n in counts.items() if n is None]
    input_counts = {name: counts[name] for name in inputs if counts.get(name) is not None}
    if len(set(input_counts.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in input_counts.items())
        problems.append(
            f"topics are not co-partitioned ({listed}): content events, profiles, objections and the "
            "filter's changelogs must have the same number of partitions so one worker owns a user's "
            "content and state"
        )
    return problems


async def check_layout(settings: Settings) -> dict[str, int | None]:
    """Raise TopicLayoutError unless every topic exists and the inputs (and deferred) are co-partitioned."""
    names = [spec.name for spec in topic_specs(settings)]
    if settings.shadow_policy_path is None:
        names.remove(settings.topics.shadow)  # only a worker with a shadow policy writes it
    counts = await partition_counts(settings, names)
    problems = layout_problems(counts, (*settings.topics.inputs(), *settings.topics.changelogs()))
    if problems:
        raise TopicLayoutError(
            "refusing to start: "
            + "; ".join(problems)
            + ". Create the topics with `python -m stream topics create` (STREAM_PARTITIONS sets the count), "
            "or repartition the inputs to the same count."
        )
    return counts
