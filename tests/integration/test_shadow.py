"""Shadow mode on the real broker: the differences match an independent count, and the feed is untouched.

The known scenario of test_filter_scenario runs twice on separate topics: once with
the packaged policy alone, once with a shadow policy beside it that enables DE,
drops BR's notice period and raises the minimum age to 30. The shadow run's diff
topic and metric equal a count made with the verifier's own rule; its feed and
decisions equal the plain run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.config import Settings
from stream.core.engine import Engine
from stream.core.policy import Policy, load_policy
from stream.core.shadow import load_shadow_policy
from stream.errors import TopicLayoutError
from stream.runtime.metrics import Metrics
from stream.runtime.topics import check_layout
from stream.runtime.worker import FilterWorker
from stream.verifier import rule as vrule
from stream.verifier.inputs import parse_profile
from stream.verifier.state import Account

from .harness import (
    free_port,
    http_get,
    latest_by_key,
    make_topics,
    process_env,
    read_all,
    read_until,
    send,
    unique_settings,
    until,
    with_topics,
)
from .test_filter_scenario import CONTENT, OBJECTIONS, PROFILES

pytestmark = pytest.mark.integration

SHADOW_TOML = """
version = "shadow-it-1"
content_types = ["post", "comment", "photo", "caption"]
minimum_age = 30
[jurisdictions.GB]
notice_period_days = 0
[jurisdictions.BR]
notice_period_days = 0
[jurisdictions.DE]
notice_period_days = 0
"""


@contextlib.asynccontextmanager
async def worker_with(settings: Settings, shadow: Policy | None) -> AsyncIterator[FilterWorker]:
    policy = load_policy(settings.policy_path)
    worker = FilterWorker(
        settings,
        Engine(policy, settings.pseudonym_key, settings.topics, shadow=shadow),
        Metrics.create(policy_version=policy.version, shadow=shadow is not None),
    )
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def scenario(settings: Settings) -> None:
    await make_topics(settings)
    await send(settings, settings.topics.profiles, PROFILES)
    await send(settings, settings.topics.objections, OBJECTIONS)
    await send(settings, settings.topics.content, [record for record, _ in CONTENT.values()])


def accounts() -> dict[str, Account]:
    """The scenario's accounts as the verifier reads them, from the bytes sent."""
    out: dict[str, Account] = {}
    for key, value in PROFILES:
        out[key.decode()] = Account(profile=parse_profile(key.decode(), value))
    for key, value in OBJECTIONS:
        out[key.decode()].objected = orjson.loads(value)["status"] == "objected"
    return out


def _verifier_policy(text: str, path: Path) -> vrule.Policy:
    path.write_text(text)
    return vrule.read_policy(path)


def without_decided_at(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "decided_at"}


async def test_shadow_worker_differences_match_independent_count_and_feed_untouched(
    bootstrap: str, tmp_path: Path
) -> None:
    plain = unique_settings(bootstrap, tmp_path / "plain")
    shadowed = unique_settings(bootstrap, tmp_path / "shadow")
    shadow_file = tmp_path / "shadow.toml"
    shadow_file.write_text(SHADOW_TOML)
    in_force = load_policy()
    shadow = load_shadow_policy(shadow_file, in_force)
    assert shadow is not None
    await scenario(plain)
    await scenario(shadowed)

    async with worker_with(plain, None):
        await read_until(plain, plain.topics.decisions, len(CONTENT))
    async with worker_with(shadowed, shadow) as worker:
        decided = await read_until(shadowed, shadowed.topics.decisions, len(CONTENT))
        # The independent count: each decision's event judged under both policies by the verifier's rule.
        in_force_v = vrule.read_policy(None)
        shadow_v = _verifier_policy(SHADOW_TOML, tmp_path / "verifier-shadow.toml")
        state = accounts()
        expected: Counter[tuple[str, str]] = Counter()
        expected_ids = set()
        for record in decided:
            decision = record.json()
            value = orjson.loads(CONTENT[decision["content_id"]][0][1])
            now = dt.datetime.fromisoformat(decision["decided_at"])
            created = dt.datetime.fromisoformat(value["created_at"])
            args = (value["content_type"], value["visibility"], created, state.get(value["author_id"]))
            ours, theirs = vrule.judge(*args, in_force_v, now), vrule.judge(*args, shadow_v, now)
            assert ours.value == decision["reason"]
            if ours is not theirs:
                expected[ours.value, theirs.value] += 1
                expected_ids.add(decision["content_id"])
        # The scenario's known differences, as the count finds them.
        assert expected == Counter(
            {
                ("jurisdiction_not_enabled", "eligible"): 1,  # c-de
                ("notice_period_running", "eligible"): 1,  # c-notice
                ("created_while_minor", "minor"): 1,  # c-was-minor: 26, under the shadow's 30
            }
        )
        diffs = await read_until(shadowed, shadowed.topics.shadow, sum(expected.values()))

        def metric() -> Counter[tuple[str, str]]:
            out: Counter[tuple[str, str]] = Counter()
            for family in worker.metrics.registry.collect():
                if family.name == "eligibility_shadow_differences":
                    for sample in family.samples:
                        if sample.name.endswith("_total") and sample.value:
                            out[sample.labels["in_force_reason"], sample.labels["shadow_reason"]] += int(sample.value)
            return out

        await until(lambda: metric() == expected, timeout=30)  # counted in the batch's tail, after the acks

    records = [d.json() for d in diffs]
    assert {r["content_id"] for r in records} == expected_ids
    assert Counter((r["in_force_reason"], r["shadow_reason"]) for r in records) == expected
    for r in records:
        assert r["in_force_policy_version"] == in_force.version and r["shadow_policy_version"] == "shadow-it-1"
        assert set(r) == {
            "content_id",
            "event_id",
            "in_force_reason",
            "in_force_policy_version",
            "shadow_reason",
            "shadow_policy_version",
            "decided_at",
        }
    assert [d.key for d in diffs] == [d.json()["content_id"].encode() for d in diffs]

    # The feed and the audit log are those of the run without a shadow (but the times).
    plain_feed = {
        k: without_decided_at(v.json()) for k, v in latest_by_key(await read_all(plain, plain.topics.feed)).items()
    }
    shadow_feed = {
        k: without_decided_at(v.json())
        for k, v in latest_by_key(await read_all(shadowed, shadowed.topics.feed)).items()
    }
    assert shadow_feed == plain_feed
    assert set(shadow_feed) == {cid.encode() for cid, (_, reason) in CONTENT.items() if reason == "eligible"}
    plain_decisions = sorted(
        (without_decided_at(d.json()) for d in await read_all(plain, plain.topics.decisions)),
        key=lambda d: d["content_id"],
    )
    shadow_decisions = sorted(
        (without_decided_at(d.json()) for d in await read_all(shadowed, shadowed.topics.decisions)),
        key=lambda d: d["content_id"],
    )
    assert shadow_decisions == plain_decisions
    # Nothing was retracted, and the plain run wrote no diff record.
    assert await read_all(plain, plain.topics.shadow) == []
    assert await read_all(shadowed, shadowed.topics.retractions) == []


