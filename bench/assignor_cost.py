"""The assignor's plan, timed on the group's leader: `python -m bench.assignor_cost`.

No broker. `assign_partition_numbers` runs on the leader's event loop during a
rebalance, so its time is a pause of that worker's loop. Two shapes of group, each
at a few sizes (the best of five runs, milliseconds of CPU):
- a member joins: the others claim the last plan's numbers and stores of a tenth of
  the numbers; the newcomer names stores of a quarter;
- every member new (a whole group restarted): no claims, each naming stores of a
  quarter of the numbers, so every number goes through the pass over stores.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from stream.runtime.assignor import Claim, Plan, assign_partition_numbers

INPUTS = ("content.events", "accounts.profiles", "accounts.objections")
SIZES = ((12, 3), (64, 8), (256, 16), (256, 64), (1024, 32))


def numbers(plan: Plan, member: str) -> frozenset[int]:
    """The partition numbers `member` holds in `plan`."""
    return frozenset(p for ps in plan[member].values() for p in ps)


def joining(n: int, m: int, rnd: random.Random) -> dict[str, Claim]:
    """The claims when an m-th member joins m - 1 holding the last plan of n numbers."""
    members = [f"w-{i}" for i in range(m)]
    plan = assign_partition_numbers(dict.fromkeys(members[:-1], INPUTS), dict.fromkeys(INPUTS, range(n)))
    claims = {}
    for member in members[:-1]:
        held = numbers(plan, member)
        claims[member] = Claim(3, held, frozenset(rnd.sample(range(n), n // 10)) - held)
    claims[members[-1]] = Claim(0, frozenset(), frozenset(rnd.sample(range(n), n // 4)))
    return claims


def restarted(n: int, m: int, rnd: random.Random) -> dict[str, Claim]:
    """The claims of m members all new, each with stores of a quarter of n numbers on disk."""
    return {f"w-{i}": Claim(0, frozenset(), frozenset(rnd.sample(range(n), n // 4))) for i in range(m)}


def best_ms(n: int, claims: dict[str, Claim], repeat: int) -> float:
    """The fewest CPU milliseconds of `repeat` plans of n numbers for `claims`."""
    subscriptions = dict.fromkeys(claims, INPUTS)
    partitions = dict.fromkeys(INPUTS, range(n))
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        assign_partition_numbers(subscriptions, partitions, claims)
        best = min(best, time.process_time() - started)
    return best * 1000


def main() -> None:
    """Print the table of times (markdown) for bench/notes.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rnd = random.Random(7)  # noqa: S311 - a reproducible workload, not a secret
    shapes: dict[str, Callable[[int, int, random.Random], dict[str, Claim]]] = {
        "a member joins": joining,
        "every member new": restarted,
    }
    print("| numbers | members | " + " | ".join(f"{shape} (ms)" for shape in shapes) + " |")
    print("|---|---|" + "---|" * len(shapes))
    for n, m in SIZES:
        cells = [f"{best_ms(n, make(n, m, rnd), args.repeat):.1f}" for make in shapes.values()]
        print(f"| {n} | {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
