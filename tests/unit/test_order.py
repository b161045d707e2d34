"""Order per item, unreadable updates, release of held items and isolation, in the engine (no Kafka).

Scenario tests of the contract's sections "Order per item", "Unreadable records fail
closed" and "Deferred decisions"; `test_engine_model.py` searches the same space at random.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

import stream.core.accounts
import stream.core.items
from stream.core.engine import ITEM_MEMORY, Engine, OutputTopic
from stream.core.models import DeadLetterReason, RetractCause, SkipReason
from stream.core.state import StateKind, item_id
from stream.runtime.store import MemoryPartitionStore

from .test_engine import (
    AUTHOR,
    NOW,
    POLICY,
    PSEUDONYM_KEY,
    TOPICS,
    FakeWorker,
    InRecord,
    decoded,
    delete_value,
    objection_value,
    profile_value,
    upsert_value,
)


@pytest.fixture
def worker() -> FakeWorker:
    w = FakeWorker(Engine(POLICY, PSEUDONYM_KEY, TOPICS))
    w.run(state=[w.profile(profile_value())])
    return w


def _upsert(content_id: str, event_id: str, event_time: str, **overrides: Any) -> bytes:
    return upsert_value(content_id, event_id, event_time=event_time, **overrides)


def _actions(worker: FakeWorker, *values: bytes) -> list[tuple[str, Any]]:
    """Run each content value in its own batch; the audit records' (action, reason or cause)."""
    out: list[tuple[str, Any]] = []
    for value in values:
        for topic, _, record in decoded(worker.run(content=[worker.content(value)])):
            if topic is OutputTopic.DECISIONS:
                out.append((record["action"], record["reason"] or record["cause"]))
    return out


def test_order_same_event_again_is_skipped_as_superseded(worker: FakeWorker) -> None:
    first = _upsert("c-1", "e-1", "2026-11-28T09:00:00Z")
    assert _actions(worker, first, first) == [("decide", "eligible"), ("skip", "superseded")]
    assert set(worker.feed) == {b"c-1"}


def test_order_older_event_is_skipped_and_does_not_bring_back_a_private_item(worker: FakeWorker) -> None:
    assert _actions(
        worker,
        _upsert("c-1", "e-1", "2026-11-28T09:00:00Z"),
        _upsert("c-1", "e-2", "2026-11-28T09:05:00Z", visibility="private"),
        _upsert("c-1", "e-0", "2026-11-28T08:00:00Z"),
    ) == [("decide", "eligible"), ("decide", "not_public"), ("retract", "visibility_changed"), ("skip", "superseded")]
    assert worker.feed == {}


def test_order_after_a_delete_everything_is_skipped_as_deleted(worker: FakeWorker) -> None:
    first = _upsert("c-1", "e-1", "2026-11-28T09:00:00Z")
    assert _actions(
        worker,
        first,
        delete_value("c-1", "e-2"),
        first,
        _upsert("c-1", "e-3", "2030-01-01T00:00:00Z"),
        delete_value("c-1", "e-4"),
    ) == [
        ("decide", "eligible"),
        ("retract", "content_deleted"),
        ("skip", "deleted"),
        ("skip", "deleted"),
        ("skip", "deleted"),
    ]
    assert worker.feed == {}


def test_order_equal_event_time_different_ids_apply_in_arrival_order(worker: FakeWorker) -> None:
    same = "2026-11-28T09:00:00Z"
    assert _actions(worker, _upsert("c-1", "e-a", same), _upsert("c-1", "e-b", same, visibility="friends")) == [
        ("decide", "eligible"),
        ("decide", "not_public"),
        ("retract", "visibility_changed"),
    ]


def test_order_within_one_batch_is_the_same_as_across_batches(worker: FakeWorker) -> None:
    first = _upsert("c-1", "e-1", "2026-11-28T09:00:00Z")
    result = worker.run(content=[worker.content(v) for v in (first, delete_value("c-1", "e-2"), first)])
    assert result.skips == {SkipReason.DELETED: 1}
    assert worker.feed == {}


def test_order_is_forgotten_after_item_memory_by_the_sweep_and_restored_from_its_changelog(
    worker: FakeWorker,
) -> None:
    first = _upsert("c-1", "e-1", "2026-11-28T09:00:00Z")
    result = worker.run(content=[worker.content(first)])
    [version] = [p for p in result.last if p.topic is OutputTopic.ITEMS]
    assert version.key == item_id(AUTHOR, "c-1") and version.partition == 0

    # A new owner restores the order from the changelog: the same event is still a duplicate.
    fresh = MemoryPartitionStore()
    record = InRecord(TOPICS.items, 0, 0, version.key, version.value, 0)
    updates, _ = worker.engine.restore(StateKind.ITEMS, fresh, [record])
    fresh.apply(updates)
    assert worker.engine.process({0: fresh}, [], [worker.content(first)], NOW).skips == {SkipReason.SUPERSEDED: 1}

    store = worker.stores[0]
    early, after = worker.engine.expire_items(store, 0, NOW + ITEM_MEMORY - dt.timedelta(seconds=1), None, 100)
    assert early.last == [] and after is None
    late, _ = worker.engine.expire_items(store, 0, NOW + ITEM_MEMORY, None, 100)
    assert [(p.topic, p.key, p.value) for p in late.last] == [(OutputTopic.ITEMS, version.key, None)]
    for p, updates in late.post_updates.items():
        worker.stores[p].apply(updates)
    assert _actions(worker, first) == [("decide", "eligible")]  # forgotten: applies again


