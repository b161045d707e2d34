"""The trainers' reader without a broker: items decoded from feed bytes, the content hash,
the manifest's JSON. Its Kafka side is tested on the real broker (tests/integration/test_feed.py)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from stream.config import TopicNames
from stream.core.records import FEED_SCHEMA_VERSION
from stream.feed import FIELDS, ContentHash, FeedItem, Manifest, ManifestError, UnreadableRecord, decode_item
from stream.feed.reader import reader_settings

ITEM: dict[str, object] = {
    "content_id": "c-1",
    "content_type": "post",
    "platform": "facebook",
    "author_pseudonym": "a" * 64,
    "created_at": "2026-01-02T03:04:05Z",
    "text": "hello",
    "media_uri": None,
    "language": "en",
    "jurisdiction": "GB",
    "policy_version": "2026-11-01",
    "decided_at": "2026-11-28T09:15:00Z",
    "source_event_id": "e-1",
    "schema_version": 1,
}
MANIFEST = Manifest(
    taken_at="2026-11-28T09:15:00.123456Z",
    feed_topic="training.feed",
    retractions_topic="training.retractions",
    feed_offsets={0: 10, 1: 7},
    retractions_offsets={0: 3, 1: 0},
    items=12,
    tombstones=2,
    unreadable=0,
    policy_versions=("2026-11-01",),
    schema_versions=(1,),
    content_hash="sha256-sum:" + "0" * 64,
    withheld=1,
)


def test_feed_fields_are_the_feed_schemas_in_order_content_id_first() -> None:
    assert FIELDS[0] == "content_id"
    assert set(FIELDS) == set(ITEM)
    assert [f.name for f in dataclasses.fields(FeedItem)] == list(FIELDS)
    assert ITEM["schema_version"] == FEED_SCHEMA_VERSION


def test_decode_item_feed_record_gives_every_field() -> None:
    item = decode_item(b"c-1", orjson.dumps(ITEM))
    assert item.as_dict() == ITEM


def test_decode_item_unknown_extra_field_is_ignored_and_unversioned_record_is_layout_1() -> None:
    legacy = {k: v for k, v in ITEM.items() if k != "schema_version"} | {"future_field": 1}
    assert decode_item(b"c-1", orjson.dumps(legacy)).as_dict() == ITEM


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (b"c-1", b"{", "not JSON"),
        (b"c-1", b"[1]", "not a JSON object"),
        (b"c-2", orjson.dumps(ITEM), "differs from the record key"),
        (None, orjson.dumps(ITEM), "differs from the record key"),
        (b"c-1", orjson.dumps({**ITEM, "jurisdiction": None}), "jurisdiction"),
        (b"c-1", orjson.dumps({**ITEM, "text": 5}), "text"),
        (b"c-1", orjson.dumps({**ITEM, "schema_version": "1"}), "schema_version"),
        (b"c-1", orjson.dumps({**ITEM, "schema_version": True}), "schema_version"),
    ],
    ids=["json", "array", "key", "no_key", "jurisdiction", "text", "version_text", "version_bool"],
)
def test_decode_item_bad_record_raises_saying_why_without_the_text(key: bytes | None, value: bytes, why: str) -> None:
    with pytest.raises(UnreadableRecord, match=why) as raised:
        decode_item(key, value)
    assert "hello" not in str(raised.value)


def test_content_hash_same_items_in_any_order_same_hash_and_any_change_another() -> None:
    items = [decode_item(f"c-{i}".encode(), orjson.dumps({**ITEM, "content_id": f"c-{i}"})) for i in range(5)]
    assert ContentHash.of(items) == ContentHash.of(reversed(items))
    assert ContentHash.of(items) != ContentHash.of(items[:4])
    edited = [*items[:4], dataclasses.replace(items[4], text="edited")]
    assert ContentHash.of(items) != ContentHash.of(edited)
    assert ContentHash.of([]) == "sha256-sum:" + "0" * 64


def test_manifest_json_round_trips() -> None:
    assert Manifest.from_json(MANIFEST.to_json()) == MANIFEST
    assert orjson.loads(MANIFEST.to_json())["feed_offsets"] == {"0": 10, "1": 7}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"nope", "not JSON"),
        (b"[]", "not a JSON object"),
        (orjson.dumps({**orjson.loads(MANIFEST.to_json()), "format": 2}), "format 2"),
        (orjson.dumps({k: v for k, v in orjson.loads(MANIFEST.to_json()).items() if k != "items"}), "items"),
        (orjson.dumps({**orjson.loads(MANIFEST.to_json()), "feed_offsets": {"x": 1}}), "feed_offsets"),
        (orjson.dumps({**orjson.loads(MANIFEST.to_json()), "items": -1}), "items"),
    ],
    ids=["not_json", "array", "format", "missing", "partition", "negative"],
)
def test_manifest_from_bad_json_raises_manifest_error_naming_the_problem(data: bytes, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        Manifest.from_json(data)


def test_reader_settings_need_no_pseudonym_key_and_take_topic_names_from_the_environment() -> None:
    settings = reader_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9", "STREAM_TOPIC_TRAINING_RETRACTIONS": "r"})
    assert settings.bootstrap_servers == "k:9"
    assert settings.topics == TopicNames(retractions="r")
