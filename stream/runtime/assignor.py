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
It knows nothing of the worker, the engine or the topics' roles.

Sticky: a partition moves only when the balance needs it. Each member tells the
leader, in its join's user data, the numbers it holds and the epoch of the plan that
gave them (a `Claim`); the leader lets every member keep what it holds up to its
share, and deals only the rest. A number that moves is a store its new holder
rebuilds from the changelogs unless it has one on disk (`partitions.py`,
`recovery.py`), and the rebuild of a large partition takes as long as reading its
compacted topics: a third worker joining two on twelve partitions moves four
numbers, where dealing them afresh moves up to eight (the newcomer first in the
order). The leader numbers each plan one past the newest epoch claimed: a member
that missed a rebalance (expelled and back) claims an older epoch, and the current
holder keeps the number.
A claim also names the stores the member has on disk and does not hold (`warm`): a
number that must move goes, where the shares leave room, to a member that only
brings its store up to date (a pod back on its volume after its session ran out),
and a member over its share gives those up first. That choice is greedy (the
numbers with the fewest such members first), not a search for the best matching:
a store is rebuilt only where each member that has it is full of numbers it holds
or has stores of (`tests/unit/test_assignor.py`).

Static members (STREAM_GROUP_INSTANCE_ID): a restarted member that rejoins within
its session gets its stored assignment back from the broker with no rebalance; the
assignor does not even run (the broker answers a rejoining static leader as a
follower, JoinGroup before v9, so it watches no metadata until the next rebalance).
When a rebalance does run, the order of the members is the broker's name for each
without its random suffix (`<instance id>-<uuid>`: the instance id), then the whole
id: numbers no one claims or has a store of go out in that order, so the same
instance ids get the same numbers from a fresh start on empty disks, however often
their processes restarted (`tests/unit/test_assignor.py`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson
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


@dataclass(frozen=True)
class Claim:
    """What a member tells the leader when it joins.

    `numbers` are the partition numbers of its last assignment and `epoch` that
    plan's; `warm` the numbers it does not hold but has a store of on disk (from an
    earlier assignment, or from before its process restarted), which it would only
    bring up to date, not rebuild.
    """

    epoch: int
    numbers: frozenset[int]
    warm: frozenset[int] = frozenset()

    def encode(self) -> bytes:
        """The join's user data: `{"epoch": e, "numbers": [...], "warm": [...]}`."""
        return orjson.dumps({"epoch": self.epoch, "numbers": sorted(self.numbers), "warm": sorted(self.warm)})

    @classmethod
    def decode(cls, user_data: bytes) -> Claim | None:
        """A member's claim, or None when it sends none (a new member, another version) or an unreadable one."""
        # The leader's assignment carries the plan's epoch in the same form, with no numbers.
        if not user_data:
            return None
        try:
            raw = orjson.loads(user_data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(raw, dict):
            return None
        epoch, numbers, warm = raw.get("epoch"), raw.get("numbers"), raw.get("warm", [])
        if not isinstance(epoch, int) or not isinstance(numbers, list) or not isinstance(warm, list):
            return None
        if not _is_int32(epoch) or not all(_is_int32(n) for n in (*numbers, *warm)):
            return None
        return cls(epoch, frozenset(numbers), frozenset(warm) - frozenset(numbers))


def _is_int32(value: object) -> bool:
    # A Kafka partition number is an INT32; anything else in a claim is not one of ours.
    return type(value) is int and 0 <= value < 2**31


def next_epoch(claims: Iterable[Claim]) -> int:
    """The epoch of a new plan: one past the newest claimed, so the members' next claims outrank every older one."""
    return min(max((c.epoch for c in claims), default=-1) + 1, 2**31 - 1)


def assign_partition_numbers(
    subscriptions: Mapping[str, Collection[str]],
    partitions: Mapping[str, Collection[int]],
    claims: Mapping[str, Claim] | None = None,
) -> Plan:
    """Deal out whole partition numbers over the members, keeping what they hold; pure, deterministic.

    `subscriptions` maps each member id to the topics it subscribes to, `partitions`
    each known topic to its partition numbers (a subscribed topic missing from it is
    not assigned), `claims` a member id to what that member holds now. Every
    partition of every subscribed, known topic is assigned to exactly one of its
    subscribers. Number p goes whole to one member that subscribes to every topic
    having a partition p.

    Shares: with N numbers over M members, N mod M members hold one more than the
    others. The larger shares go first to members that would keep one more of their
    own numbers, so that the fewest numbers move, then to members that could take one
    more whose store they have (then the stable order above). Each member keeps its
    claimed numbers up to its share (a number claimed twice stays with the newer
    epoch, then the first in the stable order); one that must give some up gives up
    first those another member has a store of, then its highest. A number that moves
    goes to a member with its store and room (the numbers fewer members have first),
    else to the member under its share holding the fewest (ties: the stable order).
    With the same subscription everywhere, as in this project, counts differ by at
    most one, and no plan with that balance moves fewer claimed numbers.

    Topics of differing partition counts: the numbers are their union, and a number
    only some topics have goes whole over those. Members of differing subscriptions
    (only ever a mix-up of deployments): a number goes whole to a member that
    subscribes to all its topics, even past that member's share; only when no member
    does is it split, each topic's p to the least loaded of its subscribers.
    """
    claims = claims or {}
    members = sorted(subscriptions, key=lambda m: (_BROKER_SUFFIX.sub("", m), m))
    rank = {member: i for i, member in enumerate(members)}
    subscribed = {member: frozenset(subscriptions[member]) for member in members}
    topics_of: dict[int, list[str]] = {}
    for topic in sorted({t for topics in subscribed.values() for t in topics if t in partitions}):
        for number in partitions[topic]:
            topics_of.setdefault(number, []).append(topic)
    whole_holders = {n: [m for m in members if subscribed[m].issuperset(ts)] for n, ts in topics_of.items()}

    # Who holds each number now: the newest claim by a member that may hold it whole.
    claimant: dict[int, str] = {}
    for member in members:
        claim = claims.get(member)
        if claim is None:
            continue
        for number in claim.numbers:
            if member not in whole_holders.get(number, ()):
                continue
            other = claimant.get(number)
            if other is None or claim.epoch > claims[other].epoch:
                claimant[number] = member
    claimed: dict[str, list[int]] = {member: [] for member in members}
    for number in sorted(claimant):
        claimed[claimant[number]].append(number)

    dealt = sum(1 for holders in whole_holders.values() if holders)
    base, extra = divmod(dealt, len(members)) if members else (0, 0)
    warm = {member: claims[member].warm & topics_of.keys() if member in claims else frozenset() for member in members}
    # The larger shares first to members that would keep one more of their own
    # numbers, then to those that could take one more warm.
    by_claims = sorted(
        members, key=lambda m: (len(claimed[m]) <= base, len(claimed[m]) + len(warm[m]) <= base, rank[m])
    )
    share = {member: base + (1 if i < extra else 0) for i, member in enumerate(by_claims)}

    held = dict.fromkeys(members, 0)
    plan: Plan = {member: {} for member in members}

    def give(member: str, number: int, topics: Iterable[str]) -> None:
        held[member] += 1
        for topic in topics:
            plan[member].setdefault(topic, []).append(number)

    def warm_elsewhere(number: int, member: str) -> bool:
        return any(number in warm[m] for m in whole_holders[number] if m != member)

    # A member over its share gives up first the numbers another member has a store of.
    kept: set[int] = set()
    for member in members:
        keep = sorted(claimed[member], key=lambda n: (warm_elsewhere(n, member), n))[: share[member]]
        for number in sorted(keep):
            give(member, number, topics_of[number])
        kept.update(keep)

    def least_loaded(candidates: Iterable[str]) -> str:
        return min(candidates, key=lambda m: (held[m], rank[m]))

    def open_to(number: int) -> list[str]:
        return [m for m in whole_holders[number] if held[m] < share[m]]

    # Numbers that move go to a member with their store where one has room, the
    # numbers fewer members have first, so that one does not take the room another
    # could only use warm. One pass, O(numbers x members): it runs on the leader's loop.
    moving = sorted(set(topics_of) - kept)
    stored_at = {n: [m for m in whole_holders[n] if n in warm[m]] for n in moving}
    rest: list[int] = []
    for number in sorted(moving, key=lambda n: (len(stored_at[n]) or len(members) + 1, n)):
        room = [m for m in stored_at[number] if held[m] < share[m]]
        if room:
            give(least_loaded(room), number, topics_of[number])
        else:
            rest.append(number)
    rest.sort()

    split: list[int] = []
    for number in rest:
        topics = topics_of[number]
        whole = whole_holders[number]
        if whole:
            give(least_loaded(open_to(number) or whole), number, topics)
            continue
        split.append(number)
        for topic in topics:
            holder = least_loaded(m for m in members if topic in subscribed[m])
            held[holder] += 1
            plan[holder].setdefault(topic, []).append(number)
    for assigned in plan.values():
        for numbers in assigned.values():
            numbers.sort()
    if split:
        log.warning(
            "no member subscribes to all topics of partition numbers %s: they are split, not co-partitioned", split
        )
    return plan


class CoPartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka ships no types
    """aiokafka's assignor protocol around `assign_partition_numbers`; the group protocol "copartitioned".

    One instance per consumer: it remembers that consumer's assignment (`on_assignment`)
    to claim it at the next join (`metadata`), with the numbers `warm` names (the
    stores on the worker's disk). The leader's `assign` keeps no state.
    """

    name = "copartitioned"
    version = 0

    def __init__(self, warm: Callable[[], Iterable[int]] = tuple) -> None:
        self._warm = warm
        self._claim: Claim | None = None

    @classmethod
    def assign(
        cls, cluster: PartitionMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """Run on the group's leader: each member's assignment, from its subscription, its claim and the metadata."""
        subscriptions = {member: frozenset(metadata.subscription) for member, metadata in members.items()}
        claims: dict[str, Claim] = {}
        for member, metadata in members.items():
            claim = Claim.decode(metadata.user_data)
            if claim is not None:
                claims[member] = claim
            elif metadata.user_data:
                log.warning("member %s sent a claim this assignor cannot read; it is dealt as a new member", member)
        partitions: dict[str, set[int]] = {}
        for topic in sorted(frozenset[str]().union(*subscriptions.values())):
            found = cluster.partitions_for_topic(topic)
            if found is None:
                log.warning("no partition metadata for topic %s; it is not assigned", topic)
                continue
            partitions[topic] = found
        plan = assign_partition_numbers(subscriptions, partitions, claims)
        epoch = Claim(next_epoch(claims.values()), frozenset()).encode()
        return {
            member: ConsumerProtocolMemberAssignment(cls.version, sorted(plan[member].items()), epoch)
            for member in members
        }

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """What this member tells the leader when it joins: its topics, and its claim when it has one."""
        held = self._claim or Claim(0, frozenset())
        try:
            warm = frozenset(self._warm())
        except Exception:  # raised inside aiokafka's join, it would fail the join; the stores are a preference
            log.warning("could not name the stores on disk; this join names none", exc_info=True)
            warm = frozenset()
        claim = Claim(held.epoch, held.numbers, warm - held.numbers)
        user_data = claim.encode() if claim.numbers or claim.warm else b""
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Remember the numbers just assigned and the plan's epoch, to claim them at the next join."""
        plan = Claim.decode(assignment.user_data)
        numbers = frozenset(p for _, partitions in assignment.assignment for p in partitions)
        self._claim = Claim(plan.epoch if plan is not None else 0, numbers)
