"""Where an output record goes: Kafka's default partitioner, so a key always lands on one partition.

The feed, the audit log and the dead letters are keyed by content id (the dead
letters by the input's key). Placing them by their key's murmur2 hash, as every
Kafka client's default partitioner does, keeps all records of a key on one
partition of the output however the inputs are partitioned: compaction can then
replace and remove a feed item, and its records stay in order. (The changelogs go
to their input's partition number instead: see `engine.CHANGELOGS`.)
"""

from __future__ import annotations

import struct
from functools import lru_cache

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of `data` as the Java client computes it (`Utils.murmur2`), as an unsigned 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest >= 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
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
