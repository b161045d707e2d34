"""The latency harness's byte-level reading of records (bench/load.py) against what the real code writes."""

from __future__ import annotations

import datetime as dt
import re

import orjson

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
