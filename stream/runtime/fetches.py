"""A consumer's fetch that may be cut short: the one private aiokafka counter the worker mends.

aiokafka 0.14 counts the fetches in flight (`SubscriptionState.fetch_context`, around
the wait of `getmany`). A consumer with a fetch in flight never counts as idle, and
idle is what its heartbeat watches: a loop that stops fetching for
`max_poll_interval_ms` makes the consumer leave the group, so that its partitions
move on. That context manager has no `finally`: a fetch cancelled inside it (the
interruption cuts reads short, `interrupt.py`), or ended by an error, stays counted
for ever, and the consumer would never leave the group again, however wedged its
loop. So such a fetch is uncounted here, through `consumer._subscription`, and
nowhere else.
`tests/unit/test_fetches.py` fails if aiokafka restores the count itself or renames
what this reads.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def fetch(
    consumer: AIOKafkaConsumer, *partitions: TopicPartition, timeout_ms: int, max_records: int
) -> dict[TopicPartition, list[Any]]:
    """`consumer.getmany(...)`; a fetch ended by an exception (a cancel among them) no longer counts as in flight."""
    state = consumer._subscription  # noqa: SLF001, RUF100  # no public way to end the count (module docstring)
    before: int = state._fetch_count  # noqa: SLF001, RUF100
    try:
        fetched: dict[TopicPartition, list[Any]] = await consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
    except BaseException:
        # What fetch_context does when a fetch ends normally. The worker fetches from
        # one consumer one fetch at a time, so the count above `before` is this fetch's.
        if state._fetch_count > before:  # noqa: SLF001, RUF100
            state._fetch_count = before  # noqa: SLF001, RUF100
            if before == 0:
                state._last_fetch_ended = time.monotonic()  # noqa: SLF001, RUF100
        raise
    return fetched