# -- the worker process and its start-up checks -----------------------------------------


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env=process_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_worker_process_with_shadow_policy_writes_differences_and_serves_the_metric(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    assert _cli(settings, "topics", "create").returncode == 0
    shadow_file = tmp_path / "shadow.toml"
    shadow_file.write_text(SHADOW_TOML)
    port = free_port()
    env = process_env(settings, STREAM_WEB_PORT=str(port), STREAM_SHADOW_POLICY_PATH=str(shadow_file))
    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(90):
            while (await http_get(f"http://127.0.0.1:{port}/ready"))[0] != 200:
                assert worker.poll() is None, log_path.read_text()[-3000:]
                await asyncio.sleep(0.2)
        await send(settings, settings.topics.profiles, PROFILES)
        await send(settings, settings.topics.objections, OBJECTIONS)
        await send(settings, settings.topics.content, [record for record, _ in CONTENT.values()])
        diffs = await read_until(settings, settings.topics.shadow, 3)
        assert {d.json()["content_id"] for d in diffs} == {"c-de", "c-notice", "c-was-minor"}

        series = "eligibility_shadow_differences_total"
        wanted = (
            f'{series}{{in_force_reason="jurisdiction_not_enabled",shadow_reason="eligible"}} 1.0',
            f'{series}{{in_force_reason="notice_period_running",shadow_reason="eligible"}} 1.0',
            f'{series}{{in_force_reason="created_while_minor",shadow_reason="minor"}} 1.0',
            f'{series}{{in_force_reason="eligible",shadow_reason="minor"}} 0.0',  # every pair from start-up
        )

        async def scraped() -> str:
            return (await http_get(f"http://127.0.0.1:{port}/metrics"))[1].decode()

        async with asyncio.timeout(30):  # counted in the batch's tail, after the acknowledgements
            text = await scraped()
            while not all(line in text for line in wanted):
                await asyncio.sleep(0.2)
                text = await scraped()
        assert 'eligibility_output_records_total{output="shadow"} 3.0' in text
        feed = latest_by_key(await read_all(settings, settings.topics.feed))
        assert set(feed) == {cid.encode() for cid, (_, reason) in CONTENT.items() if reason == "eligible"}

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()
    assert "shadow policy shadow-it-1 beside" in log_path.read_text()


def test_worker_shadow_policy_with_the_version_in_force_refused_naming_the_variable(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    assert _cli(settings, "topics", "create").returncode == 0
    same = tmp_path / "same.toml"
    same.write_text(SHADOW_TOML.replace('"shadow-it-1"', f'"{load_policy().version}"'))
    result = _cli(settings, "worker", STREAM_SHADOW_POLICY_PATH=str(same))
    assert result.returncode == 2
    assert "STREAM_SHADOW_POLICY_PATH" in result.stderr and "version" in result.stderr
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(SHADOW_TOML.replace("minimum_age = 30", "minimum_age = 12"))
    result = _cli(settings, "worker", STREAM_SHADOW_POLICY_PATH=str(invalid))
    assert result.returncode == 2
    assert "STREAM_SHADOW_POLICY_PATH" in result.stderr and "minimum_age" in result.stderr


async def test_layout_check_requires_the_shadow_topic_only_with_a_shadow_policy(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    missing_topic = with_topics(settings, shadow=settings.topics.shadow + ".missing")
    await check_layout(missing_topic)  # no shadow policy: the diff topic is not needed
    with pytest.raises(TopicLayoutError, match=re.escape(missing_topic.topics.shadow)):
        await check_layout(replace(missing_topic, shadow_policy_path=tmp_path / "shadow.toml"))
