"""`python -m stream evidence` on the real broker: its numbers equal an independent count of the topics.

A known scenario (the filter scenario's profiles, content and bad records) is decided
by a worker; after a moment `since`, a second phase brings an objection, a deletion,
a visibility change, new decisions and a dead letter. The report of the whole run and
the report from `since` must each show exactly what a separate count of the records
finds (and what the scenario makes), in its JSON figures and in its HTML; an empty
period says so; bad dates are one clear error line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.config import Settings

from .harness import KEY, js, make_topics, process_env, read_until, running_worker, send, unique_settings
from .test_filter_scenario import BAD, CONTENT, OBJECTIONS, PROFILES, objection, upsert

pytestmark = pytest.mark.integration

ACCOUNT_IDS = sorted({key.decode() for key, _ in PROFILES} | {"a-nobody"})


async def _records(settings: Settings, topic: str) -> list[tuple[int, bytes | None, Any]]:
    """(timestamp ms, key, parsed value) of every record on `topic`: the independent count's input."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[int, bytes | None, Any]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(
                    (r.timestamp, r.key, orjson.loads(r.value) if r.value is not None else None) for r in records
                )
        return out
    finally:
        await consumer.stop()


def _count(
    settings: Settings, records: dict[str, list[tuple[int, bytes | None, Any]]], since_ms: int
) -> dict[str, Any]:
    """What the report must say for records at or after `since_ms`, counted here without the report's code."""
    decisions = [v for ts, _, v in records["decisions"] if ts >= since_ms]
    retractions = [v for ts, _, v in records["retractions"] if ts >= since_ms]
    dead = [v for ts, _, v in records["dlq"] if ts >= since_ms]
    objected = [(ts, k) for ts, k, v in records["objections"] if ts >= since_ms and v and v["status"] == "objected"]
    seconds = []
    for ts, key in objected:
        assert key is not None
        retracted = [
            t
            for t, _, v in records["decisions"]
            if v["action"] == "retract" and v["cause"] == "objection" and v["author_id"] == key.decode() and t >= ts
        ]
        if retracted:
            seconds.append((max(retracted) - ts) / 1000)
    return {
        "by_reason": dict(Counter(d["reason"] for d in decisions if d["action"] == "decide")),
        "skips": dict(Counter(d["reason"] for d in decisions if d["action"] == "skip")),
        "audit_retractions": dict(Counter(d["cause"] for d in decisions if d["action"] == "retract")),
        "retractions": dict(Counter(r["cause"] for r in retractions)),
        "dead_letters": dict(Counter(d["reason"] for d in dead)),
        "versions": sorted({d["policy_version"] for d in decisions}),
        "objections": len(objected),
        "seconds": seconds,
    }


def _evidence(
    settings: Settings, tmp_path: Path, name: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    out, figures = tmp_path / f"{name}.html", tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, "-m", "stream", "evidence", *args, "--out", str(out), "--json", str(figures)],
        env=process_env(settings, STREAM_PSEUDONYM_KEY=KEY.decode()),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done, out, figures


def _cell(page: str, label: str) -> str:
    """The value cell beside `label` in the report's summary or measure tables."""
    match = re.search(rf"<td>{re.escape(label)}</td><td class=\"n\">([^<]*)</td>", page)
    assert match, f"no row {label!r} in the report"
    return match.group(1)


def _rows(page: str, heading: str) -> dict[str, int]:
    """code -> count of the table under the section `heading` (reason/cause, count, meaning)."""
    section = page.split(heading, 1)[1].split("<h2>", 1)[0]
    table = section.split("<table>", 1)[1].split("</table>", 1)[0]
    return {
        code: int(n.replace(",", ""))
        for code, n in re.findall(r"<tr><td>([^<]+)</td><td class=\"n\">([\d,]+)</td><td>", table)
    }


