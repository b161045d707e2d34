"""The co-partitioning assignor: whole partition numbers, balanced, complete, deterministic.

Properties over any member count (1..8), partition counts and subscriptions, and the
layout that broke the default assignor (3 workers on 4 partitions), named.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from hypothesis import given
from hypothesis import strategies as st

from stream.runtime.assignor import CoPartitionedAssignor, Plan, assign_partition_numbers

INPUTS = ("content.events", "accounts.profiles", "accounts.objections")
TOPICS = (*INPUTS, "other.topic")


class FakeCluster:
    """Cluster metadata with fixed partition numbers per topic."""

    def __init__(self, partitions: Mapping[str, int]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self._partitions.get(topic)
        return None if count is None else set(range(count))


def held(plan: Plan) -> set[tuple[str, str, int]]:
    return {(member, topic, p) for member, topics in plan.items() for topic, ps in topics.items() for p in ps}


def numbers_of(plan: Plan, member: str) -> set[int]:
    return {p for ps in plan[member].values() for p in ps}


member_ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True)
partition_count = st.integers(min_value=1, max_value=16)
# Co-partitioned inputs: one count for all; and a mix-up: each topic its own count.
same_counts = partition_count.map(lambda n: dict.fromkeys(INPUTS, n))
any_counts = st.dictionaries(st.sampled_from(TOPICS), partition_count, min_size=1)


@st.composite
def uniform_groups(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, range]]:
    """Members that all subscribe to the same topics, of equal or differing partition counts."""
    counts = draw(st.one_of(same_counts, any_counts))
    topics = sorted(counts)
    members = draw(member_ids)
    return {m: topics for m in members}, {t: range(n) for t, n in counts.items()}


@st.composite
def mixed_groups(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, range]]:
    """Members of any subscriptions, some topics possibly unknown to the metadata."""
    counts = draw(any_counts)
    members = draw(member_ids)
    subscriptions = {m: draw(st.lists(st.sampled_from(TOPICS), min_size=1, unique=True)) for m in members}
    return subscriptions, {t: range(n) for t, n in counts.items()}


def expected_pieces(
    subscriptions: Mapping[str, list[str]], partitions: Mapping[str, range]
) -> Counter[tuple[str, int]]:
    subscribed = {t for ts in subscriptions.values() for t in ts}
    return Counter((t, p) for t in subscribed if t in partitions for p in partitions[t])


@given(uniform_groups())
def test_assign_same_subscription_each_member_holds_whole_numbers(
    group: tuple[dict[str, list[str]], dict[str, range]],
) -> None:
    subscriptions, partitions = group
    plan = assign_partition_numbers(subscriptions, partitions)
    for member in plan:
        for number in numbers_of(plan, member):
            having = {t for t in partitions if number in partitions[t]}
            assert {t for t, ps in plan[member].items() if number in ps} == having


@given(uniform_groups())
def test_assign_same_subscription_is_balanced_and_extra_members_idle(
    group: tuple[dict[str, list[str]], dict[str, range]],
) -> None:
    subscriptions, partitions = group
    plan = assign_partition_numbers(subscriptions, partitions)
    all_numbers = {p for ps in partitions.values() for p in ps}
    counts = [len(numbers_of(plan, m)) for m in plan]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == len(all_numbers)  # a number is held by one member only
    assert sum(1 for c in counts if c) == min(len(plan), len(all_numbers))


@given(st.one_of(uniform_groups(), mixed_groups()))
def test_assign_any_subscriptions_every_partition_exactly_once_to_a_subscriber(
    group: tuple[dict[str, list[str]], dict[str, range]],
) -> None:
    subscriptions, partitions = group
    plan = assign_partition_numbers(subscriptions, partitions)
    assert set(plan) == set(subscriptions)
    pieces = Counter((t, p) for _, t, p in held(plan))
    assert pieces == expected_pieces(subscriptions, partitions)
    for member, topics in plan.items():
        assert set(topics) <= set(subscriptions[member])
        assert all(ps == sorted(ps) for ps in topics.values())


@given(mixed_groups())
def test_assign_any_subscriptions_number_stays_whole_when_one_member_subscribes_to_all_its_topics(
    group: tuple[dict[str, list[str]], dict[str, range]],
) -> None:
    subscriptions, partitions = group
    plan = assign_partition_numbers(subscriptions, partitions)
    subscribed = {t for ts in subscriptions.values() for t in ts}
    numbers = {p for t in subscribed if t in partitions for p in partitions[t]}
    for number in numbers:
        topics = {t for t in subscribed if t in partitions and number in partitions[t]}
        if any(topics <= set(ts) for ts in subscriptions.values()):
            holders = {m for m, t, p in held(plan) if p == number}
            assert len(holders) == 1, (number, holders)


@given(st.one_of(uniform_groups(), mixed_groups()), st.randoms(use_true_random=False))
def test_assign_same_group_in_any_order_gives_the_same_plan(
    group: tuple[dict[str, list[str]], dict[str, range]], rnd: random.Random
) -> None:
    subscriptions, partitions = group
    plan = assign_partition_numbers(subscriptions, partitions)
    members = list(subscriptions)
    rnd.shuffle(members)
    shuffled_subs = {m: rnd.sample(subscriptions[m], len(subscriptions[m])) for m in members}
    shuffled_parts = {
        t: rnd.sample(list(partitions[t]), len(partitions[t])) for t in rnd.sample(list(partitions), len(partitions))
    }
    assert assign_partition_numbers(shuffled_subs, shuffled_parts) == plan
    assert assign_partition_numbers(subscriptions, partitions) == plan


# -- through aiokafka's assignor protocol ------------------------------------------------


def run_assignor(
    assignor: type[CoPartitionedAssignor] | type[RoundRobinPartitionAssignor],
    members: list[str],
    partitions: Mapping[str, int],
    topics: tuple[str, ...] = INPUTS,
) -> dict[str, dict[str, set[int]]]:
    """What each member gets from `assignor`, after the encoding the group coordinator sends."""
    metadata = {m: assignor.metadata(topics) for m in members}
    # The leader receives the members' metadata encoded, as bytes.
    decoded = {m: ConsumerProtocolMemberMetadata.decode(md.encode()) for m, md in metadata.items()}
    result = assignor.assign(FakeCluster(partitions), decoded)
    out: dict[str, dict[str, set[int]]] = {}
    for member, assignment in result.items():
        received = ConsumerProtocolMemberAssignment.decode(assignment.encode())
        out[member] = {t: set(ps) for t, ps in received.assignment}
    return out


def test_assignor_three_members_on_four_partitions_hold_whole_numbers() -> None:
    """Issue 16, point 2: with aiokafka's default assignor no worker of three on four partitions got ready."""
    got = run_assignor(CoPartitionedAssignor, ["w-c", "w-a", "w-b"], dict.fromkeys(INPUTS, 4))
    assert got == {
        "w-a": {t: {0, 3} for t in INPUTS},
        "w-b": {t: {1} for t in INPUTS},
        "w-c": {t: {2} for t in INPUTS},
    }


