"""The image's lock files agree with pyproject.toml, so the two cannot drift apart.

requirements.lock pins every runtime dependency, direct and transitive, and
requirements-build.lock the build backend, each with the hashes of its files (the
Dockerfile installs them with --require-hashes). `make lock` writes both with uv,
resolved for the image's CPython 3.11 on linux x86_64. Checked here: every line is an
exact pin with hashes; every pin of pyproject.toml's dependencies is in the lock at
the same version; every distribution those dependencies pull in (read from the
installed packages' metadata, for the image's platform) is locked; the build lock
satisfies build-system.requires; the locks are resolved for the image's Python.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
# The image's interpreter and platform (Dockerfile: python:3.11-slim on linux x86_64).
IMAGE_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@cache
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@cache
def _lock(path: Path) -> dict[str, tuple[str, int]]:
    return _parse(path.read_text(), path.name)


def _parse(text: str, filename: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of each requirement of a lock file; every line is checked."""
    pins: dict[str, tuple[str, int]] = {}
    logical = re.sub(r"\\\n", " ", text)  # continuation lines joined, as pip reads them
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        head, *options = line.split()
        match = PIN.fullmatch(head)
        assert match, f"{filename}: {head!r} is not an exact pin (name==version)"
        assert options, f"{filename}: {head} has no hash"
        assert all(HASH.fullmatch(o) for o in options), f"{filename}: {head}: only --hash=sha256 options may follow"
        package = canonicalize_name(match["name"])
        assert package not in pins, f"{filename}: {package} pinned twice"
        pins[package] = (match["version"], len(options))
    return pins


def _direct_pins() -> dict[str, str]:
    pins = {}
    for spec in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(spec)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"pyproject.toml pins runtime dependencies exactly: {spec}"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_lockfile_every_requirement_is_pinned_with_hashes() -> None:
    for path in (RUNTIME_LOCK, BUILD_LOCK):
        pins = _lock(path)
        assert pins, f"{path.name} is empty"
        assert all(hashes >= 1 for _, hashes in pins.values())


def test_lockfile_parser_rejects_a_pin_without_hashes_or_a_range() -> None:
    hashed = "orjson==3.13.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
    assert _parse(hashed, "ok.lock") == {"orjson": ("3.13.0", 1)}
    with pytest.raises(AssertionError, match=r"tqdm==4\.70\.1 has no hash"):
        _parse(hashed + "tqdm==4.70.1\n", "bad.lock")
    with pytest.raises(AssertionError, match="not an exact pin"):
        _parse(hashed.replace("==3.13.0", ">=3"), "bad.lock")


@pytest.mark.parametrize(("name", "version"), sorted(_direct_pins().items()))
def test_lockfile_has_each_runtime_dependency_at_its_pyproject_version(name: str, version: str) -> None:
    locked = _lock(RUNTIME_LOCK)
    assert name in locked, f"{name} is in pyproject.toml but not in requirements.lock: run `make lock`"
    assert locked[name][0] == version, f"{name}: pyproject.toml {version}, requirements.lock {locked[name][0]}"


def _closure(names: list[str]) -> set[str]:
    """Every distribution the named ones need on the image's platform, from the installed packages' metadata."""
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in needed:
            continue
        needed.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            pytest.fail(f"{name} is needed but not installed: run `make install`")
        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({**IMAGE_MARKERS, "extra": ""}):
                todo.append(requirement.name)
    return needed


def test_lockfile_holds_every_transitive_runtime_dependency() -> None:
    missing = _closure(list(_direct_pins())) - set(_lock(RUNTIME_LOCK))
    assert not missing, f"needed at run time but not locked: {sorted(missing)}; run `make lock`"


def test_build_lock_satisfies_the_build_system_requirements() -> None:
    locked = _lock(BUILD_LOCK)
    for spec in _pyproject()["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"build-system requires {spec}; requirements-build.lock lacks it: run `make lock`"
        assert requirement.specifier.contains(Version(locked[name][0])), f"{spec}: locked {locked[name][0]}"


def test_locks_are_resolved_for_the_image_python() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^LOCK_TARGET := (.*)$", makefile, re.MULTILINE)
    assert target, "the Makefile's lock target names the platform it resolves for"
    assert "--python-version 3.11 " in target[1] + " "
    assert "--python-platform x86_64-unknown-linux-gnu" in target[1]
    assert _pyproject()["project"]["requires-python"] == ">=3.11,<3.12"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-", dockerfile, re.MULTILINE)
    for path in (RUNTIME_LOCK, BUILD_LOCK):
        assert "#    make lock\n" in path.read_text(), f"{path.name} is written by `make lock`"
