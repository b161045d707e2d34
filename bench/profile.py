"""Summarise a py-spy `--format raw` profile (collapsed stacks) into where the time goes."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# Buckets, checked from the leaf up: the first frame that matches names the sample's bucket.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("engine: decode content (codec.decode_content)", ("decode_content (stream/core/codec.py",)),
    (
        "engine: decode stored profile/objection",
        ("profile (stream/core/items.py", "objection (stream/core/items.py", "unpack_profile (stream/core/state.py"),
    ),
    ("engine: rule (policy.decide)", ("decide (stream/core/policy.py",)),
    ("engine: build records (records.py, orjson, HMAC)", ("stream/core/records.py",)),
    (
        "engine: RocksDB reads (state.get/get_many/scan)",
        (
            "get (stream/runtime/store.py",
            "get_many (stream/runtime/store.py",
            "scan (stream/runtime/store.py",
            "is_published (stream/core/overlay.py",
            "published_items (stream/core/overlay.py",
        ),
    ),
    ("engine: other", ("stream/core/",)),
    ("state: RocksDB writes (store.apply)", ("apply (stream/runtime/store.py",)),
    ("metrics (prometheus_client)", ("stream/runtime/metrics.py", "prometheus_client/")),
    ("produce: output batches and their sends", ("stream/runtime/sender.py",)),
    ("freshness gate and top-up (gate.py: end offsets, position, getmany)", ("stream/runtime/gate.py",)),
    ("commit", ("stream/runtime/offsets.py",)),
    (
        "fetch: aiokafka getmany / record parsing",
        ("getmany (aiokafka/", "aiokafka/consumer/fetcher.py", "aiokafka/record/"),
    ),
    ("aiokafka producer internals (sender, batching, compression)", ("aiokafka/producer/", "aiokafka/codec.py")),
    ("aiokafka network / protocol", ("aiokafka/conn.py", "aiokafka/client.py", "aiokafka/protocol/")),
    ("asyncio event loop", ("asyncio/",)),
    ("faust / mode (host app)", ("faust/", "mode/")),
]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/work/main/" in path:
        return path.split("/work/main/", 1)[1]
    return path


def _frames(stack: str) -> list[str]:
    out: list[str] = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        if m is None:
            continue  # "process ..." and "thread ..." pseudo-frames
        out.append(f"{m['func']} ({_short(m['path'])})")
    return out


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    """The top functions by own and total samples of a py-spy speedscope profile."""
    if not path.exists():
        return {"error": f"{path} missing (py-spy failed? see the run's logs/py-spy.log)"}
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
        bucket = "other"
        for f in reversed(frames):
            name = next((b for b, needles in BUCKETS if any(n in f for n in needles)), None)
            if name is not None:
                bucket = name
                break
        buckets[bucket] += count

    def pct(c: Counter[str], n: int) -> list[list[Any]]:
        return [[k, v, round(100 * v / total, 1)] for k, v in c.most_common(n)]

    return {
        "samples": total,
        "rate_hz": 100,
        "buckets": pct(buckets, 40),
        "self": pct(self_time, top),
        "inclusive": pct(inclusive, top + 15),
    }
