"""The co-partitioning assignor: whole partition numbers, balanced, complete, deterministic.

Properties over any member count (1..8), partition counts and subscriptions, and the
layout that broke the default assignor (3 workers on 4 partitions), named.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.runtime.assignor import Claim, CoPartitionedAssignor, Plan, assign_partition_numbers

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
    members: list[str] | Mapping[str, CoPartitionedAssignor],
    partitions: Mapping[str, int],
    topics: tuple[str, ...] = INPUTS,
) -> dict[str, dict[str, set[int]]]:
    """One rebalance through aiokafka's protocol: what each member gets, after the coordinator's encoding.

    `members` names new members (a fresh assignor each), or maps each to the assignor
    instance of its consumer, which claims what it was given in an earlier call.
    """
    instances = members if isinstance(members, Mapping) else {m: assignor() for m in members}
    metadata = {m: instance.metadata(topics) for m, instance in instances.items()}
    # The leader receives the members' metadata encoded, as bytes.
    decoded = {m: ConsumerProtocolMemberMetadata.decode(md.encode()) for m, md in metadata.items()}
    result = assignor.assign(FakeCluster(partitions), decoded)
    out: dict[str, dict[str, set[int]]] = {}
    for member, assignment in result.items():
        received = ConsumerProtocolMemberAssignment.decode(assignment.encode())
        instances[member].on_assignment(received)
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


def test_assignor_metadata_carries_the_subscription_the_protocol_name_and_once_assigned_a_claim() -> None:
    assignor = CoPartitionedAssignor()
    metadata = assignor.metadata(["b", "a"])
    assert (metadata.version, metadata.subscription, metadata.user_data) == (0, ["a", "b"], b"")
    assert CoPartitionedAssignor.name == "copartitioned"

    run_assignor(CoPartitionedAssignor, {"w-0": assignor, "w-1": CoPartitionedAssignor()}, dict.fromkeys(INPUTS, 4))
    claim = Claim.decode(assignor.metadata(INPUTS).user_data)
    assert claim == Claim(0, frozenset({0, 2}))


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


# -- stickiness: members keep what they hold up to their share ---------------------------


@st.composite
def sticky_groups(draw: st.DrawFn) -> tuple[list[str], int, dict[str, Claim]]:
    """A group after some change: members present now, and what each claims from the last plan.

    The last plan's holders may have left, new members claim nothing, and partitions
    may have been added (numbers no one claims) or removed (claims of numbers gone).
    """
    members = draw(st.lists(st.sampled_from([f"w-{i}" for i in range(5)]), min_size=1, max_size=4, unique=True))
    count = draw(st.integers(min_value=1, max_value=6))
    earlier = [*members, "gone-0", "gone-1"]
    holder = {n: draw(st.sampled_from([*earlier, None])) for n in range(draw(st.integers(0, count + 2)))}
    claims = {
        m: Claim(7, frozenset(n for n, h in holder.items() if h == m))
        for m in earlier
        if m in members and draw(st.booleans())
    }
    return members, count, claims


# The searches against the model: bounded for `make test`; HYPOTHESIS_PROFILE=long
# (`make faults`) digs deeper.
SEARCH = settings(max_examples=5000 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 300, deadline=None)


def moves(plan: Mapping[str, set[int]], claims: Mapping[str, Claim]) -> int:
    """Claimed numbers that leave their claimant (a claim of a number that no longer exists moves nothing)."""
    holder = {n: m for m, ns in plan.items() for n in ns}
    return sum(1 for m, c in claims.items() for n in c.numbers if n in holder and holder[n] != m)


def fewest_moves_of_any_balanced_plan(members: list[str], count: int, claims: Mapping[str, Claim]) -> int:
    """The model: every plan of `count` numbers over `members` tried, the balanced ones' fewest moves."""
    best = count + 1
    for holders in itertools.product(members, repeat=count):
        sizes = Counter(holders)
        if max(sizes.get(m, 0) for m in members) - min(sizes.get(m, 0) for m in members) > 1:
            continue
        plan = {m: {n for n, h in enumerate(holders) if h == m} for m in members}
        best = min(best, moves(plan, claims))
    return best


def balanced_with_fewest_moves(group: tuple[list[str], int, dict[str, Claim]]) -> dict[str, set[int]]:
    """The plan of `group` by numbers, checked balanced and moving no more claimed numbers than the model's best."""
    members, count, claims = group
    plan = assign_partition_numbers(dict.fromkeys(members, INPUTS), dict.fromkeys(INPUTS, range(count)), claims)
    numbers = {m: numbers_of(plan, m) for m in members}
    sizes = [len(ns) for ns in numbers.values()]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == count
    assert moves(numbers, claims) == fewest_moves_of_any_balanced_plan(members, count, claims)
    return numbers


