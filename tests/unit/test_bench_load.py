"""The latency harness's byte-level reading of records (bench/load.py) against what the real code writes."""

from __future__ import annotations

import datetime as dt
import re
from typing import NamedTuple

import orjson
from hypothesis import given
from hypothesis import strategies as st

from bench import load
from stream.core.codec import decode_content, parse_timestamp
from stream.core.models import ContentEvent
from stream.core.policy import decide, load_policy
from stream.core.records import decide_value
from stream.workload.generator import RecordKind, TopicKind


def test_event_id_of_reads_stamped_content_and_its_decision_like_a_decoder() -> None:
    workload = load.workload_for(7, 200, 1000.0)
    now = dt.datetime.now(dt.UTC)
    checked = 0
    for item in workload.stream(300):
        kind, key, value = item.record
        if kind is not TopicKind.CONTENT or item.kind is not RecordKind.UPSERT or value is None or key is None:
            continue
        stamped = load.stamp(value, 1_700_000_000.25)
        expected = orjson.loads(stamped)["event_id"].encode()
        assert load.event_id_of(stamped) == expected
        event = decode_content(key, stamped)
        assert isinstance(event, ContentEvent)
        decision = decide_value(event, decide(event, None, None, load_policy(None), now), decided_at=now)
        assert b'"action":"decide"' in decision
        assert load.event_id_of(decision) == expected
        checked += 1
    assert checked > 100


def test_stamp_writes_the_scheduled_time_as_rfc3339_microseconds() -> None:
    for at in (1_700_000_000.25, 1_700_000_059.999999, 1_700_000_060.0, 1_790_000_000.123456):
        stamped = orjson.loads(load.stamp(b'{"event_id":"e"}', at))
        assert stamped["event_id"] == "e"
        sent = parse_timestamp(stamped["gen_sent_at"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamped["gen_sent_at"])
        assert abs(sent.timestamp() - at) < 2e-6


class _Rec(NamedTuple):
    value: bytes | None


# Any text around the ids, the members' own names among it; ids as the workload makes
# them have no quote or backslash (`event_id_of` reads up to the next quote).
_TEXT = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(['"action":"decide"', '"event_id":"x', '\\"action\\":\\"decide\\"']),
)
_ID = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\\'), max_size=12)


@given(
    st.dictionaries(
        st.integers(0, 3),
        st.lists(st.one_of(st.none(), st.tuples(_ID, st.booleans(), _TEXT)), max_size=6),
        max_size=4,
    )
)
def test_decisions_in_yields_each_decision_with_its_id_and_nothing_else(
    fetched: dict[int, list[tuple[str, bool, str] | None]],
) -> None:
    # A decision is found by its action member; anything in another string value,
    # quotes and the member names themselves among it, is escaped JSON and never matched.
    def record(x: tuple[str, bool, str] | None) -> _Rec:
        if x is None:
            return _Rec(None)  # a tombstone
        return _Rec(orjson.dumps({"text": x[2], "event_id": x[0], "action": "decide" if x[1] else "x"}))

    batches = {p: [record(x) for x in xs] for p, xs in fetched.items()}
    expected = [
        (x[0].encode(), rec) for p, xs in fetched.items() for x, rec in zip(xs, batches[p], strict=True) if x and x[1]
    ]
    assert [(orjson.loads(b'"' + eid + b'"').encode(), r) for eid, r in load.decisions_in(batches)] == expected
