"""STREAM_TRAINER_GROUPS and STREAM_TRAINER_ACK_HOURS: read once, refused with a message naming the variable."""

from __future__ import annotations

import pytest

from stream.config import Settings
from stream.errors import ConfigError

BASE = {"STREAM_DEV_MODE": "1"}


def test_trainer_settings_default_to_no_groups_and_24_hours() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.trainer_groups, settings.trainer_ack_hours) == ((), 24)


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
    ],
)
def test_trainer_settings_bad_value_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**BASE, **env})
