"""STREAM_TRAINER_GROUPS and STREAM_TRAINER_ACK_HOURS: read once, refused with a message naming the variable."""

from __future__ import annotations

import pytest

from stream.config import Settings
from stream.errors import ConfigError

BASE = {"STREAM_DEV_MODE": "1"}


def test_trainer_settings_default_to_no_groups_and_24_hours() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.trainer_groups, settings.trainer_ack_hours) == ((), 24)
    assert settings.retractions_retention_days == 3 * 365


def test_trainer_groups_comma_separated_in_order_spaces_stripped() -> None:
    settings = Settings.from_env({**BASE, "STREAM_TRAINER_GROUPS": "llm-a, vision-b", "STREAM_TRAINER_ACK_HOURS": "6"})
    assert (settings.trainer_groups, settings.trainer_ack_hours) == (("llm-a", "vision-b"), 6)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAM_TRAINER_GROUPS": "a,,b"}, "STREAM_TRAINER_GROUPS.*empty group name"),
        ({"STREAM_TRAINER_GROUPS": "a,a"}, "STREAM_TRAINER_GROUPS.*named twice"),
        ({"STREAM_TRAINER_ACK_HOURS": "0"}, "STREAM_TRAINER_ACK_HOURS=0 is below"),
        ({"STREAM_TRAINER_ACK_HOURS": "a day"}, "STREAM_TRAINER_ACK_HOURS.*not a whole number"),
        ({"STREAM_RETRACTIONS_RETENTION_DAYS": "0"}, "STREAM_RETRACTIONS_RETENTION_DAYS=0 is below"),
    ],
)
def test_trainer_settings_bad_value_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**BASE, **env})


def test_retractions_retention_days_sets_the_topic_spec() -> None:
    from stream.runtime.topics import topic_specs

    settings = Settings.from_env({**BASE, "STREAM_RETRACTIONS_RETENTION_DAYS": "30"})
    spec = next(s for s in topic_specs(settings) if s.name == settings.topics.retractions)
    assert spec.configs == {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)}