def test_default_assignor_three_members_on_four_partitions_splits_numbers() -> None:
    """Why the worker does not keep aiokafka's default: round robin over all topics' partitions in one sequence."""
    got = run_assignor(RoundRobinPartitionAssignor, ["w-a", "w-b", "w-c"], dict.fromkeys(INPUTS, 4))
    assert any(len({frozenset(got[m].get(t, set())) for t in INPUTS}) > 1 for m in got)


def test_assignor_more_members_than_partitions_leaves_extra_members_idle_with_an_assignment() -> None:
    members = [f"w-{i}" for i in range(5)]
    got = run_assignor(CoPartitionedAssignor, members, dict.fromkeys(INPUTS, 4))
    assert [sorted(got[m].get("content.events", set())) for m in members] == [[0], [1], [2], [3], []]
    assert got["w-4"] == {}
    for m in members[:4]:
        assert got[m]["accounts.profiles"] == got[m]["accounts.objections"] == got[m]["content.events"]


def test_assignor_twelve_partitions_three_members_four_numbers_each() -> None:
    got = run_assignor(CoPartitionedAssignor, ["w-0", "w-1", "w-2"], dict.fromkeys(INPUTS, 12))
    numbers = [got[m]["content.events"] for m in ("w-0", "w-1", "w-2")]
    assert [len(n) for n in numbers] == [4, 4, 4]
    assert set().union(*numbers) == set(range(12))
    assert all(got[m][t] == got[m]["content.events"] for m in got for t in INPUTS)


def test_assignor_topic_unknown_to_metadata_is_left_out_and_the_rest_assigned() -> None:
    got = run_assignor(CoPartitionedAssignor, ["w-0", "w-1"], {"content.events": 2, "accounts.profiles": 2})
    assert got == {
        "w-0": {"content.events": {0}, "accounts.profiles": {0}},
        "w-1": {"content.events": {1}, "accounts.profiles": {1}},
    }


def test_assignor_differing_partition_counts_deals_the_union_of_numbers_whole() -> None:
    got = run_assignor(
        CoPartitionedAssignor, ["w-0", "w-1"], {"content.events": 4, "accounts.profiles": 2, "accounts.objections": 3}
    )
    assert got == {
        "w-0": {"content.events": {0, 2}, "accounts.profiles": {0}, "accounts.objections": {0, 2}},
        "w-1": {"content.events": {1, 3}, "accounts.profiles": {1}, "accounts.objections": {1}},
    }


def test_assignor_metadata_carries_the_subscription_and_the_protocol_name() -> None:
    metadata = CoPartitionedAssignor.metadata(["b", "a"])
    assert (metadata.version, metadata.subscription, metadata.user_data) == (0, ["a", "b"], b"")
    assert CoPartitionedAssignor.name == "copartitioned"


@given(st.lists(st.uuids(), min_size=3, max_size=3))
def test_assign_static_members_keep_their_numbers_whatever_ids_the_broker_gives_them(ids: list[object]) -> None:
    # The broker names a static member `<instance id>-<uuid>`, a new uuid at every join:
    # the members sort by instance id, so a full rebalance deals each the same numbers.
    # One name a prefix of another: ordered by member id alone, the uuid would decide.
    instances = ("eligibility-filter-0", "eligibility-filter-0-b", "eligibility-filter-1")
    members = {f"{instance}-{uuid}": instance for instance, uuid in zip(instances, ids, strict=True)}
    assert all(len(m) == len(i) + 37 for m, i in members.items())  # the broker's form: "-" and a UUID
    plan = assign_partition_numbers(dict.fromkeys(members, INPUTS), dict.fromkeys(INPUTS, range(4)))

    by_instance = {members[m]: numbers_of(plan, m) for m in plan}
    assert by_instance == {instances[0]: {0, 3}, instances[1]: {1}, instances[2]: {2}}