def test_order_sweep_goes_on_after_its_cursor(worker: FakeWorker) -> None:
    worker.run(content=[worker.content(_upsert(f"c-{i}", f"e-{i}", "2026-11-28T09:00:00Z")) for i in range(5)])
    store, expired, after = worker.stores[0], 0, None
    for _ in range(3):
        result, after = worker.engine.expire_items(store, 0, NOW + ITEM_MEMORY, after, 2)
        expired += len(result.last)
    assert (expired, after) == (5, None)


def test_unreadable_edit_of_a_published_item_retracts_it_and_leaves_its_order(worker: FakeWorker) -> None:
    worker.run(content=[worker.content(_upsert("c-1", "e-1", "2026-11-28T09:00:00Z"))])
    broken = orjson.loads(_upsert("c-1", "e-2", "2026-11-28T09:05:00+01:00"))
    result = worker.run(content=[worker.content(orjson.dumps(broken))])
    assert result.dead_letters == {DeadLetterReason.SCHEMA_VIOLATION: 1}
    assert result.retractions == {RetractCause.UNREADABLE_UPDATE: 1}
    assert worker.feed == {}
    # The unreadable record is not the item's latest event: the next readable edit applies.
    assert _actions(worker, _upsert("c-1", "e-3", "2026-11-28T09:06:00Z")) == [("decide", "eligible")]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"someone-else", b'{"content_id": "c-1"}'),  # names another author's item: not ours to retract
        (AUTHOR.encode(), b'{"content_id": ""}'),
        (AUTHOR.encode(), b'{"content_id": 7}'),
        (AUTHOR.encode(), b"not json"),
        (b"\xff", b'{"content_id": "c-1"}'),
        (None, b'{"content_id": "c-1"}'),
    ],
    ids=["other-key", "empty-id", "number-id", "not-json", "bad-key", "no-key"],
)
def test_unreadable_record_that_names_no_readable_item_of_ours_retracts_nothing(
    worker: FakeWorker, key: bytes | None, value: bytes
) -> None:
    worker.run(content=[worker.content(_upsert("c-1", "e-1", "2026-11-28T09:00:00Z"))])
    result = worker.run(content=[worker.content(value, key=key)])
    assert result.dead_letters.total() == 1 and not result.retractions
    assert set(worker.feed) == {b"c-1"}


def _held_worker() -> FakeWorker:
    w = FakeWorker(Engine(POLICY, PSEUDONYM_KEY, TOPICS))
    recent = (NOW - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    w.run(state=[w.profile(profile_value(country="BR", notified_at=recent))])
    result = w.run(content=[w.content(_upsert("c-held", "e-1", "2026-11-28T09:00:00Z"))])
    assert [p.topic for p in result.produce] == [OutputTopic.DECISIONS, OutputTopic.DEFERRED]
    return w


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("objection", "objected"),
        ("profile_tombstone", "account_unknown"),
        ("moved_to_de", "jurisdiction_not_enabled"),
        ("unreadable_profile", "account_unknown"),
        ("unreadable_objection", "objected"),
    ],
)
def test_held_item_is_released_at_once_by_a_change_that_refuses_it_otherwise(change: str, reason: str) -> None:
    w = _held_worker()
    record: InRecord = {
        "objection": lambda: w.objection(objection_value("objected")),
        "profile_tombstone": lambda: w.profile(None),
        "moved_to_de": lambda: w.profile(profile_value(country="DE")),
        "unreadable_profile": lambda: w.profile(b'{"account_id": "broken"'),
        "unreadable_objection": lambda: w.objection(b"[]"),
    }[change]()
    result = w.run(state=[record])
    assert result.released == 1
    held = [p for p in result.produce if p.topic is OutputTopic.DEFERRED]
    assert [(p.key, p.value) for p in held] == [(item_id(AUTHOR, "c-held"), None)]
    decisions = [r for t, _, r in decoded(result) if t is OutputTopic.DECISIONS]
    assert [(d["content_id"], d["reason"]) for d in decisions] == [("c-held", reason)]
    assert list(w.stores[0].scan(b"d:")) == [] and list(w.stores[0].scan(b"D:")) == []


