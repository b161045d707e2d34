"""aiokafka's zstd codec on reused contexts (stream/zstd_codec.py): the hook into aiokafka, and equal bytes.

The hook rebinds names in a private module of aiokafka's, so the first tests build
and read record batches through aiokafka's own classes and fail when aiokafka stops
calling those names. The rest search for a payload or a frame on which the codec
and aiokafka's own (cramjam) disagree. On the real broker (Java's and librdkafka's
frames): tests/integration/test_zstd_codec.py.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cramjam
import pytest
import zstandard
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import zstd_codec

CODEC_ZSTD = 4  # the record batch attribute of zstd (Kafka's protocol)


def original_encode(payload: Any, level: int | None = None) -> bytes:
    return bytes(cramjam.zstd.compress(payload, level=level))


def original_decode(payload: Any) -> bytes:
    return bytes(cramjam.zstd.decompress(payload))


ENCODE, DECODE = zstd_codec.codec(original_encode, original_decode)


def count_calls(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> dict[str, int]:
    """The codec of each record module named, counting its calls (also tests/integration/test_zstd_codec.py)."""
    counted = {"encode": 0, "decode": 0}

    def counting(kind: str, f: Callable[..., bytes]) -> Callable[..., bytes]:
        def call(*args: Any) -> bytes:
            counted[kind] += 1
            return f(*args)

        return call

    for name in names:
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "zstd_encode", counting("encode", module.zstd_encode))
        monkeypatch.setattr(module, "zstd_decode", counting("decode", module.zstd_decode))
    return counted


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """`install` done, and each record module's codec counting its calls."""
    assert zstd_codec.install()
    yield count_calls(monkeypatch, zstd_codec.RECORD_MODULES)


def build(records: list[tuple[bytes | None, bytes | None]]) -> bytes:
    """A zstd record batch built by aiokafka's own builder (the one its producer uses)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODEC_ZSTD,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, (key, value) in enumerate(records):
        builder.append(offset, timestamp=None, key=key, value=value, headers=[])
    return bytes(builder.build())


def test_install_replaces_both_record_modules_codec() -> None:
    assert zstd_codec.install()
    assert zstd_codec.install()  # idempotent
    for name in zstd_codec.RECORD_MODULES:
        module = importlib.import_module(name)
        assert module.zstd_encode.__qualname__ == "codec.<locals>.encode", name
        assert module.zstd_decode.__qualname__ == "codec.<locals>.decode", name


def test_aiokafka_batches_go_through_the_installed_codec(calls: dict[str, int]) -> None:
    """Fails when aiokafka's builder or reader no longer calls the module's names (the hook would do nothing)."""
    records = [(b"k%d" % i, b'{"content_id":"c%d","text":"%s"}' % (i, b"x" * i)) for i in range(50)]
    batch = build(records)
    assert calls["encode"] == 1
    read = DefaultRecordBatch(batch)
    assert read.compression_type == CODEC_ZSTD
    assert [(r.key, r.value) for r in read] == records
    assert calls["decode"] == 1


def test_the_installed_frames_are_ones_aiokafkas_own_codec_reads(calls: dict[str, int]) -> None:
    records = [(b"a", b"1" * 1000), (None, None), (b"", b"")]
    batch = DefaultRecordBatch(build(records))
    assert [(r.key, r.value) for r in batch] == records
    # The compressed section decodes with cramjam, what aiokafka used before.
    assert calls["encode"] == 1


def test_a_missing_codec_is_reported_and_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """A future aiokafka without the names: install says so, changes nothing, raises nothing."""
    module = importlib.import_module(zstd_codec.RECORD_MODULES[1])
    monkeypatch.setattr(zstd_codec, "_installed", set())
    monkeypatch.delattr(module, "zstd_decode")
    assert not zstd_codec.install()
    assert not hasattr(module, "zstd_decode")


PAYLOADS = st.one_of(
    st.binary(max_size=70_000),
    st.text(max_size=5_000).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.tuples(st.binary(min_size=1, max_size=64), st.integers(1, 5_000)).map(lambda p: p[0] * p[1]),
)


@settings(max_examples=300, deadline=None)
@given(PAYLOADS)
def test_encode_is_read_by_cramjam(payload: bytes) -> None:
    frame = ENCODE(payload)
    assert original_decode(frame) == payload
    assert zstandard.frame_content_size(frame) == len(payload)


@settings(max_examples=300, deadline=None)
@given(PAYLOADS)
def test_decode_reads_cramjams_frames(payload: bytes) -> None:
    assert DECODE(original_encode(payload)) == payload
    assert DECODE(bytearray(original_encode(payload))) == payload
    assert DECODE(memoryview(original_encode(payload))) == payload


def outcome(f: Callable[[bytes], bytes], frame: bytes) -> bytes | str:
    try:
        return f(frame)
    except Exception:  # which error differs by library; that one is raised is the point
        return "error"


def skippable(data: bytes) -> bytes:
    """A zstd skippable frame (magic 0x184D2A50, then the data's length) around `data`."""
    return (0x184D2A50).to_bytes(4, "little") + len(data).to_bytes(4, "little") + data


def frames() -> st.SearchStrategy[bytes]:
    """Frames of every shape a producer may write, whole or damaged: the codec must read them as cramjam does."""
    no_size = zstandard.ZstdCompressor(write_content_size=False)
    checked_no_size = zstandard.ZstdCompressor(level=19, write_checksum=True, write_content_size=False)
    one = st.one_of(
        PAYLOADS.map(original_encode),
        PAYLOADS.map(no_size.compress),  # Java's ZstdOutputStream writes no content size
        PAYLOADS.map(checked_no_size.compress),
        PAYLOADS.map(lambda p: zstandard.ZstdCompressor(level=19, write_checksum=True).compress(p)),
        st.binary(max_size=64).map(skippable),  # zstd skips these; a reader must too
    )
    whole = st.lists(one, min_size=1, max_size=3).map(b"".join)  # several frames in one batch
    damaged = st.tuples(whole, st.integers(0, 10_000), st.binary(max_size=8)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2]
    )
    return st.one_of(whole, damaged, st.binary(max_size=200))


