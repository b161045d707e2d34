"""Static membership's one hazard: two processes under one STREAM_GROUP_INSTANCE_ID.

A static member that joins the group with an instance id the group already holds
replaces the member of that id (that is how a restarted worker takes its partitions
back without a rebalance). Kafka then fences the replaced member: FENCED_INSTANCE_ID
on its next heartbeat or commit, when the request names the instance id. aiokafka
0.14's heartbeats and commits do not name it, so the broker answers
UNKNOWN_MEMBER_ID instead, and aiokafka rejoins under the same instance id, replacing
the other process in turn. Two processes sharing an id would take the membership
from each other every few seconds, both holding the same partitions, never failing.

So the worker watches its own membership: a new member id within the same
generation is that replacement (a member that lost its session legitimately rejoins
in a later generation, after the group rebalanced without it). The worker then stops
with `InstanceIdConflict`, a message naming the id, and a non-zero exit status; the
other process does the same at its own next rejoin. When the two joins cross (the
second's first JoinGroup is answered with an error because the first took the id back
within milliseconds), the second has no membership of its own yet to see taken, and
the first stops before it takes the id again: the second then runs on as the id's
only process, which is no longer a clash; the first's exit has shown it.

aiokafka has no public accessor for the member id and generation; they are read
here and nowhere else, from `consumer._coordinator`, and `tests/unit/test_membership.py`
fails if aiokafka renames them.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from stream.errors import StreamError

# (generation, member id) of a consumer that is a member of its group.
Membership = tuple[int, str]


class InstanceIdConflict(StreamError):
    """Raised when another process joined the consumer group under this worker's STREAM_GROUP_INSTANCE_ID."""


def membership(consumer: AIOKafkaConsumer) -> Membership | None:
    """The consumer's generation and member id, or None while it is not a member (before a join, between joins)."""
    coordinator = consumer._coordinator  # noqa: SLF001, RUF100  # no public accessor (module docstring)
    if coordinator is None:
        return None
    generation: int = coordinator.generation
    member_id: str = coordinator.member_id
    return (generation, member_id) if generation > 0 and member_id else None


class MembershipWatch:
    """Notices this worker's static membership being taken by another process with the same instance id."""

    def __init__(self, group_id: str, instance_id: str | None) -> None:
        self._group_id = group_id
        self._instance_id = instance_id
        self._last: Membership | None = None

    def check(self, current: Membership | None) -> None:
        """Compare with the membership seen last; raise InstanceIdConflict on a new member id in the same generation."""
        if self._instance_id is None or current is None:
            return  # dynamic membership cannot be taken over; or not a member at this moment
        last, self._last = self._last, current
        if last is not None and last[0] == current[0] and last[1] != current[1]:
            raise InstanceIdConflict(
                f"another process joined consumer group {self._group_id!r} with this worker's "
                f"STREAM_GROUP_INSTANCE_ID={self._instance_id!r} and took its partitions (generation "
                f"{current[0]}): two processes must never share an instance id; this worker stops"
            )