def test_held_item_stays_held_when_a_change_keeps_its_notice_period_and_is_published_when_it_ends() -> None:
    w = _held_worker()
    recent = (NOW - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    same = w.run(state=[w.profile(profile_value(country="BR", notified_at=recent, birth_date="1985-01-01"))])
    assert same.released == 0 and same.produce == []
    long_ago = w.run(state=[w.profile(profile_value(country="BR", notified_at="2020-01-01T00:00:00Z"))])
    assert set(w.feed) == {b"c-held"}
    assert [p.value for p in long_ago.produce if p.topic is OutputTopic.DEFERRED] == [None]


@pytest.mark.pure_core  # monkeypatches the core (tests/pure_core.py)
def test_record_whose_handling_raises_is_isolated_and_the_rest_of_the_batch_is_decided(
    worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker.run(content=[worker.content(_upsert("c-boom", "e-0", "2026-11-28T08:00:00Z"))])
    real = stream.core.items.decide_account

    def decide_account(event: Any, *args: Any) -> Any:
        if event.content_id == "c-boom":
            raise ZeroDivisionError
        return real(event, *args)

    monkeypatch.setattr(stream.core.items, "decide_account", decide_account)
    records = [
        worker.content(_upsert("c-1", "e-1", "2026-11-28T09:00:00Z")),
        worker.content(_upsert("c-boom", "e-2", "2026-11-28T09:00:00Z")),
        worker.content(_upsert("c-2", "e-3", "2026-11-28T09:00:00Z")),
    ]
    result = worker.run(content=records)
    assert [(i.topic, i.offset, i.error) for i in result.isolated] == [(TOPICS.content, 2, "ZeroDivisionError")]
    assert result.dead_letters == {DeadLetterReason.PROCESSING_ERROR: 1}
    assert result.retractions == {RetractCause.UNREADABLE_UPDATE: 1}  # the earlier version leaves the feed
    assert set(worker.feed) == {b"c-1", b"c-2"}


@pytest.mark.pure_core  # monkeypatches the core (tests/pure_core.py)
def test_state_record_whose_handling_raises_fails_the_account_closed(
    worker: FakeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker.run(content=[worker.content(_upsert("c-1", "e-1", "2026-11-28T09:00:00Z"))])

    def boom(*args: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(stream.core.accounts, "decode_objection", boom)
    result = worker.run(state=[worker.objection(objection_value("withdrawn"))])
    assert result.dead_letters == {DeadLetterReason.PROCESSING_ERROR: 1}
    assert result.retractions == {RetractCause.OBJECTION: 1}  # counted as an objection: fail closed
    assert worker.feed == {}


@pytest.mark.pure_core  # monkeypatches the core (tests/pure_core.py)
def test_fail_closed_that_raises_too_fails_the_batch(worker: FakeWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(stream.core.accounts, "decode_objection", boom)
    monkeypatch.setattr(stream.core.accounts.AccountChanges, "_fail_closed", boom)
    with pytest.raises(ZeroDivisionError):
        worker.run(state=[worker.objection(objection_value())])


def test_unreadable_record_replayed_after_a_crash_does_not_undo_a_later_event_of_its_batch(
    worker: FakeWorker,
) -> None:
    unreadable = worker.content(b'{"content_id": "c-1", "op": "upsert"}')
    upsert = worker.content(_upsert("c-1", "e-1", "2026-11-28T09:00:00Z"))
    worker.run(content=[unreadable, upsert])
    assert set(worker.feed) == {b"c-1"}
    # The batch again, as after a crash before its commit: the same records at the same offsets.
    replay = worker.run(content=[unreadable, upsert])
    assert not replay.retractions and replay.skips == {SkipReason.SUPERSEDED: 1}
    assert set(worker.feed) == {b"c-1"}
    # A copy of the unreadable record later in the log is an unreadable update again.
    later = worker.run(content=[worker.content(b'{"content_id": "c-1", "op": "upsert"}')])
    assert later.retractions == {RetractCause.UNREADABLE_UPDATE: 1}


def test_item_memory_is_a_setting_the_engine_keeps_each_latest_event_for() -> None:
    from stream.config import Settings
    from stream.errors import ConfigError

    assert Settings.from_env({"STREAM_DEV_MODE": "1"}).item_memory_days == 8
    assert Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_ITEM_MEMORY_DAYS": "30"}).item_memory_days == 30
    with pytest.raises(ConfigError, match="STREAM_ITEM_MEMORY_DAYS"):
        Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_ITEM_MEMORY_DAYS": "0"})

    w = FakeWorker(Engine(POLICY, PSEUDONYM_KEY, TOPICS, item_memory=dt.timedelta(days=30)))
    w.run(content=[w.content(_upsert("c-1", "e-1", "2026-11-28T09:00:00Z"))])
    kept, _ = w.engine.expire_items(w.stores[0], 0, NOW + dt.timedelta(days=29), None, 100)
    gone, _ = w.engine.expire_items(w.stores[0], 0, NOW + dt.timedelta(days=30), None, 100)
    assert (len(kept.last), len(gone.last)) == (0, 1)
