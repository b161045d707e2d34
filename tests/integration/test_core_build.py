"""The core as it ships, compiled by mypyc (setup.py), against its Python sources.

- the core under test is the compiled one, unless the tree was built plain on purpose;
- compiled and from its sources, the core decides a generated workload (malformed
  records, held items, account changes) to the same bytes, every result field;
- and the fuzz tests' hostile batches too (tests/unit/test_fuzz.py: extreme dates and
  numbers, huge strings, odd unicode, any bytes), searched by hypothesis: mypyc's
  native ints, type checks and attribute access are where a compiled module may part
  from its sources;
- the tests that monkeypatch the core (marker `pure_core`) pass on its sources, in a
  process of their own (tests/pure_core.py);
- an extension built from other sources than the ones beside it refuses to run;
- the values built per event are native classes once compiled: read-only, equal by value;
- every module constant of the core is `Final` (mypyc reads any other from the module's
  dictionary at every use).
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given

import stream.core.engine
from stream import StaleBuildError, check_core_build
from stream.core.batch import OutputTopic, Produce
from stream.core.models import ContentEvent, Op, Profile, Reason
from stream.core.policy import Decision
from stream.core.state import ItemVersion
from tests.core_peer import Batch, batch_digest, encode
from tests.pure_core import PURE_ENV, compiled
from tests.unit.test_fuzz import FUZZ, any_records

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, pure: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    if pure:
        env[PURE_ENV] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_core_under_test_is_the_compiled_one() -> None:
    if os.environ.get("STREAM_COMPILE", "1").strip() == "0":
        assert not compiled(stream.core.engine), "STREAM_COMPILE=0 builds plain Python"
    else:
        assert compiled(stream.core.engine), "stream/core is not compiled: `make install` builds it (setup.py)"


def test_compiled_core_decides_exactly_as_its_sources() -> None:
    outputs = {}
    for pure in (False, True):
        done = _run("-m", "tests.core_digest", "40000", pure=pure, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs[pure] = done.stdout.split()
    assert outputs[True][0] == "sources"
    assert outputs[False][0] == ("compiled" if compiled(stream.core.engine) else "sources")
    assert outputs[False][1] == outputs[True][1]


@pytest.fixture(scope="module")
def sources_peer() -> Iterator[subprocess.Popen[bytes]]:
    """tests/core_peer.py on the core's sources, fed one batch a line."""
    env = {**os.environ, PURE_ENV: "1"}
    peer = subprocess.Popen(
        [sys.executable, "-m", "tests.core_peer"], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert peer.stdout is not None
    assert peer.stdout.readline() == b"sources\n"
    yield peer
    assert peer.stdin is not None
    peer.stdin.close()
    assert peer.wait(timeout=60) == 0


@FUZZ
@given(inputs=any_records)
def test_compiled_core_decides_hostile_batches_exactly_as_its_sources(
    sources_peer: subprocess.Popen[bytes], inputs: Batch
) -> None:
    assert sources_peer.stdin is not None and sources_peer.stdout is not None
    sources_peer.stdin.write(encode(inputs))
    sources_peer.stdin.flush()
    theirs = sources_peer.stdout.readline().decode().strip()
    assert batch_digest(inputs) == theirs, "the compiled core and its sources decide this batch differently"


def _values_built_per_event() -> list[object]:
    at = dt.datetime(2026, 11, 28, 9, 15, tzinfo=dt.UTC)
    return [
        ContentEvent("e-1", Op.UPSERT, "c-1", "a-1", at, text="hi"),
        Profile("a-1", dt.date(1990, 1, 1), "GB", at, at),
        Decision(False, Reason.NOTICE_PERIOD_RUNNING, "2026-11-28", None, at),
        Produce(OutputTopic.FEED, b"c-1", b"{}", 3, [("key_id", b"k1")]),
        ItemVersion(1, "e-1", False, 2, 3, 4),
    ]


def test_values_built_per_event_are_read_only_and_equal_by_value() -> None:
    # Immutable through Final attributes, not frozen=True (models.ContentEvent says why):
    # mypy refuses an assignment in either build; compiled, the attribute is read-only.
    for value, again in zip(_values_built_per_event(), _values_built_per_event(), strict=True):
        assert value == again and value is not again
        assert repr(value).startswith(type(value).__name__ + "(")
        if compiled(stream.core.engine):
            name = next(iter(vars(type(value))["__dataclass_fields__"]))
            with pytest.raises(AttributeError):
                setattr(value, name, getattr(value, name))


def _not_final(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            value = node.value
            type_var = isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "TypeVar"
            alias = isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name) and value.value.id == "tuple"
            names += [
                f"{path.name}:{node.lineno} {target.id}"
                for target in node.targets
                if isinstance(target, ast.Name) and target.id != "__all__" and not type_var and not alias
            ]
        elif isinstance(node, ast.AnnAssign) and node.value is not None and "Final" not in ast.unparse(node.annotation):
            names.append(f"{path.name}:{node.lineno} {ast.unparse(node.target)}")
    return names


def test_every_module_constant_of_the_core_is_final() -> None:
    # Compiled, a module-level name not annotated Final is looked up in the module's
    # dictionary at every use; Final ones are C statics (bench/notes.md: the partitioner
    # went from 2,780 to 64 ns a key with its constants Final and native ints).
    core = ROOT / "stream" / "core"
    offenders = [name for path in sorted(core.glob("*.py")) for name in _not_final(path)]
    assert offenders == [], f"annotate these module constants Final: {offenders}"
    # The check sees a constant that is not Final: this file's own ROOT.
    assert [name.split()[1] for name in _not_final(Path(__file__))] == ["ROOT"]


@pytest.mark.integration
def test_the_tests_that_patch_the_core_pass_on_its_sources(bootstrap: str) -> None:
    done = _run("-m", "pytest", "-m", "pure_core", "-q", "-p", "no:cacheprovider", "tests", pure=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 passed" in done.stdout, done.stdout[-2000:]


def _built_core(tmp_path: Path, sources: dict[str, bytes], manifest: dict[str, bytes] | None) -> Path:
    core = tmp_path / "core"
    core.mkdir()
    for name, text in sources.items():
        (core / name).write_bytes(text)
    (core / "engine.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    if manifest is not None:
        lines = [f"{hashlib.sha256(text).hexdigest()}  {name}\n" for name, text in manifest.items()]
        (core / "COMPILED").write_text("".join(lines), encoding="utf-8")
    return core


def test_an_extension_built_from_these_sources_runs(tmp_path: Path) -> None:
    sources = {"__init__.py": b"", "engine.py": b"x = 1\n"}
    check_core_build(_built_core(tmp_path, sources, sources))


@pytest.mark.parametrize(
    "manifest",
    [
        {"__init__.py": b"", "engine.py": b"x = 0\n"},  # an edit after the build
        {"__init__.py": b""},  # a module added after it
        {"__init__.py": b"", "engine.py": b"x = 1\n", "gone.py": b""},  # a module removed
        None,  # no record of the build at all
    ],
)
def test_an_extension_built_from_other_sources_refuses_to_run(
    tmp_path: Path, manifest: dict[str, bytes] | None
) -> None:
    sources = {"__init__.py": b"", "engine.py": b"x = 1\n"}
    with pytest.raises(StaleBuildError, match="make install"):
        check_core_build(_built_core(tmp_path, sources, manifest))


def test_sources_without_extensions_run_as_they_are(tmp_path: Path) -> None:
    core = tmp_path / "core"
    core.mkdir()
    (core / "engine.py").write_bytes(b"x = 1\n")
    check_core_build(core)
