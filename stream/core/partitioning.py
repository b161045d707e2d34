"""Where an output record goes: Kafka's default partitioner, so a key always lands on one partition.

The feed, the audit log and the dead letters are keyed by content id (the dead
letters by the input's key). Placing them by their key's murmur2 hash, as every
Kafka client's default partitioner does, keeps all records of a key on one
partition of the output however the inputs are partitioned: compaction can then
replace and remove a feed item, and its records stay in order. (The changelogs go
to their input's partition number instead: see `engine.CHANGELOGS`.)

`by_partition` sorts a batch's records into the output partitions they go to, in
the compiled core: the sender then fills one producer batch per partition without a
lookup per record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Final

from mypy_extensions import i64, u8

from stream.core.batch import CHANGELOGS, OutputTopic, Produce

# Native 64-bit ints once compiled (mypyc), so the hash's products wrap in C instead of
# growing into Python longs (about 60 ns a content id against over a microsecond); each
# product is masked to 32 bits, so the result is the same wherever a product overflows
# and in the plain Python build, where i64 and u8 are int.
_SEED: Final[i64] = 0x9747B28C
_M: Final[i64] = 0x5BD1E995
_MASK: Final[i64] = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of `data` as the Java client computes it (`Utils.murmur2`), as an unsigned 32-bit int."""
    length: i64 = len(data)
    h: i64 = (_SEED ^ length) & _MASK
    whole: i64 = length & ~3
    i: i64 = 0
    while i < whole:  # little-endian 32-bit words
        b0: u8 = data[i]
        b1: u8 = data[i + 1]
        b2: u8 = data[i + 2]
        b3: u8 = data[i + 3]
        k: i64 = i64(b0) | (i64(b1) << 8) | (i64(b2) << 16) | (i64(b3) << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
        i += 4
    rest: i64 = length & 3
    if rest >= 3:
        h ^= i64(data[whole + 2]) << 16
    if rest >= 2:
        h ^= i64(data[whole + 1]) << 8
    if rest >= 1:
        h ^= i64(data[whole])
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=16384)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` among `partitions` (cached: a
    content id's decision and feed record share it)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def by_partition(
    records: Sequence[Produce], counts: Mapping[OutputTopic, int]
) -> dict[tuple[OutputTopic, int], list[Produce]]:
    """`records` by the output partition each goes to (`counts`: each output's partition count), in their order.

    A changelog record, and a record without a key, goes to its input's partition
    number; any other to where Kafka's default partitioner puts its key.
    """
    groups: dict[tuple[OutputTopic, int], list[Produce]] = {}
    for p in records:
        topic = p.topic
        key = p.key
        count = counts[topic]
        partition = p.partition % count if key is None or topic in CHANGELOGS else partition_for(key, count)
        group = groups.get((topic, partition))
        if group is None:
            groups[topic, partition] = [p]
        else:
            group.append(p)
    return groups
