"""The rebalance benchmark's judgements (bench/rebalance.py): when a group has settled, and a window's latency."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from bench.rebalance import settled, window_stats


def _ready(*partitions: int) -> tuple[int, bytes]:
    return 200, orjson.dumps({"status": "ready", "partitions": list(partitions)})


def test_settled_only_when_every_worker_is_ready_and_each_partition_is_held_once() -> None:
    assert settled([_ready(0, 1, 2, 3)], 4)
    assert settled([_ready(0, 2), _ready(1, 3)], 4)
    # A joiner not ready yet, or not answering.
    assert not settled([_ready(0, 2), (503, b'{"status": "recovering", "partitions": [1, 3]}')], 4)
    assert not settled([_ready(0, 1, 2, 3), (0, b"")], 4)
    # A wedged member that still holds what another took: a partition held twice.
    assert not settled([_ready(0, 1, 2, 3), _ready(1, 3)], 4)
    # A partition nobody holds (a leaver's, until its session ran out).
    assert not settled([_ready(0, 1)], 4)


@given(
    st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10)), max_size=200),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_window_stats_are_of_the_events_scheduled_inside_the_window(
    samples: list[tuple[float, float]], start: float, length: float
) -> None:
    end = start + length
    inside = sorted(lat for at, lat in samples if start <= at < end)
    stats = window_stats(samples, start, end)
    assert stats["events"] == len(inside)
    if inside:
        assert stats["max_ms"] == round(1000 * inside[-1], 1)
        assert min(inside) * 1000 - 0.05 <= stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        # No more than 1 % of the window's events lie above its p99.
        assert sum(1 for lat in inside if round(1000 * lat, 1) > stats["p99_ms"]) <= 0.01 * len(inside)
    else:
        assert stats["p99_ms"] is None
