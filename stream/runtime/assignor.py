"""The consumer group's partition assignor: whole partition numbers, so co-partitioned inputs stay together.

The worker subscribes one consumer to `content.events`, `accounts.profiles` and
`accounts.objections`, which are keyed by account id and co-partitioned: partition
p of each holds the same accounts. Content of partition p may only be decided by the
worker that also holds p's profiles and objections (the freshness gate reads them).
aiokafka's default assignor (round robin) deals the partitions of all topics out in
one sequence, so any worker count that does not divide the partition count (3
workers on 4 partitions) gives a worker content p1 without profiles p1, and no batch
can pass the gate. (Its range assignor keeps numbers together only by coincidence:
it deals each topic on its own.)

This module owns the assignment plan: it deals out partition NUMBERS, and a member
holding number p holds p of every topic it subscribes to. The numbers are spread
evenly (counts differ by at most one), over the members in a stable order, so every
leader computes the same plan; members beyond the count of numbers hold nothing.
It knows nothing of the worker, the engine or the topics' roles, and keeps no state
between rebalances (no stickiness: a worker rebuilds a partition's state it lacks
from the changelogs, see `worker.py`).

Static members (STREAM_GROUP_INSTANCE_ID): a restarted member that rejoins within
its session gets its stored assignment back from the broker with no rebalance; the
assignor does not even run (the broker answers a rejoining static leader as a
follower, JoinGroup before v9, so it watches no metadata until the next rebalance).
When a rebalance does run, the order of the members is the broker's name for each
without its random suffix (`<instance id>-<uuid>`: the instance id), then the whole
id: the same instance ids get the same numbers at every rebalance, however often
their processes restarted (`tests/unit/test_assignor.py`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

log = logging.getLogger(__name__)

# The random part the broker appends to a member's name (a static member's instance
# id, a dynamic member's client id) to make its member id: "-" and a UUID.
_BROKER_SUFFIX = re.compile(r"-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# member id -> topic -> partitions, each list sorted.
Plan = dict[str, dict[str, list[int]]]


class PartitionMetadata(Protocol):
    """What the assignor reads of the cluster metadata (aiokafka's `ClusterMetadata` is one)."""

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """The topic's partition numbers, or None when the metadata does not know the topic."""


def assign_partition_numbers(
    subscriptions: Mapping[str, Collection[str]], partitions: Mapping[str, Collection[int]]
) -> Plan:
    """Deal out whole partition numbers over the members; pure, deterministic.

    `subscriptions` maps each member id to the topics it subscribes to, `partitions`
    each known topic to its partition numbers (a subscribed topic missing from it is
    not assigned). Every partition of every subscribed, known topic is assigned to
    exactly one of its subscribers. Number p goes whole to one member that subscribes
    to every topic having a partition p, the one holding the fewest numbers so far
    (ties: the first in the stable order above), so with the same subscription everywhere, as in
    this project, the counts of numbers differ by at most one.

    Topics of differing partition counts: the numbers are their union, and a number
    only some topics have goes whole over those. Members of differing subscriptions
    (only ever a mix-up of deployments): a number goes whole to a member that
    subscribes to all its topics, even if that leaves the others idle; only when no
    member does is it split, each topic's p to the least loaded of its subscribers.
    """
    members = sorted(subscriptions, key=lambda m: (_BROKER_SUFFIX.sub("", m), m))
    rank = {member: i for i, member in enumerate(members)}
    subscribed = {member: frozenset(subscriptions[member]) for member in members}
    topics_of: dict[int, list[str]] = {}
    for topic in sorted({t for topics in subscribed.values() for t in topics if t in partitions}):
        for number in partitions[topic]:
            topics_of.setdefault(number, []).append(topic)

    held = dict.fromkeys(members, 0)
    plan: Plan = {member: {} for member in members}

    def least_loaded(candidates: Iterable[str]) -> str:
        return min(candidates, key=lambda m: (held[m], rank[m]))

    split: list[int] = []
    for number in sorted(topics_of):
        topics = topics_of[number]
        whole = [m for m in members if subscribed[m].issuperset(topics)]
        if whole:
            holder = least_loaded(whole)
            held[holder] += 1
            for topic in topics:
                plan[holder].setdefault(topic, []).append(number)
            continue
        split.append(number)
        for topic in topics:
            holder = least_loaded(m for m in members if topic in subscribed[m])
            held[holder] += 1
            plan[holder].setdefault(topic, []).append(number)
    if split:
        log.warning(
            "no member subscribes to all topics of partition numbers %s: they are split, not co-partitioned", split
        )
    return plan


class CoPartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka ships no types
    """aiokafka's assignor protocol around `assign_partition_numbers`; the group protocol "copartitioned"."""

    name = "copartitioned"
    version = 0

    @classmethod
    def assign(
        cls, cluster: PartitionMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """Run on the group's leader: each member's assignment, from its subscription and the cluster metadata."""
        subscriptions = {member: frozenset(metadata.subscription) for member, metadata in members.items()}
        partitions: dict[str, set[int]] = {}
        for topic in sorted(frozenset[str]().union(*subscriptions.values())):
            found = cluster.partitions_for_topic(topic)
            if found is None:
                log.warning("no partition metadata for topic %s; it is not assigned", topic)
                continue
            partitions[topic] = found
        plan = assign_partition_numbers(subscriptions, partitions)
        return {
            member: ConsumerProtocolMemberAssignment(cls.version, sorted(plan[member].items()), b"")
            for member in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """What this member tells the leader when it joins: the topics it subscribes to."""
        return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Nothing to remember: the plan is computed afresh at every rebalance."""
