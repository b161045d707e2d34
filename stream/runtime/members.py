"""Removing static members that will not come back: what a scale-in needs (KIP-345).

A static member (STREAM_GROUP_INSTANCE_ID) sends no LeaveGroup when it stops, so that a
worker restarted under the same id gets its partitions back without a rebalance. A
member that will not come back (a scale-in, a pod renamed, `--processes` lowered) so
keeps its partitions, undecided, until its session timeout (30 s) has run out. Kafka's
answer is its admin client's `removeMembersFromConsumerGroup`: a LeaveGroup request of
version 3 or later that names the members by instance id. aiokafka 0.14 speaks
LeaveGroup v0 and v1 only, and `kafka-consumer-groups` has no option for it (KIP-670
proposed one). So version 3 is declared here with aiokafka's protocol classes (`Request`,
`RequestStruct`, `Response`, the way its `aiokafka.protocol.api` documents for a
request), and sent with its public client (`AIOKafkaClient.coordinator_lookup`,
`send`), which negotiates the version with the broker: a broker older than Kafka 2.4
(no LeaveGroup v3) is refused with IncompatibleBrokerVersion.

Removing a member that is still running is harmless: its next heartbeat is refused,
and it joins again under the same instance id, in a later generation (so
`membership.MembershipWatch` does not take it for a clash), after one rebalance.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from typing import Any, Final

from aiokafka import AIOKafkaClient
from aiokafka import errors as kafka_errors
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from stream.config import Settings
from stream.connection import client_options
from stream.errors import StreamError

# A coordinator that moves or is still loading the group is asked again, for at most this long.
COORDINATOR_RETRY_SECONDS: Final = 30.0
_RETRY_PAUSE_SECONDS: Final = 0.5
_GROUP_COORDINATOR: Final = 0  # FindCoordinator's key type for a consumer group
# The longest string the protocol carries (an INT16 length). Kafka's Java client holds
# group instance ids to a topic name's rule, but the broker takes any string, and so
# does aiokafka, so any id a worker could have joined with can be named here.
_MAX_ID_BYTES: Final = 32767
_RETRIABLE: Final = (
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupCoordinatorNotAvailableError,
    kafka_errors.GroupLoadInProgressError,
)


class LeaveGroupResponse_v3(Response):  # type: ignore[misc]  # aiokafka ships no types
    """LeaveGroup v3's response (Kafka's LeaveGroupResponse.json): an error for the request, and one per member."""

    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")), ("error_code", Int16)),
        ),
    )


class LeaveGroupRequest_v3(RequestStruct):  # type: ignore[misc]  # aiokafka ships no types
    """LeaveGroup v3 (Kafka's LeaveGroupRequest.json; v4 and later are flexible, with tagged fields)."""

    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class RemoveStaticMembers(Request[LeaveGroupRequest_v3]):  # type: ignore[misc]  # aiokafka ships no types
    """LeaveGroup v3 for members named by instance id (member id empty: the broker finds them by instance id)."""

    API_KEY = 13

    def __init__(self, group_id: str, instance_ids: Sequence[str]) -> None:
        self._group_id = group_id
        self._instance_ids = list(instance_ids)

    def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
        """The request of the version negotiated: only v3 is declared."""
        return request_struct_class(self._group_id, [("", instance_id) for instance_id in self._instance_ids])


class Removal(enum.StrEnum):
    """What became of one instance id asked to be removed."""

    REMOVED = "removed"
    NOT_A_MEMBER = "not a member"


class RemovalError(StreamError):
    """The group coordinator refused a removal (an ACL, a group in an unexpected state)."""


async def remove_static_members(settings: Settings, instance_ids: Sequence[str]) -> dict[str, Removal]:
    """Remove the static members `instance_ids` from `settings.group_id`; what became of each.

    Their partitions are assigned again at once (one rebalance), rather than after their
    session timeout. An id the group does not hold is `NOT_A_MEMBER` (never an error: a
    second run, or a member whose session already ran out). A refusal for the whole
    request or for one member raises RemovalError; the broker out of reach, aiokafka's
    KafkaError.
    """
    ids = checked(instance_ids)
    client = AIOKafkaClient(**client_options(settings))
    try:
        await client.bootstrap()
        response = await _send(client, settings.group_id, ids)
    finally:
        await client.close()
    return outcomes(settings.group_id, ids, response)


def checked(instance_ids: Sequence[str]) -> list[str]:
    """The ids once each, in order; RemovalError for none, or one the protocol cannot carry (empty, long, not UTF-8)."""
    ids = list(dict.fromkeys(instance_ids))
    if not ids:
        raise RemovalError("name at least one instance id")
    for instance_id in ids:
        try:
            size = len(instance_id.encode("utf-8"))
        except UnicodeEncodeError:
            size = -1  # a lone surrogate: bytes of the command line that are not UTF-8
        if not 0 < size <= _MAX_ID_BYTES:
            raise RemovalError(
                f"{instance_id[:80]!r}: not a group instance id (empty, over {_MAX_ID_BYTES} bytes, or not UTF-8)"
            )
    return ids


async def _send(client: AIOKafkaClient, group_id: str, ids: list[str]) -> Any:
    """The LeaveGroup v3 response of the group's coordinator, asking again while the coordinator moves or loads."""
    deadline = asyncio.get_running_loop().time() + COORDINATOR_RETRY_SECONDS
    while True:
        try:
            node = await client.coordinator_lookup(_GROUP_COORDINATOR, group_id)
            try:
                response = await client.send(node, RemoveStaticMembers(group_id, ids))
            except (NotImplementedError, kafka_errors.IncompatibleBrokerVersion):
                # aiokafka's answer when the broker's LeaveGroup versions do not include 3.
                raise RemovalError(
                    f"group {group_id!r}: the group coordinator does not speak LeaveGroup v3 (Kafka 2.4 or "
                    "later), so static members cannot be removed; their partitions move once their "
                    "session timeout has run out"
                ) from None
            error = kafka_errors.for_code(response.error_code)
            if error is not kafka_errors.NoError:
                raise error()
            return response
        except _RETRIABLE:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(_RETRY_PAUSE_SECONDS)


def outcomes(group_id: str, ids: Sequence[str], response: Any) -> dict[str, Removal]:
    """Each id's outcome from the response's per-member errors; RemovalError for any other than none or unknown."""
    by_id: dict[str, int] = {instance_id: code for _, instance_id, code in response.members}
    result: dict[str, Removal] = {}
    refused: list[str] = []
    for instance_id in ids:
        if instance_id not in by_id:
            refused.append(f"{instance_id}: not in the coordinator's answer")
            continue
        error = kafka_errors.for_code(by_id[instance_id])
        if error is kafka_errors.NoError:
            result[instance_id] = Removal.REMOVED
        elif error is kafka_errors.UnknownMemberIdError:
            result[instance_id] = Removal.NOT_A_MEMBER
        else:
            refused.append(f"{instance_id}: {error.__name__}")
    if refused:
        raise RemovalError(f"group {group_id!r}: removal refused for " + "; ".join(refused))
    return result
