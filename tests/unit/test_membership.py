"""Static membership taken by another process (stream/runtime/membership.py): the watch's rule."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer

from stream.runtime.membership import InstanceIdConflict, MembershipWatch, membership


def test_watch_new_member_id_in_the_same_generation_is_a_conflict_naming_the_id() -> None:
    watch = MembershipWatch("eligibility-filter", "worker-0")
    watch.check((3, "worker-0-aaa"))
    watch.check(None)  # between a lost membership and the rejoin
    with pytest.raises(InstanceIdConflict, match=r"STREAM_GROUP_INSTANCE_ID='worker-0'.*never share an instance id"):
        watch.check((3, "worker-0-bbb"))


def test_watch_rejoin_in_a_later_generation_is_no_conflict() -> None:
    # A member that lost its session rejoins after the group rebalanced without it.
    watch = MembershipWatch("eligibility-filter", "worker-0")
    for seen in [(3, "worker-0-aaa"), (3, "worker-0-aaa"), (4, "worker-0-bbb"), (5, "worker-0-bbb")]:
        watch.check(seen)


def test_watch_without_instance_id_never_raises() -> None:
    watch = MembershipWatch("eligibility-filter", None)
    watch.check((3, "a"))
    watch.check((3, "b"))


async def test_membership_of_a_consumer_not_started_is_none() -> None:
    assert membership(AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id="g")) is None
