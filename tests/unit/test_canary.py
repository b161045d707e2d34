"""The canary's settings, options, metrics and judgement of feed records, without Kafka.

Its runs against a real worker are tests/integration/test_canary.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.compliance.canary import (
    UNPUBLISHED_WAIT_SECONDS,
    Canary,
    CanaryError,
    CanaryMetrics,
    CanaryOptions,
    FailureKind,
    Probe,
    ProbeOutcome,
    canary_settings,
)
from stream.config import Settings
from stream.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _failures(metrics: CanaryMetrics, kind: FailureKind) -> float:
    return metrics.registry.get_sample_value("eligibility_canary_failures_total", {"kind": kind.value}) or 0.0


def test_canary_prefix_defaults_and_refuses_an_empty_or_spaced_prefix() -> None:
    assert Settings.from_env({"STREAM_DEV_MODE": "1"}).canary_prefix == "eligibility-canary-"
    assert Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_CANARY_PREFIX": "c-"}).canary_prefix == "c-"
    for bad in ("", "a b", "tab\there"):
        with pytest.raises(ConfigError, match="STREAM_CANARY_PREFIX"):
            Settings.from_env({"STREAM_DEV_MODE": "1", "STREAM_CANARY_PREFIX": bad})


def test_canary_settings_need_no_pseudonym_key_and_ignore_one_that_is_set() -> None:
    with pytest.raises(ConfigError, match="no pseudonym key"):
        Settings.from_env({})
    settings = canary_settings({"STREAM_CANARY_PREFIX": "c-", "STREAM_PSEUDONYM_KEY_FILE": "/nonexistent"})
    assert settings.canary_prefix == "c-"
    with pytest.raises(ConfigError, match="STREAM_PARTITIONS"):
        canary_settings({"STREAM_PARTITIONS": "x"})  # every other setting is still checked


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"post_interval": 0}, "--post-interval"),
        ({"probe_interval": -1}, "--probe-interval"),
        ({"deadline": 0}, "--deadline"),
        ({"country": "gb"}, "--country"),
        ({"country": "GBR"}, "--country"),
    ],
)
def test_canary_options_refuse_bad_values_naming_the_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(CanaryError, match=message):
        CanaryOptions(**options)  # type: ignore[arg-type]


def test_canary_command_refuses_a_bad_option_with_exit_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stream", "canary", "--deadline", "0"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --deadline must be above 0, not 0.0"


def test_canary_metrics_start_with_every_label_at_zero() -> None:
    registry = CanaryMetrics.create().registry
    for kind in FailureKind:
        assert registry.get_sample_value("eligibility_canary_failures_total", {"kind": kind.value}) == 0
    for outcome in ProbeOutcome:
        assert registry.get_sample_value("eligibility_canary_probes_total", {"outcome": outcome.value}) == 0
    assert registry.get_sample_value("eligibility_canary_propagation_seconds_bucket", {"le": "0.25"}) == 0


async def test_canary_judges_feed_records_under_its_prefix_only() -> None:
    metrics = CanaryMetrics.create()
    canary = Canary(Settings(canary_prefix="c-"), CanaryOptions(), metrics)
    probe = Probe("c-probe-0-1-abc")
    canary.probes[probe.content_id] = probe

    canary.on_feed(b"someone-1", b"{}")  # not a canary item
    canary.on_feed(b"c-probe-0-1-abc", b"{}")  # a probe's item in its cycle: expected
    canary.on_feed(b"c-probe-0-1-abc", b"{}")  # repeated by a replayed batch: still expected
    assert probe.published.is_set() and _failures(metrics, FailureKind.PUBLISHED) == 0

    canary.on_feed(b"c-probe-0-1-abc", None)
    canary.on_retraction(b"c-probe-0-1-abc")
    assert probe.retracted.is_set()
    canary.on_feed(b"c-probe-0-1-abc", b"{}")  # back on the feed after its retraction
    canary.on_feed(b"c-objector-1-0-x", b"{}")  # an objector's item
    assert _failures(metrics, FailureKind.PUBLISHED) == 2
    assert _failures(metrics, FailureKind.PROPAGATION) == 0


async def test_canary_counts_a_leftover_item_only_when_its_deadline_passed() -> None:
    metrics = CanaryMetrics.create()
    canary = Canary(Settings(canary_prefix="c-"), CanaryOptions(), metrics)
    canary.suspects = {"c-probe-0-1-gone": float("-inf"), "c-probe-0-1-later": float("inf")}
    canary.check_overdue()
    assert _failures(metrics, FailureKind.PUBLISHED) == 1
    assert list(canary.suspects) == ["c-probe-0-1-later"]
    canary.on_feed(b"c-probe-0-1-later", None)  # tombstoned in time
    assert canary.suspects == {}


async def test_canary_forgets_an_unpublished_probe_after_an_hour_and_counts_its_item_then() -> None:
    metrics = CanaryMetrics.create()
    canary = Canary(Settings(canary_prefix="c-"), CanaryOptions(), metrics)
    late, forgotten = Probe("c-probe-0-1-late"), Probe("c-probe-0-1-forgotten")
    late.objected_at, forgotten.objected_at = time.monotonic(), time.monotonic() - UNPUBLISHED_WAIT_SECONDS
    for probe in (late, forgotten):
        canary.probes[probe.content_id] = canary.awaiting[probe.content_id] = probe
    canary.check_overdue()
    assert list(canary.awaiting) == list(canary.probes) == ["c-probe-0-1-late"]
    canary.on_feed(b"c-probe-0-1-late", b"{}")  # decided before the objection: still expected, then retracted
    canary.on_feed(b"c-probe-0-1-forgotten", b"{}")
    assert _failures(metrics, FailureKind.PUBLISHED) == 1
