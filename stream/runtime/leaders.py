"""Partition leaders as the consumer's own metadata knows them: the one private aiokafka attribute the worker reads.

aiokafka 0.14 has no public accessor for a partition's leader. The freshness gate
only compares two partitions' leaders (`gate.py`), in the metadata the consumer's
fetcher itself uses, so it reads `consumer._client.cluster` here and nowhere else.
`tests/unit/test_leaders.py` fails if aiokafka renames or removes it.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

# The leader's broker id of a partition; None (or -1) while it is not known.
LeaderOf = Callable[[TopicPartition], "int | None"]


def leader_lookup(consumer: AIOKafkaConsumer) -> LeaderOf:
    """A function giving a partition's leader from `consumer`'s current cluster metadata."""
    client = consumer._client  # noqa: SLF001, RUF100  # no public accessor (module docstring)

    def leader_of(tp: TopicPartition) -> int | None:
        # Read each time: the metadata object is the client's, updated as it refreshes.
        leader: int | None = client.cluster.leader_for_partition(tp)
        return leader

    return leader_of
