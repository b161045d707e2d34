"""LeaveGroup v3 as members.py declares it: Kafka's wire format, the version chosen, each member's outcome.

The bytes are written out by hand from Kafka's LeaveGroupRequest.json and
LeaveGroupResponse.json (v3: not flexible, INT16-length strings, INT32-count arrays).
The outcomes are searched against a small model: per instance id, error 0 is removed,
UNKNOWN_MEMBER_ID (25) is not a member, anything else or no answer refuses the whole
removal naming that id. The removal against the real broker is
tests/integration/test_members.py.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, cast

import pytest
from aiokafka import errors as kafka_errors
from hypothesis import given
from hypothesis import strategies as st

from stream.runtime import members
from stream.runtime.members import (
    LeaveGroupRequest_v3,
    LeaveGroupResponse_v3,
    Removal,
    RemovalError,
    RemoveStaticMembers,
    checked,
    outcomes,
)


def kstr(s: str | None) -> bytes:
    """Kafka's STRING / NULLABLE_STRING: INT16 length, then UTF-8."""
    if s is None:
        return struct.pack(">h", -1)
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def test_the_request_is_leave_group_v3_naming_members_by_instance_id_with_an_empty_member_id() -> None:
    built = RemoveStaticMembers("eligibility-filter", ["pod-3", "pod-4"]).prepare({13: (0, 5)})
    assert isinstance(built, LeaveGroupRequest_v3)
    assert (built.API_KEY, built.API_VERSION, built.FLEXIBLE_VERSION) == (13, 3, False)
    expected = kstr("eligibility-filter") + struct.pack(">i", 2) + kstr("") + kstr("pod-3") + kstr("") + kstr("pod-4")
    assert built.encode() == expected


def test_a_broker_without_leave_group_v3_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(NotImplementedError):
        RemoveStaticMembers("g", ["pod-3"]).prepare({13: (0, 2)})


class _OldBroker:
    """A client whose broker speaks LeaveGroup up to v2: aiokafka refuses to build the request."""

    def __init__(self) -> None:
        self.sent = 0

    async def coordinator_lookup(self, kind: int, key: str) -> int:
        return 1

    async def send(self, node: int, request: RemoveStaticMembers) -> Any:
        self.sent += 1
        return request.prepare({13: (0, 2)})


def test_an_old_coordinator_is_a_clear_removal_error_not_a_traceback() -> None:
    client = _OldBroker()
    with pytest.raises(RemovalError, match="does not speak LeaveGroup v3"):
        asyncio.run(members._send(cast(Any, client), "g", ["pod-3"]))  # noqa: SLF001  # our own module
    assert client.sent == 1


class _Moving:
    """A coordinator that answers NOT_COORDINATOR `moves` times, then removes."""

    def __init__(self, moves: int) -> None:
        self.moves = moves
        self.asked = 0

    async def coordinator_lookup(self, kind: int, key: str) -> int:
        assert kind == 0  # a consumer group's coordinator
        return 1

    async def send(self, node: int, request: RemoveStaticMembers) -> Any:
        self.asked += 1
        code = 16 if self.asked <= self.moves else 0
        return LeaveGroupResponse_v3(0, code, [("pod-3-x", "pod-3", 0)])


def test_a_coordinator_that_moves_is_asked_again() -> None:
    client = _Moving(moves=2)
    response = asyncio.run(members._send(cast(Any, client), "g", ["pod-3"]))  # noqa: SLF001
    assert client.asked == 3
    assert outcomes("g", ["pod-3"], response) == {"pod-3": Removal.REMOVED}


def test_a_refusal_of_the_whole_request_is_kafka_s_error() -> None:
    class Refusing(_Moving):
        async def send(self, node: int, request: RemoveStaticMembers) -> Any:
            return LeaveGroupResponse_v3(0, 30, [])  # GROUP_AUTHORIZATION_FAILED

    with pytest.raises(kafka_errors.GroupAuthorizationFailedError):
        asyncio.run(members._send(cast(Any, Refusing(0)), "g", ["pod-3"]))  # noqa: SLF001


def test_the_response_decodes_from_kafka_s_bytes() -> None:
    raw = (
        struct.pack(">i", 0)  # throttle_time_ms
        + struct.pack(">h", 0)  # error_code
        + struct.pack(">i", 2)
        + kstr("pod-3-1f2e")
        + kstr("pod-3")
        + struct.pack(">h", 0)
        + kstr("")
        + kstr("pod-9")
        + struct.pack(">h", 25)
    )
    response = LeaveGroupResponse_v3.decode(raw)
    assert response.error_code == 0
    assert outcomes("g", ["pod-3", "pod-9"], response) == {"pod-3": Removal.REMOVED, "pod-9": Removal.NOT_A_MEMBER}


# Per-member codes: none, UNKNOWN_MEMBER_ID, and refusals a coordinator can give
# (FENCED_INSTANCE_ID, GROUP_AUTHORIZATION_FAILED, an unknown code).
CODES = st.sampled_from([0, 25, 82, 30, 9999])
IDS = st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=6, unique=True)


@given(IDS, st.data())
def test_outcomes_follow_the_model(ids: list[str], data: st.DataObject) -> None:
    answered = {i: data.draw(st.none() | CODES, label=i) for i in ids}
    extra = data.draw(st.dictionaries(st.text(min_size=1, max_size=5), CODES, max_size=2), label="not asked")
    members_field = [(f"{i}-m", i, c) for i, c in answered.items() if c is not None]
    members_field += [("", i, c) for i, c in extra.items() if i not in answered]
    response = LeaveGroupResponse_v3(0, 0, members_field)
    refused = [i for i, c in answered.items() if c not in (0, 25)]
    if refused:
        with pytest.raises(RemovalError) as caught:
            outcomes("g", ids, response)
        for i in refused:
            assert f"{i}: " in str(caught.value)
    else:
        assert outcomes("g", ids, response) == {
            i: Removal.REMOVED if c == 0 else Removal.NOT_A_MEMBER for i, c in answered.items()
        }


@given(st.lists(st.text(max_size=40), max_size=6))
def test_checked_refuses_exactly_what_the_protocol_cannot_carry(ids: list[str]) -> None:
    def carried(i: str) -> bool:
        try:
            return 0 < len(i.encode("utf-8")) <= 32767
        except UnicodeEncodeError:
            return False

    if ids and all(carried(i) for i in ids):
        kept = checked(ids)
        assert kept == list(dict.fromkeys(ids))
        # Every id kept goes on the wire and back unchanged.
        built = RemoveStaticMembers("g", kept).prepare({13: (3, 3)})
        again = LeaveGroupRequest_v3.decode(built.encode())
        assert [instance_id for _, instance_id in again.members] == kept
    else:
        with pytest.raises(RemovalError):
            checked(ids)


@pytest.mark.parametrize("hostile", ["x" * 32768, "é" * 16384, "a\udcff", ""])
def test_checked_refuses_ids_too_long_not_utf8_or_empty(hostile: str) -> None:
    with pytest.raises(RemovalError, match="not a group instance id"):
        checked(["pod-1", hostile])


def test_checked_keeps_the_longest_id_the_protocol_carries() -> None:
    assert checked(["é" * 16383 + "x"]) == ["é" * 16383 + "x"]