def _since_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _assert_report(page: str, figures: dict[str, Any], expected: dict[str, Any]) -> None:
    assert figures["decisions"]["by_reason"] == expected["by_reason"]
    assert figures["decisions"]["total"] == sum(expected["by_reason"].values())
    assert figures["decisions"]["eligible"] == expected["by_reason"].get("eligible", 0)
    assert figures["skips"] == expected["skips"]
    assert figures["audit_retractions"] == expected["audit_retractions"]
    assert figures["retractions"]["by_cause"] == expected["retractions"]
    assert figures["dead_letters"]["by_reason"] == expected["dead_letters"]
    assert [v["version"] for v in figures["policy_versions"]] == expected["versions"]
    p = figures["propagation"]
    assert p["objections"] == expected["objections"]
    assert p["measured"] == len(expected["seconds"])
    assert p["max_seconds"] == (max(expected["seconds"]) if expected["seconds"] else None)
    assert p["meets_objective"] == (None if not expected["seconds"] else p["within_objective"] / p["measured"] >= 0.99)
    # The HTML shows the same numbers.
    assert _cell(page, "items decided") == f"{figures['decisions']['total']:,}"
    assert _cell(page, "of which used for training (eligible)") == f"{figures['decisions']['eligible']:,}"
    assert _cell(page, "items retracted from the training feed") == f"{figures['retractions']['total']:,}"
    assert _cell(page, "records that could not be processed (dead letters)") == f"{figures['dead_letters']['total']:,}"
    assert _cell(page, "objections received") == f"{p['objections']:,}"
    assert _rows(page, "<h2>2. Decisions by reason</h2>") == expected["by_reason"]
    assert _rows(page, "<h2>3. Retractions by cause</h2>") == expected["retractions"]
    assert _rows(page, "<h2>4. Dead letters</h2>") == expected["dead_letters"]
    # Self-contained, and no account id, pseudonym or payload in it.
    assert page.count('src="data:image/png;base64,') == 5
    assert not re.search(r"<(script|link)\b|src=\"http|url\(", page)
    for account in ACCOUNT_IDS:
        assert account not in page
    assert "text of" not in page and "1980-05-05" not in page