@SEARCH
@given(sticky_groups())
def test_assign_sticky_moves_no_more_claimed_numbers_than_any_balanced_plan(
    group: tuple[list[str], int, dict[str, Claim]],
) -> None:
    balanced_with_fewest_moves(group)


@given(sticky_groups(), st.randoms(use_true_random=False))
def test_assign_sticky_same_group_and_claims_in_any_order_give_the_same_plan(
    group: tuple[list[str], int, dict[str, Claim]], rnd: random.Random
) -> None:
    members, count, claims = group
    plan = assign_partition_numbers(dict.fromkeys(members, INPUTS), dict.fromkeys(INPUTS, range(count)), claims)
    shuffled = rnd.sample(members, len(members))
    shuffled_claims = dict(rnd.sample(list(claims.items()), len(claims)))
    assert (
        assign_partition_numbers(dict.fromkeys(shuffled, INPUTS), dict.fromkeys(INPUTS, range(count)), shuffled_claims)
        == plan
    )


def test_assign_a_number_claimed_twice_stays_with_the_newer_epoch() -> None:
    # w-b was expelled (a long pause) while w-a took its number 1 over in a newer
    # plan; w-b comes back claiming 1 from the older one.
    claims = {"w-a": Claim(5, frozenset({0, 1})), "w-b": Claim(4, frozenset({1, 2}))}
    plan = assign_partition_numbers(dict.fromkeys(claims, INPUTS), dict.fromkeys(INPUTS, range(4)), claims)
    assert (numbers_of(plan, "w-a"), numbers_of(plan, "w-b")) == ({0, 1}, {2, 3})

    older_first = {"w-a": Claim(4, frozenset({0, 1})), "w-b": Claim(5, frozenset({1, 2}))}
    plan = assign_partition_numbers(dict.fromkeys(claims, INPUTS), dict.fromkeys(INPUTS, range(4)), older_first)
    assert (numbers_of(plan, "w-a"), numbers_of(plan, "w-b")) == ({0, 3}, {1, 2})


def test_assignor_a_third_member_on_twelve_partitions_takes_four_numbers_and_the_two_keep_eight() -> None:
    twelve = dict.fromkeys(INPUTS, 12)
    a, b, c = CoPartitionedAssignor(), CoPartitionedAssignor(), CoPartitionedAssignor()
    first = run_assignor(CoPartitionedAssignor, {"w-a": a, "w-b": b}, twelve)
    # The newcomer sorts first: dealt afresh, it would take 0, 3, 6, 9 and move eight numbers.
    second = run_assignor(CoPartitionedAssignor, {"w-0": c, "w-a": a, "w-b": b}, twelve)
    for member in ("w-a", "w-b"):
        assert len(second[member]["content.events"]) == 4
        assert second[member]["content.events"] <= first[member]["content.events"]
    assert len(second["w-0"]["content.events"]) == 4
    assert all(got[t] == got["content.events"] for got in second.values() for t in INPUTS)

    # w-a leaves: the others keep their numbers and share out its four.
    third = run_assignor(CoPartitionedAssignor, {"w-0": c, "w-b": b}, twelve)
    for member in ("w-0", "w-b"):
        assert len(third[member]["content.events"]) == 6
        assert third[member]["content.events"] >= second[member]["content.events"]
    claims = [Claim.decode(x.metadata(INPUTS).user_data) for x in (a, b, c)]
    assert [claim.epoch if claim else None for claim in claims] == [1, 2, 2]


@given(
    st.binary(max_size=64)
    | st.builds(
        orjson.dumps,
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.sampled_from(["epoch", "numbers", "warm", "x"]), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    )
)
def test_claim_decode_of_any_bytes_is_a_claim_of_int32_numbers_or_none(user_data: bytes) -> None:
    claim = Claim.decode(user_data)
    if claim is not None:
        assert all(type(n) is int and 0 <= n < 2**31 for n in (claim.epoch, *claim.numbers))
        assert Claim.decode(claim.encode()) == claim


edge_ints = st.sampled_from([0, 1, 2**31 - 1, 2**31, -1, True, 1.0, "1", None])


@given(
    st.fixed_dictionaries(
        {"epoch": edge_ints, "numbers": st.lists(edge_ints, max_size=3)},
        optional={"warm": st.lists(edge_ints, max_size=3) | edge_ints},
    )
)
def test_claim_decode_of_claim_shaped_values_keeps_only_int32_claims(raw: dict[str, Any]) -> None:
    claim = Claim.decode(orjson.dumps(raw))
    warm = raw.get("warm", [])
    values = [raw["epoch"], *raw["numbers"], *warm] if isinstance(warm, list) else [None]
    assert (claim is not None) == all(type(v) is int and 0 <= v < 2**31 for v in values)
    if claim is not None:
        assert claim.numbers == frozenset(raw["numbers"]) and not claim.warm & claim.numbers


