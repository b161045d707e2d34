"""The Dockerfile builds the image the README, docker-compose.yml and the Helm chart rely on.

No container engine runs where these tests run, so nothing here builds the image: the
Dockerfile is read as Docker reads it (dockerfile-parse: instructions, continuation
lines, exec forms) and each promise is asserted on what it says:

- it runs as the numeric, non-root UID/GID 10001 (the Helm chart's securityContext
  names the same numbers);
- /data exists, is owned by that user and is made so before VOLUME (Docker discards
  later changes; a fresh named volume copies this ownership);
- every package comes from a lock file with hashes (pip's --require-hashes), wheels
  only, and the package itself is installed with --no-deps;
- ENTRYPOINT, CMD, EXPOSE and HEALTHCHECK are as documented, and the health check
  passes against a live /healthz and fails against a failing one;
- the build context (.dockerignore) holds every COPY source and none of .venv, .cache,
  data, bench, .git;
- hadolint finds nothing.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from stream.cli import JEMALLOC_ENV
from stream.config import Settings
from stream.verifier.verify import DEFAULT_PORT as VERIFIER_PORT
from tests.unit.probe import http_server, run_check

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# The image's user; deploy/helm's securityContext (runAsUser, runAsGroup, fsGroup) uses it too.
IMAGE_UID = IMAGE_GID = 10001
DATA_DIR = "/data"
LOCKS = {"requirements.lock", "requirements-build.lock"}


@cache
def _instructions() -> list[dict[str, Any]]:
    structure: list[dict[str, Any]] = DockerfileParser(path=str(DOCKERFILE), env_replace=False).structure
    return [i for i in structure if i["instruction"] != "COMMENT"]


def _final_stage() -> list[dict[str, Any]]:
    """The instructions of the last stage, the image that runs."""
    instructions = _instructions()
    start = max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM")
    return instructions[start:]


def _one(stage: list[dict[str, Any]], instruction: str) -> str:
    values = [i["value"] for i in stage if i["instruction"] == instruction]
    assert len(values) == 1, f"expected one {instruction}, found {values}"
    return values[0]


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), f"not an exec form: {value}"
    return parsed


def _commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN's shell form (joined by &&), each split as the shell would."""
    return [shlex.split(part) for part in run.split("&&")]