@settings(max_examples=500, deadline=None)
@given(frames())
def test_decode_reads_any_frame_exactly_as_cramjam(frame: bytes) -> None:
    """No frame after the first dropped, no damage accepted that cramjam refuses, none refused that it reads."""
    assert outcome(DECODE, frame) == outcome(original_decode, frame)


def test_a_claimed_size_over_the_cap_is_left_to_aiokafkas_codec() -> None:
    """A header's claim never sizes this module's buffer: over FAST_DECODE_MAX it is the original's to read."""
    seen: list[bytes] = []

    def original(payload: Any) -> bytes:
        seen.append(bytes(payload))
        return b"original"

    _, decode = zstd_codec.codec(original_encode, original)
    frame = bytes(zstandard.ZstdCompressor().compress(b"\0" * (zstd_codec.FAST_DECODE_MAX + 1)))
    assert zstandard.frame_content_size(frame) == zstd_codec.FAST_DECODE_MAX + 1
    assert decode(frame) == b"original"
    assert seen == [frame]
    small = original_encode(b"abc")
    assert decode(small) == b"abc"
    assert seen == [frame]  # read on the reused context


def test_a_whole_frame_without_content_size_is_read_on_the_reused_context() -> None:
    """Java's and librdkafka's frames state no size: one whole such frame is read here, more by the original."""
    seen: list[bytes] = []

    def original(payload: Any) -> bytes:
        seen.append(bytes(payload))
        return original_decode(payload)

    _, decode = zstd_codec.codec(original_encode, original)
    payload = b"an event, " * 300
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(payload)
    assert zstandard.frame_content_size(frame) == zstd_codec.NO_CONTENT_SIZE
    assert decode(frame) == payload
    assert seen == []
    # Two frames, a frame followed by other bytes, a frame cut short: the original's.
    assert decode(frame + frame) == payload + payload
    assert outcome(decode, frame + b"\0") == outcome(original_decode, frame + b"\0")
    assert outcome(decode, frame[:-4]) == "error"
    assert seen == [frame + frame, frame + b"\0", frame[:-4]]


def test_another_level_asked_is_the_originals() -> None:
    seen: list[int | None] = []

    def original(payload: Any, level: int | None = None) -> bytes:
        seen.append(level)
        return original_encode(payload, level)

    encode, _ = zstd_codec.codec(original, original_decode)
    assert original_decode(encode(b"x" * 100, 9)) == b"x" * 100
    assert original_decode(encode(b"x" * 100)) == b"x" * 100
    assert original_decode(encode(b"x" * 100, zstd_codec.LEVEL)) == b"x" * 100
    assert seen == [9]


def test_threads_each_use_their_own_contexts() -> None:
    """A zstd context is not thread-safe: threads at once must each get their bytes back."""
    failures: list[tuple[int, str]] = []

    def work(n: int) -> None:
        payload = (b"%d-" % n) * (20_000 + n)
        try:
            for _ in range(500):
                if DECODE(ENCODE(payload)) != payload:
                    failures.append((n, "other bytes"))
                    return
        except Exception as exc:  # a context used by two threads at once raises
            failures.append((n, repr(exc)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_every_command_installs_the_codec_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The composition root (stream/cli.py): a command's clients are made after the codec is in place."""
    from stream import cli

    for name in zstd_codec.RECORD_MODULES:  # as a fresh process has them: aiokafka's own
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "zstd_encode", original_encode)
        monkeypatch.setattr(module, "zstd_decode", original_decode)
    monkeypatch.setattr(zstd_codec, "_installed", set())
    monkeypatch.setattr(cli.logs, "configure", lambda *_: None)
    monkeypatch.setenv("STREAM_DEV_MODE", "1")
    seen: list[str] = []

    def run(settings: object, args: object) -> int:
        seen.extend(importlib.import_module(n).zstd_encode.__qualname__ for n in zstd_codec.RECORD_MODULES)
        return 0

    monkeypatch.setattr(cli, "_run", run)
    assert cli.main(["worker"]) == 0
    assert seen == ["codec.<locals>.encode"] * len(zstd_codec.RECORD_MODULES)
