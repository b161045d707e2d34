"""The latency floors of the benchmark (`bench/baseline_echo.py`) echo what the latency reader matches.

`python -m bench latency` runs them after each worker run and reports their latency
as the floors the worker's is compared with; the figure means something only if every
stamped content event comes back on the decisions topic, matched by its event id,
on its own partition, and nothing else does. Here each echo runs as the benchmark
runs it (its command, configured from the environment, waited for by its log line).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from bench import common, load

from .harness import make_topics, read_all, read_until, unique_settings

pytestmark = pytest.mark.integration

# Odd unicode, and the member name inside a string value (escaped there, so never matched).
TEXT = '\u202e\U0001f600 "event_id":"x' + "\u0000" * 3


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("echo", []),
        ("echo-ordered", []),
        # The variant that measures work per batch, pipelined (bench/notes.md): the same records.
        ("echo-ordered", ["--work-ms", "0.5", "--pipelined"]),
    ],
)
async def test_the_echo_floors_return_each_stamped_event_as_a_decision_on_its_partition(
    kind: str, extra: list[str], bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "echo", partitions=2)
    await make_topics(settings)
    log = tmp_path / "echo.log"
    with log.open("wb") as out:
        echo = subprocess.Popen(
            [sys.executable, *common.COMMANDS[kind][1:], *extra],
            env=common.process_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=common.ROOT,
        )
    proc = common.Proc(echo, 0.0, log, 0)
    try:
        await common.wait_log(proc, "echoing", timeout=60)
        events = [
            load.stamp(orjson.dumps({"event_id": f"e{i}", "content_id": f"c{i}", "text": TEXT}), 1.5) for i in range(6)
        ]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            topic = settings.topics.content
            sent = [await producer.send(topic, key=b"k%d" % i, value=v, partition=i % 2) for i, v in enumerate(events)]
            # Neither is a stamped event: no echo for them.
            sent.append(await producer.send(settings.topics.content, key=b"bad", value=b'{"no_id":1}', partition=0))
            sent.append(await producer.send(settings.topics.content, key=b"gone", value=None, partition=1))
            for future in sent:
                await future
        finally:
            await producer.stop()
        echoed = await read_until(settings, settings.topics.decisions, len(events), timeout=60)
    finally:
        echo.terminate()
        echo.wait(30)
    assert echo.returncode == 0, log.read_text()[-3000:]
    assert len(await read_all(settings, settings.topics.decisions)) == len(events)
    by_id = {load.event_id_of(o.value or b""): o for o in echoed}
    assert sorted(by_id) == sorted(b"e%d" % i for i in range(6))
    for i in range(6):
        o = by_id[b"e%d" % i]
        assert o.partition == i % 2 and o.key == b"k%d" % i
        assert b'"action":"decide"' in (o.value or b"")
        assert orjson.loads(o.value or b"")["gen_sent_at"].endswith("Z")
    # The crash-safe order's steps around the echoes: the index's changelog before, the items' after,
    # one record for each fetched partition; none without `--ordered`.
    t = settings.topics
    for topic in (t.published, t.items):
        steps = await read_all(settings, topic)
        if kind == "echo":
            assert steps == []
        else:
            assert {o.partition for o in steps} == {0, 1}
            assert all(o.key == b"echo" for o in steps)
