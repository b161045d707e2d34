"""Deferred decisions: held while the notice period runs, decided again when it ends."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import orjson

from stream.config import TopicNames
from stream.core.engine import BatchResult, Engine, OutputTopic
from stream.core.models import Reason
from stream.core.policy import load_policy
from stream.core.state import EntryKind, StateKind, item_id
from stream.runtime.store import MemoryPartitionStore

TOPICS = TopicNames()
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
NOTIFIED = NOW - dt.timedelta(days=29)  # Brazil's 30 days end in one day
DUE = NOTIFIED + dt.timedelta(days=30)


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_796_000_000_000


def _profile() -> Rec:
    return Rec(
        TOPICS.profiles,
        0,
        0,
        b"a-br",
        orjson.dumps(
            {
                "account_id": "a-br",
                "birth_date": "1990-01-01",
                "country": "BR",
                "notified_at": NOTIFIED.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "updated_at": "2026-01-01T00:00:00Z",
            }
        ),
    )


def _upsert(offset: int, content_id: str = "c-1") -> Rec:
    return Rec(
        TOPICS.content,
        0,
        offset,
        b"a-br",
        orjson.dumps(
            {
                "event_id": f"e-{offset}",
                "op": "upsert",
                "content_id": content_id,
                "content_type": "post",
                "platform": "facebook",
                "author_id": "a-br",
                "visibility": "public",
                "created_at": "2026-06-01T00:00:00Z",
                "event_time": "2026-11-28T11:00:00Z",
                "text": "hello",
            }
        ),
    )


def _delete(offset: int, content_id: str = "c-1") -> Rec:
    return Rec(
        TOPICS.content,
        0,
        offset,
        b"a-br",
        orjson.dumps(
            {
                "event_id": f"e-{offset}",
                "op": "delete",
                "content_id": content_id,
                "author_id": "a-br",
                "event_time": "2026-11-28T11:00:00Z",
            }
        ),
    )


def _apply(store: MemoryPartitionStore, result: BatchResult) -> None:
    store.apply(result.pre_updates.get(0, ()), counts=result.pre_counts.get(0))
    store.apply(result.post_updates.get(0, ()), result.state_offsets.get(0, {}), result.post_counts.get(0))


def _engine() -> Engine:
    return Engine(load_policy(), b"k", TOPICS)


def _deferred_records(result: BatchResult) -> list[tuple[bytes | None, bytes | None, int | None]]:
    return [(p.key, p.value, p.partition) for p in result.produce if p.topic is OutputTopic.DEFERRED]


def test_deferral_notice_period_running_holds_item_in_store_and_changelog() -> None:
    engine, store = _engine(), MemoryPartitionStore()
    _apply(store, engine.process({0: store}, [_profile()], [], NOW))
    result = engine.process({0: store}, [], [_upsert(0)], NOW)
    _apply(store, result)

    assert result.decisions == {Reason.NOTICE_PERIOD_RUNNING: 1}
    [(key, value, partition)] = _deferred_records(result)
    assert key == item_id("a-br", "c-1") and partition == 0
    assert value is not None and orjson.loads(value)["due_ms"] == int(DUE.timestamp() * 1000)
    assert orjson.loads(value)["content"]["event_id"] == "e-0"
    assert store.counts()[EntryKind.DEFERRED] == 1


def test_deferral_not_yet_due_is_left_alone_and_due_is_decided_again_eligible() -> None:
    engine, store = _engine(), MemoryPartitionStore()
    _apply(store, engine.process({0: store}, [_profile()], [], NOW))
    _apply(store, engine.process({0: store}, [], [_upsert(0)], NOW))

    early = engine.process_due(store, 0, DUE - dt.timedelta(milliseconds=1), limit=100)
    assert early.produce == []
    due = engine.process_due(store, 0, DUE, limit=100)
    _apply(store, due)

    assert due.decisions == {Reason.ELIGIBLE: 1}
    topics = [p.topic for p in due.produce]
    assert topics.count(OutputTopic.FEED) == 1
    assert (item_id("a-br", "c-1"), None, 0) in _deferred_records(due)  # tombstone on the changelog
    assert store.counts()[EntryKind.DEFERRED] == 0 and store.counts()[EntryKind.PUBLISHED] == 1
    assert engine.process_due(store, 0, DUE + dt.timedelta(days=1), limit=100).produce == []


def test_deferral_content_deleted_while_held_is_cancelled_and_never_decided_again() -> None:
    engine, store = _engine(), MemoryPartitionStore()
    _apply(store, engine.process({0: store}, [_profile()], [], NOW))
    _apply(store, engine.process({0: store}, [], [_upsert(0)], NOW))
    cancelled = engine.process({0: store}, [], [_delete(1)], NOW)
    _apply(store, cancelled)

    assert (item_id("a-br", "c-1"), None, 0) in _deferred_records(cancelled)
    assert engine.process_due(store, 0, DUE, limit=100).produce == []
    assert store.counts()[EntryKind.DEFERRED] == 0


def test_deferral_restored_from_changelog_equals_the_original_store() -> None:
    engine, store = _engine(), MemoryPartitionStore()
    _apply(store, engine.process({0: store}, [_profile()], [], NOW))
    changelog: list[Rec] = []
    for batch in ([_upsert(0, "c-1"), _upsert(1, "c-2")], [_delete(2, "c-2")], [_upsert(3, "c-3")]):
        result = engine.process({0: store}, [], batch, NOW)
        _apply(store, result)
        changelog += [
            Rec(TOPICS.deferred, 0, len(changelog) + i, k, v) for i, (k, v, _) in enumerate(_deferred_records(result))
        ]

    fresh = MemoryPartitionStore()
    _apply(fresh, engine.process({0: fresh}, [_profile()], [], NOW))
    updates, counts = engine.restore(StateKind.DEFERRED, fresh, changelog)
    fresh.apply(updates, counts=counts)

    assert list(fresh.scan(b"d:")) == list(store.scan(b"d:"))
    assert list(fresh.scan(b"D:")) == list(store.scan(b"D:"))
    assert fresh.counts()[EntryKind.DEFERRED] == 2
