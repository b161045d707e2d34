"""aiokafka's zstd codec on reused zstandard contexts, for every Kafka client of the process.

aiokafka 0.14 compresses each record batch with `cramjam.zstd.compress` and
decompresses each fetched one with `cramjam.zstd.decompress`, and each call sets up
a zstd context of its own: ~18 µs to compress and ~15 µs to decompress a batch of
~1 KB here, whatever its size up to tens of KB. A worker at moderate rates sends
~20-30 small per-partition batches in each cycle, and a reader fetches as many, so
that set-up is a fixed cost of every cycle on the one thread that also decides.
With one compressor and one decompressor kept per thread (python-zstandard, the
bindings of zstd's own library), the same batch costs ~3 and ~1.6 µs. The frames are
ordinary zstd frames (with their content size), which Kafka's Java client, the
broker and librdkafka read like any other; the level is zstd's default, 3, as before.
Measured in bench/notes.md, "zstd contexts".

aiokafka takes no codec from its user: its record batch builder and reader (the
Cython `aiokafka.record._crecords.default_records`, and the pure-Python
`aiokafka.record.default_records` where the extension is missing) call the names
`zstd_encode` and `zstd_decode` that they import from `aiokafka.codec`. `install`
rebinds those two names in both modules: a private module of the library's, so
tests/unit/test_zstd_codec.py builds and reads batches through aiokafka's own classes
and fails when aiokafka no longer calls them, or they are gone (then `install`
changes nothing and says so in the log: the codec is aiokafka's own again, slower,
never wrong).

Decompression keeps aiokafka's behaviour exactly: the reused context decodes a batch
only when it is one whole frame that states its content size, of 1 to
`FAST_DECODE_MAX` bytes, or one whole frame that states none (Java's client and
librdkafka write those: streamed, ~2 against ~21 µs for a small batch); anything
else (several frames, a frame cut short or followed by other bytes, a larger claim,
or bytes zstd refuses) goes to aiokafka's own function, which decodes it or raises
as it always did. So no claimed size makes this module allocate a buffer that
aiokafka would not, and no frame after the first is dropped
(`ZstdDecompressor.decompress` would stop after one frame unless told not to).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

import zstandard

log = logging.getLogger(__name__)

# The modules whose `zstd_encode` / `zstd_decode` aiokafka's batches call: the Cython
# extension (what runs) and the pure-Python fallback (where the extension is missing).
RECORD_MODULES: Final = ("aiokafka.record._crecords.default_records", "aiokafka.record.default_records")
# zstd's default level, which cramjam uses when aiokafka passes none.
LEVEL: Final = 3
# A batch whose frame claims more is decoded by aiokafka's own function. Kafka's
# batches are at most a fetch's size (50 MiB by default); the cap only keeps a
# hostile header's claim from choosing this module's allocation.
FAST_DECODE_MAX: Final = 64 << 20
# What `zstandard.frame_content_size` returns for a frame whose header states no size
# (its documented answer; not `zstandard.CONTENTSIZE_UNKNOWN`, which is zstd's C value).
NO_CONTENT_SIZE: Final = -1

Encode = Callable[..., bytes]
Decode = Callable[[Any], bytes]


class _Contexts(threading.local):
    """One compressor and one decompressor per thread: a zstd context is not thread-safe."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


def codec(original_encode: Encode, original_decode: Decode) -> tuple[Encode, Decode]:
    """The encode and decode functions over reused contexts, falling back to the originals given."""
    contexts = _Contexts()

    def encode(payload: Any, level: int | None = None) -> bytes:
        if level is not None and level != LEVEL:
            return original_encode(payload, level)
        return contexts.compressor.compress(payload)

    def decode(payload: Any) -> bytes:
        try:
            size = zstandard.frame_content_size(payload)
            if 0 < size <= FAST_DECODE_MAX:
                # allow_extra_data=False: a second frame raises (and goes to the
                # original below) instead of being dropped. A frame of size 0 is not
                # read here: zstandard answers it with b"" before looking further.
                return contexts.decompressor.decompress(payload, allow_extra_data=False)
            if size == NO_CONTENT_SIZE:
                whole = _one_whole_frame(contexts.decompressor, payload)
                if whole is not None:
                    return whole
        except zstandard.ZstdError:
            pass
        return original_decode(payload)

    return encode, decode


def _one_whole_frame(decompressor: zstandard.ZstdDecompressor, payload: Any) -> bytes | None:
    """A frame that states no size (Java's and librdkafka's), streamed: its bytes if `payload` is that one whole frame.

    Its output grows as cramjam's does. A frame cut short, or followed by anything,
    gives None: the original's to read or refuse (what was read here is freed first).
    """
    stream = decompressor.decompressobj()
    data = stream.decompress(payload)
    return data if stream.eof and not stream.unused_data else None


def install() -> bool:
    """Rebind aiokafka's zstd codec in its record modules to reused contexts; True when each module present took it.

    Idempotent. A module that does not have the two names is left as it is and
    logged: the process then runs on aiokafka's own codec there.
    """
    installed = True
    for name in RECORD_MODULES:
        if name in _installed:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # aiokafka without its extension: the Python module serves
        encode = getattr(module, "zstd_encode", None)
        decode = getattr(module, "zstd_decode", None)
        if not callable(encode) or not callable(decode):
            log.warning("aiokafka's %s has no zstd codec to replace; its own is used", name)
            installed = False
            continue
        fast_encode, fast_decode = codec(encode, decode)
        setattr(module, "zstd_encode", fast_encode)  # noqa: B010 - the stubs do not declare the imported names
        setattr(module, "zstd_decode", fast_decode)  # noqa: B010
        _installed.add(name)
    return installed


# The record modules whose codec `install` replaced.
_installed: set[str] = set()