def test_assignor_a_member_with_an_unreadable_claim_is_dealt_as_new() -> None:
    members = {
        m: ConsumerProtocolMemberMetadata(0, list(INPUTS), data) for m, data in (("w-0", b"\xff{"), ("w-1", b""))
    }
    result = CoPartitionedAssignor.assign(FakeCluster(dict.fromkeys(INPUTS, 2)), members)
    assert {m: a.assignment for m, a in result.items()} == {
        "w-0": [(t, [0]) for t in sorted(INPUTS)],
        "w-1": [(t, [1]) for t in sorted(INPUTS)],
    }


# -- warm stores: a number that moves goes where its store is -----------------------------


@st.composite
def warm_groups(draw: st.DrawFn) -> tuple[list[str], int, dict[str, Claim]]:
    """`sticky_groups` whose members also name stores on disk of numbers they do not hold."""
    members, count, claims = draw(sticky_groups())
    out = dict(claims)
    for member in members:
        warm = frozenset(draw(st.sets(st.integers(0, count), max_size=3)))
        held = claims[member] if member in claims else Claim(7, frozenset())
        out[member] = Claim(held.epoch, held.numbers, warm - held.numbers)
    return members, count, out


@SEARCH
@given(warm_groups())
def test_assign_warm_moves_as_few_and_rebuilds_a_store_only_where_its_holders_are_full_of_their_own(
    group: tuple[list[str], int, dict[str, Claim]],
) -> None:
    members, count, claims = group
    numbers = balanced_with_fewest_moves(group)

    def own(member: str, number: int) -> bool:
        return number in claims[member].numbers or number in claims[member].warm

    for x in members:
        # A member giving up numbers gives up first those another member has a store of.
        shed = {n for n in claims[x].numbers - numbers[x] if n < count}
        kept = claims[x].numbers & numbers[x]
        stored_elsewhere = {n for n in range(count) if any(n in claims[y].warm for y in members if y != x)}
        assert not (shed - stored_elsewhere and kept & stored_elsewhere), (x, numbers)
        # A number lands where its store must be rebuilt only when every member with
        # its store is full of numbers it holds or has a store of.
        for n in numbers[x]:
            if not own(x, n):
                for y in members:
                    if n in claims[y].warm:
                        assert all(own(y, k) for k in numbers[y]), (n, x, y, numbers)


def test_assignor_a_member_back_after_its_session_takes_its_own_numbers_again() -> None:
    # w-1 is gone past its session (a node drained, a long pause): the others take
    # its numbers over. Its replacement starts on w-1's disk, holding nothing but
    # naming w-1's stores: it gets those numbers back, and the others theirs.
    six = dict.fromkeys(INPUTS, 6)
    a, b = CoPartitionedAssignor(), CoPartitionedAssignor()
    first = run_assignor(CoPartitionedAssignor, {"w-0": a, "w-1": CoPartitionedAssignor(), "w-2": b}, six)
    run_assignor(CoPartitionedAssignor, {"w-0": a, "w-2": b}, six)
    stores = first["w-1"]["content.events"]
    back = run_assignor(CoPartitionedAssignor, {"w-0": a, "w-1": CoPartitionedAssignor(lambda: stores), "w-2": b}, six)
    assert {m: got["content.events"] for m, got in back.items()} == {
        m: got["content.events"] for m, got in first.items()
    }


def test_assign_a_store_only_one_member_has_goes_to_it_before_one_two_have() -> None:
    # 0 and 1 are to be dealt, one number each; w-a has stores of both, w-b of 0 only.
    # Dealt in their order, w-a would take 0 and w-b rebuild 1.
    claims = {"w-a": Claim(0, frozenset(), frozenset({0, 1})), "w-b": Claim(0, frozenset(), frozenset({0}))}
    plan = assign_partition_numbers(dict.fromkeys(claims, INPUTS), dict.fromkeys(INPUTS, range(2)), claims)
    assert (numbers_of(plan, "w-a"), numbers_of(plan, "w-b")) == ({1}, {0})


def test_assignor_a_join_names_no_stores_when_naming_them_fails() -> None:
    def broken() -> list[int]:
        raise OSError("the data directory is gone")

    assignor = CoPartitionedAssignor(broken)
    run_assignor(CoPartitionedAssignor, {"w-0": assignor}, dict.fromkeys(INPUTS, 2))
    assert Claim.decode(assignor.metadata(INPUTS).user_data) == Claim(0, frozenset({0, 1}))