async def test_evidence_report_numbers_equal_an_independent_count_of_the_topics(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)
    start_ms = int(time.time() * 1000)
    await send(settings, settings.topics.profiles, PROFILES)
    await send(settings, settings.topics.objections, OBJECTIONS)
    await send(
        settings, settings.topics.content, [record for record, _ in CONTENT.values()] + [(k, v) for k, v, _ in BAD]
    )

    async with running_worker(settings):
        await read_until(settings, settings.topics.decisions, len(CONTENT))
        await read_until(settings, settings.topics.dlq, len(BAD))
        # `since`: after every record of the first phase (whose timestamps are at most now).
        since_ms = int(time.time() * 1000) + 1
        while time.time() * 1000 <= since_ms:
            await asyncio.sleep(0.001)  # the clock's millisecond, not a wait for the worker
        # Phase 2: a-gb objects (its eligible photo retracted), a-br deletes an item, a-withdrawn hides one,
        # a new eligible and a new refused item, a repeated event, a dead letter.
        await send(settings, settings.topics.objections, [objection("a-gb", "objected")])
        deleted = js(
            {
                "event_id": "e-del-br",
                "op": "delete",
                "content_id": "c-eligible-br",
                "author_id": "a-br",
                "event_time": "2026-11-28T09:16:00Z",
            }
        )
        hidden = upsert("c-withdrawn", "a-withdrawn", content_type="comment", visibility="friends")
        hidden = (
            hidden[0],
            hidden[1].replace(b'"e-c-withdrawn"', b'"e-c-withdrawn-2"').replace(b"09:15:00", b"09:16:00"),
        )
        await send(
            settings,
            settings.topics.content,
            [
                (b"a-br", deleted),
                hidden,
                upsert("c-new-br", "a-br"),
                upsert("c-new-de", "a-de"),
                CONTENT["c-de"][0],  # the same event again: superseded
                (b"a-br", b"{not json"),
            ],
        )
        # The objection's retract, the delete's, the hide's decision and retract, 2 new, 1 skip.
        await read_until(settings, settings.topics.decisions, len(CONTENT) + 1 + 1 + 2 + 2 + 1)
        await read_until(settings, settings.topics.dlq, len(BAD) + 1)
        await read_until(settings, settings.topics.retractions, 3)

    topics = settings.topics
    records = {
        "decisions": await _records(settings, topics.decisions),
        "retractions": await _records(settings, topics.retractions),
        "dlq": await _records(settings, topics.dlq),
        "objections": await _records(settings, topics.objections),
    }

    # The whole run.
    done, out, json_path = _evidence(settings, tmp_path, "all", "--since", _since_text(start_ms - 1000))
    assert done.returncode == 0, done.stderr
    whole = orjson.loads(json_path.read_bytes())
    expected = _count(settings, records, start_ms - 1000)
    assert expected["by_reason"]["eligible"] == 4 and expected["objections"] == 2
    assert expected["retractions"] == {"objection": 1, "content_deleted": 1, "visibility_changed": 1}
    _assert_report(out.read_text(), whole, expected)
    assert whole["verifier"]["ok"] is True
    assert whole["verdict"]["compliant"] is bool(whole["propagation"]["meets_objective"])
    assert "Compliant" in done.stdout or "Not compliant" in done.stdout

    # From `since`: only the second phase.
    done, out, json_path = _evidence(settings, tmp_path, "since", "--since", _since_text(since_ms), "--no-verify")
    assert done.returncode == 0, done.stderr
    later = orjson.loads(json_path.read_bytes())
    expected = _count(settings, records, since_ms)
    assert expected["by_reason"] == {"eligible": 1, "jurisdiction_not_enabled": 1, "not_public": 1}
    assert expected["retractions"] == {"objection": 1, "content_deleted": 1, "visibility_changed": 1}
    assert expected["dead_letters"] == {"malformed_json": 1} and expected["skips"] == {"superseded": 1}
    assert expected["objections"] == 1 and len(expected["seconds"]) == 1
    _assert_report(out.read_text(), later, expected)
    assert later["verifier"] is None and later["verdict"]["compliant"] is not True
    assert "Not available: not run (--no-verify)" in out.read_text()
    assert "Canaries" in out.read_text() and "no Prometheus was given" in out.read_text()

    # One figure alone, as PNG.
    figure = tmp_path / "decisions.png"
    drawn = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream",
            "evidence",
            "--since",
            _since_text(since_ms),
            "--figure",
            "decisions",
            "--until",
            later["period"]["until"],
            "--out",
            str(figure),
        ],
        env=process_env(settings, STREAM_PSEUDONYM_KEY=KEY.decode()),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert drawn.returncode == 0, drawn.stderr
    assert figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # An empty period says so.
    quiet_ms = int(time.time() * 1000)
    done, out, json_path = _evidence(settings, tmp_path, "empty", "--since", _since_text(quiet_ms), "--no-verify")
    assert done.returncode == 0, done.stderr
    empty = orjson.loads(json_path.read_bytes())
    assert empty["empty"] is True and empty["decisions"]["total"] == 0 and empty["policy_versions"] == []
    assert "No activity was recorded in this period" in out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday': expected a date"),
        (["--since", "2026-13-01"], "--since '2026-13-01': expected a date"),
        (["--since", "2026-12-01T10:00:00"], "give the time zone"),
        (["--since", "2026-12-02", "--until", "2026-12-01"], "is not before the end of the period"),
        (["--since", "2026-12-01", "--until", "2999-01-01"], "is in the future"),
        (["--since", "2026-12-01", "--figure", "pie"], "--figure 'pie': one of decisions"),
    ],
)
def test_evidence_bad_arguments_are_one_clear_error_line(
    bootstrap: str, tmp_path: Path, args: list[str], message: str
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "stream", "evidence", *args, "--out", str(tmp_path / "r.html")],
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.html").exists()


# -- with a real Prometheus --------------------------------------------------------------