def _env(stage: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in (i["value"] for i in stage if i["instruction"] == "ENV"):
        env.update(pair.split("=", 1) for pair in shlex.split(value))
    return env


def _healthcheck() -> tuple[dict[str, str], list[str]]:
    """The final stage's HEALTHCHECK: its options and its exec-form command."""
    value = _one(_final_stage(), "HEALTHCHECK")
    options_text, _, command = value.partition("CMD")
    options = dict(o.removeprefix("--").split("=", 1) for o in options_text.split())
    return options, _exec_form(command.strip())


def test_dockerfile_user_is_numeric_and_not_root() -> None:
    user = _one(_final_stage(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: Kubernetes' runAsNonRoot needs numbers, not names"
    assert (int(uid), int(gid)) == (IMAGE_UID, IMAGE_GID)
    assert int(uid) != 0 and int(gid) != 0


def test_dockerfile_data_dir_is_owned_by_the_user_before_the_volume() -> None:
    stage = _final_stage()
    volume = next(n for n, i in enumerate(stage) if i["instruction"] == "VOLUME")
    assert DATA_DIR in _exec_form(stage[volume]["value"])
    owned_at = None
    for n, instruction in enumerate(stage):
        if instruction["instruction"] != "RUN":
            continue
        for command in _commands(instruction["value"]):
            creates = command[:2] in (["install", "--directory"], ["install", "-d"]) and command[-1] == DATA_DIR
            if creates:
                assert command[command.index("--owner") + 1] == str(IMAGE_UID)
                assert command[command.index("--group") + 1] == str(IMAGE_GID)
                owned_at = n
            if command[:1] == ["useradd"]:
                assert command[command.index("--uid") + 1] == str(IMAGE_UID)
                assert command[command.index("--home-dir") + 1] == DATA_DIR, "HOME must be writable"
    assert owned_at is not None, f"no RUN creates {DATA_DIR} owned by {IMAGE_UID}"
    assert owned_at < volume, "changes to a volume's directory after VOLUME are discarded"


def test_dockerfile_runtime_writes_only_the_data_dir_and_tmp() -> None:
    stage = _final_stage()
    env = _env(stage)
    assert env["STREAM_DATA_DIR"] == DATA_DIR
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "no __pycache__ on a read-only root"
    workdirs = [i["value"] for i in stage if i["instruction"] == "WORKDIR"]
    assert workdirs[-1] == DATA_DIR, "a relative path written at run time lands on the volume"


def test_dockerfile_runs_every_process_on_jemalloc_as_the_code_tunes_it() -> None:
    stage = _final_stage()
    env = _env(stage)
    assert {k: env.get(k) for k in JEMALLOC_ENV} == JEMALLOC_ENV
    installs = [
        c
        for i in stage
        if i["instruction"] == "RUN"
        for c in _commands(i["value"])
        if c[:3] == ["apt-get", "install", "--yes"]
    ]
    assert any("libjemalloc2" in c for c in installs), "LD_PRELOAD names a library the image must install"
    # Installed before the environment preloads it: apt-get would run with a preload it cannot find.
    install_at = next(n for n, i in enumerate(stage) if i["instruction"] == "RUN" and "libjemalloc2" in i["value"])
    preload_at = next(n for n, i in enumerate(stage) if i["instruction"] == "ENV" and "LD_PRELOAD" in i["value"])
    assert install_at < preload_at


def test_dockerfile_installs_every_package_from_a_lock_with_hashes() -> None:
    copied = {}
    pip_runs = []
    for instruction in _instructions():
        if instruction["instruction"] == "COPY" and not instruction["value"].startswith("--from"):
            *sources, destination = shlex.split(instruction["value"])
            for source in sources:
                copied[source] = destination
        if instruction["instruction"] == "RUN":
            pip_runs += [c for c in _commands(instruction["value"]) if c[:1] == ["pip"]]
    installs = [c for c in pip_runs if c[1] == "install"]
    from_locks = [c for c in installs if "-r" in c]
    assert len(from_locks) == len(LOCKS)
    for command in from_locks:
        assert {"--require-hashes", "--no-deps"} <= set(command), command
        assert command[command.index("--only-binary") + 1] == ":all:", "wheels only: no build runs unlocked code"
        lock = Path(command[command.index("-r") + 1])
        assert lock.name in LOCKS
        assert lock.name in copied, f"{lock.name} is not copied into the image"
        destination = copied[lock.name]
        assert str(lock) in (destination, str(Path(destination) / lock.name)), f"{lock} is not where COPY put it"
    for command in installs:
        if command not in from_locks:
            # The package itself, the wheel built in the first stage: its dependencies are the lock's.
            assert "--no-deps" in command and command[-1].endswith(".whl"), command
    (wheel,) = [c for c in pip_runs if c[1] == "wheel"]
    assert {"--no-deps", "--no-build-isolation"} <= set(wheel), "the build backend is the locked one"


def test_dockerfile_base_image_is_the_python_of_the_lock() -> None:
    arg = next(
        i["value"] for i in _instructions() if i["instruction"] == "ARG" and i["value"].startswith("PYTHON_IMAGE")
    )
    image = arg.partition("=")[2]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), image
    assert all(i["value"].split()[0] == "${PYTHON_IMAGE}" for i in _instructions() if i["instruction"] == "FROM")


def test_dockerfile_entrypoint_runs_the_cli_and_cmd_the_worker() -> None:
    assert _exec_form(_one(_final_stage(), "ENTRYPOINT")) == ["python", "-m", "stream"]
    assert _exec_form(_one(_final_stage(), "CMD")) == ["worker"]


def test_dockerfile_exposes_the_worker_and_verifier_ports() -> None:
    web_port = Settings.from_env({"STREAM_DEV_MODE": "1"}).web_port
    exposed = {int(p.split("/")[0]) for p in _one(_final_stage(), "EXPOSE").split()}
    assert exposed == {web_port, VERIFIER_PORT}


def test_dockerfile_healthcheck_asks_healthz_on_the_web_port() -> None:
    options, command = _healthcheck()
    assert command[:2] == ["python", "-c"], "a slim image has no curl"
    assert "/healthz" in command[2] and "STREAM_WEB_PORT" in command[2]
    assert float(options["timeout"].removesuffix("s")) < float(options["interval"].removesuffix("s"))
    with http_server({"/healthz": 200}) as (port, asked):
        assert run_check(command, {"STREAM_WEB_PORT": str(port)}) == 0
        assert asked == ["/healthz"]


@pytest.mark.parametrize("status", [500, 503, 404])
def test_dockerfile_healthcheck_fails_when_healthz_fails(status: int) -> None:
    _, command = _healthcheck()
    with http_server({"/healthz": status}) as (port, _):
        assert run_check(command, {"STREAM_WEB_PORT": str(port)}) != 0


def test_dockerfile_healthcheck_fails_without_a_server() -> None:
    _, command = _healthcheck()
    with http_server({}) as (port, _):
        pass  # closed: nothing listens on the port any more
    assert run_check(command, {"STREAM_WEB_PORT": str(port)}) != 0


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exception, pattern) in order, in Docker's syntax: `*`, `?`, `**` for any directories."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((exception, re.compile(regex + r"\Z")))
    return rules


def _ignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: the last rule matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exception, regex in _ignore_rules():
        if any(regex.match(c) for c in candidates):
            ignored = not exception
    return ignored


def test_dockerignore_matcher_follows_docker_rules() -> None:
    assert _ignored(".venv/bin/python")
    assert not _ignored("stream/cli.py")
    assert _ignored("stream/__pycache__/cli.cpython-311.pyc")
    assert _ignored("stream/core/__pycache__")


def _tracked(path: str) -> list[str]:
    result = subprocess.run(["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True, check=False)
    return result.stdout.split() if result.returncode == 0 else []


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context() -> None:
    for instruction in _instructions():
        if instruction["instruction"] != "COPY" or instruction["value"].startswith("--from"):
            continue
        *sources, _ = shlex.split(instruction["value"])
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not _ignored(source), f"COPY {source}: left out of the build context by .dockerignore"
            for path in _tracked(source):
                assert not _ignored(path), f"{path} (under COPY {source}) is left out by .dockerignore"


@pytest.mark.parametrize(
    "path", [".venv", ".cache", "data", "bench", "bench/results", ".git", "tests", "eligibility_filter.egg-info"]
)
def test_dockerignore_keeps_local_state_out_of_the_build_context(path: str) -> None:
    assert _ignored(path)
    assert _ignored(f"{path}/anything")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
