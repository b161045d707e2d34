"""Canary objectors against a real worker on the real broker (stream/compliance/canary.py).

A canary run beside a real worker: its probes are published, retracted after their
objection and timed, nothing fails, and no objecting canary's item ever reaches the
feed (the rule refuses them: the audit log says `objected` for each). A canary item
planted on the feed, before the canary starts or while it runs, counts as a
`published` failure. That EligibilityCanaryFailures then fires is promtool's unit
test (deploy/prometheus/rules_test.yml) and, on a real Prometheus,
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from stream.compliance.canary import Canary, CanaryMetrics, CanaryOptions, canary_accounts
from stream.compliance.scan import partition_for
from stream.config import Settings
from stream.verifier.verify import verify

from .harness import js, latest_by_key, make_topics, read_all, running_worker, send, unique_settings, until

pytestmark = pytest.mark.integration


def _value(metrics: CanaryMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value if value is not None else 0.0


@contextlib.asynccontextmanager
async def _running_canary(settings: Settings, options: CanaryOptions) -> AsyncIterator[tuple[Canary, CanaryMetrics]]:
    metrics = CanaryMetrics.create()
    canary = Canary(settings, options, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(canary.run(stop))
    try:
        async with asyncio.timeout(60):
            started = asyncio.create_task(canary.started.wait())
            await asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # the canary failed to start: its error
        yield canary, metrics
    finally:
        stop.set()
        await task


def test_canary_accounts_land_one_on_each_partition_under_the_prefix() -> None:
    accounts = canary_accounts("eligibility-canary-", "objector", 4)
    assert [partition_for(a.encode(), 4) for a in accounts] == [0, 1, 2, 3]
    assert all(a.startswith("eligibility-canary-objector-") for a in accounts)
    assert canary_accounts("eligibility-canary-", "objector", 4) == accounts  # the same after a restart


async def test_canary_beside_a_real_worker_times_propagation_without_failure(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    options = CanaryOptions(post_interval=0.3, probe_interval=0.2, deadline=10.0)
    async with running_worker(settings), _running_canary(settings, options) as (canary, metrics):
        # Every probe account's cycle, on each partition, completed at least once.
        await until(lambda: _value(metrics, "eligibility_canary_probes_total", outcome="retracted") >= 3, 90)
        objectors, probes = canary.objectors, canary.probe_accounts
        async with asyncio.timeout(60):  # six objectors' posts decided
            while True:
                decisions = [r.json() for r in await read_all(settings, settings.topics.decisions)]
                posts = {
                    d["content_id"]: d for d in decisions if d["author_id"] in objectors and d["action"] == "decide"
                }
                if len(posts) >= 6:
                    break
                await asyncio.sleep(0.5)
    assert len(objectors) == len(probes) == settings.partitions

    assert _value(metrics, "eligibility_canary_failures_total", kind="published") == 0
    assert _value(metrics, "eligibility_canary_failures_total", kind="propagation") == 0
    assert _value(metrics, "eligibility_canary_probes_total", outcome="not_published") == 0
    timed = _value(metrics, "eligibility_canary_propagation_seconds_count")
    assert timed >= 3
    assert 0 < _value(metrics, "eligibility_canary_propagation_seconds_sum") < timed * options.deadline

    # No objecting canary's item ever reached the feed: the rule refused each one as `objected`.
    feed = await read_all(settings, settings.topics.feed)
    on_feed = {r.key.decode() for r in feed if r.key is not None and r.value is not None}
    assert not [c for c in on_feed if c.startswith(tuple(objectors))]
    assert {(d["eligible"], d["reason"]) for d in posts.values()} == {(False, "objected")}

    # Each probe's item was published (while its author did not object), then retracted for
    # the objection: a tombstone on the feed and a record on training.retractions.
    probe_items = {c for c in on_feed if c.startswith(tuple(probes))}
    assert len(probe_items) >= 3
    latest = latest_by_key(feed)
    retracted = latest_by_key(await read_all(settings, settings.topics.retractions))
    for content_id in probe_items:
        assert latest[content_id.encode()].value is None, content_id
        assert orjson.loads(retracted[content_id.encode()].value or b"{}")["cause"] == "objection"

    # The independent verifier finds the feed compliant with the canaries in it.
    report = await verify(settings)
    assert report.violation_count == 0 and report.losses.count == 0, report


async def test_canary_item_planted_on_the_feed_counts_a_published_failure(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    prefix = settings.canary_prefix

    def planted(content_id: str) -> tuple[bytes, bytes]:
        # A feed record as the filter writes one, for a canary content id the filter never decided.
        return content_id.encode(), js({"content_id": content_id, "content_type": "post", "text": "planted"})

    # Left on the feed before the canary starts: counted once its deadline has passed.
    await send(settings, settings.topics.feed, [planted(f"{prefix}objector-0-0-planted-before")])
    options = CanaryOptions(post_interval=60.0, probe_interval=3600.0, deadline=2.0)
    async with running_worker(settings), _running_canary(settings, options) as (canary, metrics):
        assert list(canary.suspects) == [f"{prefix}objector-0-0-planted-before"]
        await until(lambda: _value(metrics, "eligibility_canary_failures_total", kind="published") == 1, 30)
        # Planted while it runs: counted as soon as it is read.
        await send(settings, settings.topics.feed, [planted(f"{prefix}objector-1-0-planted-during")])
        await until(lambda: _value(metrics, "eligibility_canary_failures_total", kind="published") == 2, 30)
        # An item of anyone else is none of the canary's business.
        await send(settings, settings.topics.feed, [planted("someone-else-1")])
        await until(lambda: _value(metrics, "eligibility_canary_probes_total", outcome="retracted") == 1, 60)
    assert _value(metrics, "eligibility_canary_failures_total", kind="published") == 2
    assert _value(metrics, "eligibility_canary_failures_total", kind="propagation") == 0


async def test_canary_without_the_topics_is_refused_with_the_topic_named(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    settings = replace(settings, topics=replace(settings.topics, objections=f"{settings.topics.objections}-missing"))
    from stream.compliance.canary import CanaryError

    with pytest.raises(CanaryError, match="objections-missing"):
        async with _running_canary(settings, CanaryOptions()):
            pass