async def test_evidence_reads_canaries_verifier_and_worker_series_from_a_real_prometheus(
    bootstrap: str, tmp_path: Path
) -> None:
    """Debian's Prometheus scrapes a stand-in exporter of the canary's, verifier's and worker's series; the
    report's Prometheus numbers follow what the exporter counted in the period, and a canary failure fails it."""
    import shutil
    import urllib.parse

    import yaml
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

    from tests.conftest import missing

    from .harness import free_port, http_get
    from .test_prometheus import Process

    binary = shutil.which("prometheus")
    if binary is None:
        missing("PROMETHEUS", "evidence's Prometheus test", "no prometheus binary: run scripts/install-prometheus.sh")
    settings = unique_settings(bootstrap, tmp_path / "data")
    await make_topics(settings)

    registry = CollectorRegistry()
    failures = Counter("eligibility_canary_failures_total", "canary failures", ["kind"], registry=registry)
    canary_seconds = Histogram("eligibility_canary_propagation_seconds", "canary", registry=registry)
    violations = Gauge("eligibility_verifier_violations", "violations", ["reason"], registry=registry)
    losses = Gauge("eligibility_verifier_losses", "losses", registry=registry)
    last_run = Gauge("eligibility_verifier_last_run_timestamp_seconds", "last run", registry=registry)
    objections = Histogram(
        "eligibility_objection_propagation_seconds", "objections", buckets=(0.1, 0.25, 1.0), registry=registry
    )
    failures.labels(kind="published")
    violations.labels(reason="minor").set(0)
    losses.set(0)
    last_run.set(time.time())
    exporter_port, prometheus_port = free_port(), free_port()
    while exporter_port == prometheus_port:
        prometheus_port = free_port()
    server, _ = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "stand-in", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
                ],
            }
        )
    )
    base = f"http://127.0.0.1:{prometheus_port}"
    prometheus = Process(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        tmp_path / "prometheus.log",
    )

    async def scraped_after(moment: float) -> None:
        """Until Prometheus holds a sample of the stand-in taken after `moment` (Unix seconds)."""
        query = urllib.parse.urlencode({"query": "max(timestamp(eligibility_verifier_losses))"})
        async with asyncio.timeout(60):
            while True:
                prometheus.assert_running()
                status, body = await http_get(f"{base}/api/v1/query?{query}")
                result = orjson.loads(body)["data"]["result"] if status == 200 else []
                if result and float(result[0]["value"][1]) > moment:
                    return
                await asyncio.sleep(0.2)

    try:
        since = time.time()
        await scraped_after(since)  # a sample of the counters before they move, inside the period
        failures.labels(kind="published").inc(3)
        for _ in range(5):
            canary_seconds.observe(0.1)
        for seconds in [0.05] * 9 + [0.5]:
            objections.observe(seconds)
        for _ in range(3):  # three verifier runs, each seen by a scrape
            last_run.set(time.time())
            await scraped_after(time.time())
        done, out, json_path = _evidence(
            settings, tmp_path, "prom", "--since", _since_text(int(since * 1000)), "--prometheus", base, "--no-verify"
        )
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    figures = orjson.loads(json_path.read_bytes())
    prom = figures["prometheus"]
    # increase() extrapolates to the window's edges: the counts are at least what was counted.
    assert prom["canaries"]["failures"] >= 3 and prom["canaries"]["propagations"] >= 5
    assert 0.05 < prom["canaries"]["p99_seconds"] <= 0.25  # in the bucket holding 0.1
    assert prom["verifier"]["runs"] >= 3 and prom["verifier"]["max_violations"] == 0
    assert prom["worker_objections"] >= 10 and prom["worker_share_within"] == pytest.approx(0.9)
    assert figures["verdict"]["compliant"] is False
    assert any("canaries failed" in reason for reason in figures["verdict"]["reasons"])
    page = out.read_text()
    assert _cell(page, "canary failures (an item on the feed, or an objection too slow)") == (
        f"{prom['canaries']['failures']:,.0f}"
    )
    assert f"--prometheus {base}" in page and "Not compliant" in page


async def test_evidence_missing_topic_is_an_evidence_error_naming_it(bootstrap: str, tmp_path: Path) -> None:
    from dataclasses import replace

    from stream.compliance.evidence import EvidenceError, make_period, read_period

    settings = unique_settings(bootstrap, tmp_path)
    await make_topics(settings)
    missing_dlq = replace(settings, topics=replace(settings.topics, dlq=f"{settings.topics.dlq}-missing"))
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(EvidenceError, match=r"topics do not exist: .*dlq-missing"):
        await read_period(missing_dlq, make_period((now - dt.timedelta(hours=1)).isoformat(), None, now))
