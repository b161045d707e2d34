"""Key hygiene: the pseudonym key's length, the development key made loud, and rotation by key id."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import orjson
import pytest

from stream.config import DEV_PSEUDONYM_KEY, MIN_PSEUDONYM_KEY_BYTES, Settings, TopicNames
from stream.core.engine import Engine, OutputTopic
from stream.core.policy import load_policy
from stream.core.records import PSEUDONYM_KEY_ID_HEADER, pseudonym_key_id
from stream.errors import ConfigError
from stream.runtime.app import build_app
from stream.runtime.store import MemoryPartitionStore
from stream.verifier.compare import Problem, compare
from stream.verifier.rule import key_id, read_policy
from stream.verifier.state import State

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
OLD_KEY = b"o" * 32
NEW_KEY = b"n" * 32
TOPICS = TopicNames()


# --- the key's length -----------------------------------------------------------------


@pytest.mark.parametrize("length", [1, MIN_PSEUDONYM_KEY_BYTES - 1])
def test_settings_short_pseudonym_key_outside_dev_mode_refused_naming_the_variable(length: int) -> None:
    with pytest.raises(
        ConfigError, match=rf"STREAM_PSEUDONYM_KEY: the pseudonym key has {length} bytes, fewer than 32"
    ):
        Settings.from_env({"STREAM_PSEUDONYM_KEY": "k" * length})


def test_settings_short_pseudonym_key_file_refused_naming_variable_and_path(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("a-secret-key\n")  # 12 bytes once the newline is stripped
    with pytest.raises(ConfigError, match=f"STREAM_PSEUDONYM_KEY_FILE={key}: the pseudonym key has 12 bytes"):
        Settings.from_env({"STREAM_PSEUDONYM_KEY_FILE": str(key)})


def test_settings_short_previous_key_file_refused_naming_the_variable(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"short")
    env = {"STREAM_PSEUDONYM_KEY": "k" * 32, "STREAM_PSEUDONYM_PREVIOUS_KEY_FILE": str(tmp_path / "old")}
    with pytest.raises(ConfigError, match=r"STREAM_PSEUDONYM_PREVIOUS_KEY_FILE=.*has 5 bytes"):
        Settings.from_env(env)


def test_settings_key_of_32_bytes_accepted_and_previous_key_read_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(NEW_KEY + b"\n")
    (tmp_path / "old").write_bytes(OLD_KEY)
    settings = Settings.from_env(
        {
            "STREAM_PSEUDONYM_KEY_FILE": str(tmp_path / "key"),
            "STREAM_PSEUDONYM_PREVIOUS_KEY_FILE": str(tmp_path / "old"),
        }
    )
    assert (settings.pseudonym_key, settings.previous_pseudonym_key) == (NEW_KEY, OLD_KEY)
    assert not settings.uses_dev_pseudonym_key
    assert "o" * 32 not in repr(settings)


def test_settings_dev_mode_allows_a_short_key_and_defaults_to_the_development_key() -> None:
    assert Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_PSEUDONYM_KEY": "short"}).pseudonym_key == b"short"
    dev = Settings.from_env({"STREAM_DEV_MODE": "1"})
    assert dev.pseudonym_key == DEV_PSEUDONYM_KEY and dev.uses_dev_pseudonym_key


# --- the development key is loud --------------------------------------------------------


def _gauge(settings: Settings) -> float | None:
    _, worker = build_app(settings)
    return worker.metrics.registry.get_sample_value("eligibility_dev_pseudonym_key")


def test_worker_with_development_key_warns_at_start_and_sets_the_gauge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.runtime.app")
    assert _gauge(Settings(data_dir=tmp_path, pseudonym_key=DEV_PSEUDONYM_KEY, dev_mode=True)) == 1.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "public development key is in use" in warnings[0].getMessage()
    assert f"pseudonym key id {pseudonym_key_id(DEV_PSEUDONYM_KEY)}" in caplog.text


def test_worker_with_its_own_key_leaves_the_gauge_at_zero_and_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _gauge(Settings(data_dir=tmp_path, pseudonym_key=NEW_KEY)) == 0.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "stream.runtime.app"]


# --- rotation: each feed record names its key ------------------------------------------


def _published(key: bytes, content_id: str, author: str) -> tuple[bytes, bytes, str]:
    """The feed record the filter makes for an eligible post under `key`: content key, value, key id header."""
    engine = Engine(load_policy(), key, TOPICS)
    profile = orjson.dumps(
        {
            "account_id": author,
            "birth_date": "1980-05-05",
            "country": "GB",
            "notified_at": "2020-01-01T00:00:00Z",
            "updated_at": "2020-01-01T00:00:00Z",
        }
    )
    result = engine.process(
        {0: MemoryPartitionStore()},
        [_In(TOPICS.profiles, 0, author.encode(), profile)],
        [_In(TOPICS.content, 0, author.encode(), _upsert(content_id, author))],
        NOW,
    )
    (feed,) = [p for p in result.records() if p.topic is OutputTopic.FEED]
    assert feed.key is not None and feed.value is not None and feed.headers is not None
    (header,) = [v for k, v in feed.headers if k == PSEUDONYM_KEY_ID_HEADER]
    return feed.key, feed.value, header.decode()


class _In:
    def __init__(self, topic: str, offset: int, key: bytes, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, 0, offset, key, value
        self.timestamp = int(NOW.timestamp() * 1000) - 3_600_000


def _upsert(content_id: str, author: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e-{content_id}",
            "op": "upsert",
            "content_id": content_id,
            "content_type": "post",
            "platform": "facebook",
            "author_id": author,
            "visibility": "public",
            "created_at": "2026-01-02T03:04:05Z",
            "event_time": "2026-11-28T08:00:00Z",
            "text": "words",
            "media_uri": None,
            "language": "en",
        }
    )


def _state(*items: tuple[str, str]) -> State:
    state = State()
    at = NOW - dt.timedelta(hours=1)
    for content_id, author in items:
        profile = orjson.dumps(
            {
                "account_id": author,
                "birth_date": "1980-05-05",
                "country": "GB",
                "notified_at": "2020-01-01T00:00:00Z",
                "updated_at": "2020-01-01T00:00:00Z",
            }
        )
        state.apply_profile(author.encode(), profile, at)
        state.apply_content(author.encode(), _upsert(content_id, author), at)
    return state


def test_filter_and_verifier_derive_the_same_key_id_each_on_its_own() -> None:
    assert key_id(NEW_KEY) == pseudonym_key_id(NEW_KEY)
    assert key_id(OLD_KEY) != key_id(NEW_KEY) and len(key_id(NEW_KEY)) == 16


def test_verify_after_rotation_accepts_records_of_the_previous_key_by_their_key_id() -> None:
    before = _published(OLD_KEY, "c-old", "a-1")
    after = _published(NEW_KEY, "c-new", "a-2")
    assert (before[2], after[2]) == (key_id(OLD_KEY), key_id(NEW_KEY))
    feed = {before[0]: before[1], after[0]: after[1]}
    key_ids = {before[0]: before[2], after[0]: after[2]}
    state = _state(("c-old", "a-1"), ("c-new", "a-2"))

    report = compare(
        state, feed, read_policy(), pseudonym_key=NEW_KEY, previous_pseudonym_key=OLD_KEY, key_ids=key_ids, now=NOW
    )

    assert report.ok and report.expected_eligible == 2, report.minimisation


def test_verify_without_the_previous_key_flags_its_records_as_made_with_an_unknown_key() -> None:
    before = _published(OLD_KEY, "c-old", "a-1")
    report = compare(
        _state(("c-old", "a-1")), {before[0]: before[1]}, read_policy(), pseudonym_key=NEW_KEY,
        key_ids={before[0]: before[2]}, now=NOW,
    )  # fmt: skip
    assert report.minimisation[Problem.PSEUDONYM_KEY_UNKNOWN].examples == ["c-old"]
    assert report.minimisation[Problem.PSEUDONYM_MISMATCH].count == 0


def test_verify_record_naming_the_current_key_with_a_pseudonym_of_the_previous_is_a_mismatch() -> None:
    key, value, _ = _published(OLD_KEY, "c-1", "a-1")
    report = compare(
        _state(("c-1", "a-1")), {key: value}, read_policy(), pseudonym_key=NEW_KEY, previous_pseudonym_key=OLD_KEY,
        key_ids={key: key_id(NEW_KEY)}, now=NOW,
    )  # fmt: skip
    assert report.minimisation[Problem.PSEUDONYM_MISMATCH].examples == ["c-1"]


@pytest.mark.parametrize(("previous", "ok"), [(OLD_KEY, True), (None, False)])
def test_verify_record_without_key_id_may_match_either_configured_key(previous: bytes | None, ok: bool) -> None:
    key, value, _ = _published(OLD_KEY, "c-1", "a-1")
    report = compare(
        _state(("c-1", "a-1")), {key: value}, read_policy(), pseudonym_key=NEW_KEY, previous_pseudonym_key=previous,
        now=NOW,
    )  # fmt: skip
    assert report.ok is ok
    assert report.minimisation[Problem.PSEUDONYM_MISMATCH].count == (0 if ok else 1)
