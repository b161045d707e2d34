"""Recovery replays history into a restored store: items are judged by the final state only."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from stream.core.engine import BatchResult, Engine, OutputTopic
from stream.core.policy import load_policy
from stream.core.state import REEVALUATE_KEY
from stream.runtime.store import MemoryPartitionStore

from .test_deferred import TOPICS, Rec

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def _profile(offset: int, **fields: object) -> Rec:
    value = {
        "account_id": "a-1",
        "birth_date": "1980-01-01",
        "country": "GB",
        "notified_at": "2025-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        **fields,
    }
    return Rec(TOPICS.profiles, 0, offset, b"a-1", orjson.dumps(value))


def _objection(offset: int, status: str) -> Rec:
    return Rec(
        TOPICS.objections,
        0,
        offset,
        b"a-1",
        orjson.dumps(
            {"account_id": "a-1", "status": status, "at": "2026-01-01T00:00:00Z", "source": "form", "request_id": "r"}
        ),
    )


def _upsert(offset: int) -> Rec:
    return Rec(
        TOPICS.content,
        0,
        offset,
        b"a-1",
        orjson.dumps(
            {
                "event_id": f"e-{offset}",
                "op": "upsert",
                "content_id": f"c-{offset}",
                "content_type": "post",
                "platform": "facebook",
                "author_id": "a-1",
                "visibility": "public",
                "created_at": "2026-06-01T00:00:00Z",
                "event_time": "2026-11-28T11:00:00Z",
                "text": "hello",
            }
        ),
    )


def _apply(store: MemoryPartitionStore, result: BatchResult) -> None:
    store.apply(result.pre_updates.get(0, ()), counts=result.pre_counts.get(0))
    store.apply(result.post_updates.get(0, ()), result.state_offsets.get(0, {}), result.post_counts.get(0))


def _tombstones(result: BatchResult) -> list[bytes | None]:
    return [p.key for p in result.produce if p.topic is OutputTopic.FEED and p.value is None]


@pytest.mark.parametrize(
    ("history", "retracted"),
    [
        pytest.param([_profile(0, country="DE"), _profile(1)], False, id="moved-in-later"),
        pytest.param(
            [_profile(0), _objection(0, "objected"), _objection(1, "withdrawn")], False, id="objection-withdrawn"
        ),
        pytest.param([_profile(0), _objection(0, "withdrawn"), _objection(1, "objected")], True, id="objecting-now"),
        pytest.param([_profile(0), Rec(TOPICS.profiles, 0, 1, b"a-1", None)], True, id="deleted-now"),
        pytest.param([_profile(0, birth_date="2015-01-01")], True, id="minor-now"),
    ],
)
def test_recovery_replay_judges_published_items_by_final_state_only(history: list[Rec], retracted: bool) -> None:
    engine = Engine(load_policy(), b"k", TOPICS)
    live = MemoryPartitionStore()
    _apply(live, engine.process({0: live}, [_profile(0)], [], NOW))
    _apply(live, engine.process({0: live}, [], [_upsert(0)], NOW))

    # A new owner: the published index restored first, then the state history replayed.
    restored = MemoryPartitionStore()
    restored.apply(list(live.scan(b"i:")))
    replay = engine.process({0: restored}, history, [], NOW, recovering=True)
    _apply(restored, replay)
    assert _tombstones(replay) == []  # nothing judged by an intermediate state
    assert restored.get(REEVALUATE_KEY) == b"1"  # durable until the pass below is done

    judged, after = engine.reevaluate_published(restored, 0, NOW, None, limit=100)
    _apply(restored, judged)
    assert after is None
    assert _tombstones(judged) == ([b"c-0"] if retracted else [])
    assert bool(list(restored.scan(b"i:"))) is not retracted


def test_recovery_pass_over_published_items_resumes_in_chunks() -> None:
    engine = Engine(load_policy(), b"k", TOPICS)
    store = MemoryPartitionStore()
    _apply(store, engine.process({0: store}, [_profile(0)], [], NOW))
    _apply(store, engine.process({0: store}, [], [_upsert(i) for i in range(7)], NOW))
    _apply(store, engine.process({0: store}, [_objection(0, "objected")], [], NOW, recovering=True))

    retracted: list[bytes | None] = []
    after: bytes | None = None
    chunks = 0
    while True:
        result, after = engine.reevaluate_published(store, 0, NOW, after, limit=3)
        _apply(store, result)
        retracted += _tombstones(result)
        chunks += 1
        if after is None:
            break
    assert sorted(retracted) == sorted(f"c-{i}".encode() for i in range(7))
    assert chunks == 3
