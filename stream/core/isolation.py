"""Isolation: one record or stored item whose handling raises can never stop a partition.

Its handling is abandoned, and the whole batch is decided again from the unchanged
store with that record dead-lettered (or that item released or retracted): fail
closed. If failing closed raises too, the batch fails and the worker replays it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar, cast

_W = TypeVar("_W", bound=Hashable)
_T = TypeVar("_T")


class Failed(Exception):
    """Raised inside the engine when handling one record or stored item raised: it is handled again, failing closed."""

    def __init__(self, where: Hashable, error: str) -> None:
        super().__init__(where, error)
        self.where = where
        self.error = error


def isolating(attempt: Callable[[Mapping[_W, str]], _T]) -> tuple[_T, dict[_W, str]]:
    """Run `attempt` until it completes, each time with what failed so far (where -> error name).

    Returns its result and everything that failed. What fails again while failing
    closed is re-raised as it was raised (its cause), so the batch is replayed.
    """
    failed: dict[_W, str] = {}
    while True:
        try:
            return attempt(failed), failed
        except Failed as exc:
            where = cast(_W, exc.where)
            if where in failed:
                raise exc.__cause__ or exc from None
            failed[where] = exc.error
