"""docker-compose.yml agrees with the code, the image and the files it mounts, without running Docker.

No container engine runs where these tests run: the file is read as YAML and its
promises are asserted one by one. Checked: every bind-mounted path exists; the
filter's services run the Dockerfile's image, whose ENTRYPOINT is `python -m stream`,
and each one's command (or the image's CMD) is one the CLI accepts (read from its own
--help); every one of them has a restart policy and runs under an init; the worker's
port is the code's default STREAM_WEB_PORT, its state is a named volume at the image's
/data (so it takes the image user's ownership), its grace period covers the drain,
and its healthcheck asks /ready (run here against a stand-in server); the verifier
runs continuously and Prometheus scrapes it and the worker on their ports with the
rules it is given; Grafana's data source points at the Prometheus service and its
dashboard provider at the directory where the generated dashboards are mounted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from stream.compliance.canary import DEFAULT_PORT as CANARY_PORT
from stream.config import Settings
from stream.verifier.verify import DEFAULT_PORT as VERIFIER_PORT
from tests.unit.probe import http_server, retarget, run_check

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
STREAM = ["python", "-m", "stream"]
# Commands that serve HTTP: the worker's /metrics, /healthz and /ready, the verifier's and the canary's /metrics.
WEB_COMMANDS = {"worker", "verify", "canary"}


@cache
def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind a container path, through the service's bind mounts."""
    for source, target in _bind_mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not inside any bind mount")


def _container_ports(service: dict[str, Any]) -> list[int]:
    return [int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])]


@cache
def _image() -> dict[str, list[str]]:
    """The Dockerfile's ENTRYPOINT, CMD and VOLUME (exec forms)."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"), env_replace=False)
    return {
        i["instruction"]: json.loads(i["value"])
        for i in parser.structure
        if i["instruction"] in ("ENTRYPOINT", "CMD", "VOLUME")
    }


def _built() -> dict[str, dict[str, Any]]:
    """The services that run the Dockerfile's image: the filter's own."""
    return {name: s for name, s in _services().items() if s.get("build") in (".", "./")}


def _stream_commands() -> list[tuple[str, list[str]]]:
    """(service, arguments of `python -m stream`) for each service built from the Dockerfile."""
    assert _image()["ENTRYPOINT"] == STREAM
    return [(name, s.get("command", _image()["CMD"])) for name, s in _built().items()]


def _subcommand(args: list[str]) -> str:
    return next(a for a in args if not a.startswith("-"))


def _duration(value: str) -> float:
    """Seconds of a compose duration such as `1m30s` or `60s`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value}"
    return sum(float(n) * units[u] for n, u in parts)


@cache
def _usage(*subcommand: str) -> str:
    """The usage block of `python -m stream [subcommand] --help`."""
    result = subprocess.run(
        [sys.executable, "-m", "stream", *subcommand, "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n\n")[0]


def _grammar(usage: str) -> tuple[dict[str, tuple[str, ...] | None], list[tuple[str, ...]]]:
    """Options (name -> allowed values, () for any value, None for a flag) and positional choices of a usage."""
    options: dict[str, tuple[str, ...] | None] = {}
    for name, value in re.findall(r"\[(--[\w-]+)(?: (\{[^}]*\}|[A-Z_]+))?\]", usage):
        options[name] = None if not value else tuple(value.strip("{}").split(",")) if value.startswith("{") else ()
    without_options = re.sub(r"\[[^\]]*\]", "", usage)
    positionals = [tuple(c.split(",")) for c in re.findall(r"\{([^}]*)\}", without_options)]
    return options, positionals


def _check_args(
    args: list[str], options: dict[str, tuple[str, ...] | None], positionals: list[tuple[str, ...]]
) -> None:
    position = 0
    tokens = iter(args)
    for token in tokens:
        if token.startswith("--"):
            name, has_value, inline = token.partition("=")
            assert name in options, f"unknown option {name}; the CLI has {sorted(options)}"
            allowed = options[name]
            if allowed is None:
                assert not has_value, f"{name} is a flag"
                continue
            value = inline if has_value else next(tokens, None)
            assert value is not None, f"{name} needs a value"
            assert not allowed or value in allowed, f"{name} {value}: expected one of {allowed}"
        else:
            assert position < len(positionals), f"unexpected argument {token!r}"
            assert token in positionals[position], f"{token!r}: expected one of {positionals[position]}"
            position += 1
    assert position == len(positionals), f"missing positional argument, one of {positionals[position:]}"


def test_compose_every_bind_mount_exists() -> None:
    for name, service in _services().items():
        for source, _ in _bind_mounts(service):
            assert source.exists(), f"service {name} mounts {source.relative_to(ROOT)}, which does not exist"


def test_compose_every_named_volume_is_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"service {name}: volume {source} not declared"


def test_compose_stream_services_exist() -> None:
    assert {"topics", "worker", "generator", "verifier", "canary"} <= {name for name, _ in _stream_commands()}


def test_compose_stream_services_run_one_image_with_its_entrypoint() -> None:
    images = {s.get("image") for s in _built().values()}
    assert len(images) == 1 and None not in images, f"one image, built once and tagged: {images}"
    for name, service in _built().items():
        assert "entrypoint" not in service, f"{name}: the image's ENTRYPOINT runs `python -m stream`"
        assert service.get("command", [])[: len(STREAM)] != STREAM, f"{name}: command repeats the entrypoint"


@pytest.mark.parametrize(("service", "args"), _stream_commands(), ids=[n for n, _ in _stream_commands()])
def test_compose_stream_command_is_accepted_by_the_cli(service: str, args: list[str]) -> None:
    top_options, (subcommands,) = _grammar(_usage())
    position = 0
    while args[position].startswith("--"):  # options of `python -m stream` itself
        position += 2 if top_options.get(args[position].split("=")[0]) is not None else 1
    subcommand = args[position]
    assert subcommand in subcommands, f"{service}: no subcommand {subcommand!r} in {subcommands}"
    _check_args(args[:position], top_options, [])
    _check_args(args[position + 1 :], *_grammar(_usage(subcommand)))


def test_compose_cli_check_rejects_what_argparse_would() -> None:
    options, positionals = _grammar(_usage("topics"))
    with pytest.raises(AssertionError):
        _check_args(["delete"], options, positionals)
    options, positionals = _grammar(_usage("generate"))
    with pytest.raises(AssertionError):
        _check_args(["--bogus"], options, positionals)
    _check_args(["--count", "3", "--no-progress"], options, positionals)


def test_compose_stream_services_have_a_restart_policy() -> None:
    waited_for = set()
    for service in _services().values():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, dict):  # a list form waits for nothing but the start
            waited_for |= {d for d, c in depends_on.items() if c.get("condition") == "service_completed_successfully"}
    for name, service in _built().items():
        assert "restart" in service, f"{name}: no restart policy"
        if name in waited_for:
            # A one-shot step: the services after it start when it has exited 0.
            assert service["restart"] == "no", name
        else:
            assert re.fullmatch(r"unless-stopped|always|on-failure(:\d+)?", service["restart"]), name


def test_compose_stream_services_run_under_an_init() -> None:
    # Python as PID 1 ignores SIGTERM unless it handles it (generate and verify do not).
    for name, service in _built().items():
        assert service.get("init") is True, name


def test_compose_services_without_a_web_server_disable_the_image_healthcheck() -> None:
    for name, args in _stream_commands():
        healthcheck = _built()[name].get("healthcheck", {})
        if _subcommand(args) not in WEB_COMMANDS:
            assert healthcheck.get("disable") is True, f"{name}: the image's /healthz check would call it unhealthy"


def test_compose_worker_healthcheck_asks_ready() -> None:
    worker = _services()["worker"]
    healthcheck = worker["healthcheck"]
    assert healthcheck["test"][0] == "CMD"
    command = healthcheck["test"][1:]
    assert "/ready" in command[-1]
    assert _duration(healthcheck["timeout"]) < _duration(healthcheck["interval"])
    for status, healthy in ((200, True), (503, False)):
        with http_server({"/ready": status}) as (port, asked):
            assert (run_check(command, {"STREAM_WEB_PORT": str(port)}) == 0) is healthy
            assert asked == ["/ready"]


def test_compose_worker_state_is_a_named_volume_at_the_image_data_dir() -> None:
    worker = _services()["worker"]
    (data_dir,) = _image()["VOLUME"]
    assert worker["environment"]["STREAM_DATA_DIR"] == data_dir
    (volume,) = worker["volumes"]
    source, target, *mode = volume.split(":")
    assert target == data_dir
    # A named volume, created from the image's directory (and its owner); a bind mount keeps the host's.
    assert not source.startswith((".", "/")), "a bind mount is owned by the host's user, not the image's"
    assert "nocopy" not in mode


def test_compose_worker_grace_period_exceeds_the_shutdown_timeout() -> None:
    worker = _services()["worker"]
    settings = Settings.from_env({name: str(value) for name, value in worker["environment"].items()})
    assert _duration(worker["stop_grace_period"]) > settings.shutdown_timeout


def _verifier() -> tuple[dict[str, Any], list[str], int]:
    """The verifier service, its arguments and the port of its /metrics."""
    (name, args), *others = [(n, a) for n, a in _stream_commands() if _subcommand(a) == "verify"]
    assert not others, "one verifier"
    port = int(args[args.index("--port") + 1]) if "--port" in args else VERIFIER_PORT
    return _services()[name], args, port


def test_compose_verifier_runs_continuously_with_a_healthcheck() -> None:
    service, args, port = _verifier()
    assert "--once" not in args, "without --once the verifier checks every --interval and serves its gauges"
    assert _container_ports(service) == [port]
    command = service["healthcheck"]["test"][1:]
    with http_server({"/metrics": 200}) as (stand_in, asked):
        assert run_check(retarget(command, port, stand_in), {}) == 0
        assert asked == ["/metrics"]
    with http_server({}) as (stand_in, _):
        assert run_check(retarget(command, port, stand_in), {}) != 0


def test_compose_prometheus_scrapes_the_verifier_service_on_its_port() -> None:
    _, _, port = _verifier()
    config, _ = _prometheus_config()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["eligibility-verifier"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    (name,) = [n for n, a in _stream_commands() if _subcommand(a) == "verify"]
    assert targets == [f"{name}:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert name in _services()["prometheus"]["depends_on"]


def test_compose_canary_serves_metrics_with_a_healthcheck_and_prometheus_scrapes_it() -> None:
    (name, args), *others = [(n, a) for n, a in _stream_commands() if _subcommand(a) == "canary"]
    assert not others, "one canary: a second would post under the same canary accounts"
    service = _services()[name]
    port = int(args[args.index("--port") + 1]) if "--port" in args else CANARY_PORT
    assert _container_ports(service) == [port]
    command = service["healthcheck"]["test"][1:]
    with http_server({"/metrics": 200}) as (stand_in, asked):
        assert run_check(retarget(command, port, stand_in), {}) == 0
        assert asked == ["/metrics"]
    config, _ = _prometheus_config()
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "eligibility-canary"]
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == [f"{name}:{port}"]
    assert name in _services()["prometheus"]["depends_on"]


def test_compose_worker_port_is_the_code_default() -> None:
    default = Settings.from_env({"STREAM_DEV_MODE": "1"}).web_port
    worker = _services()["worker"]
    assert int(worker["environment"].get("STREAM_WEB_PORT", default)) == default
    assert _container_ports(worker) == [default]


def test_compose_stream_services_reach_the_kafka_service() -> None:
    kafka_ports = _container_ports(_services()["kafka"])
    for name, _ in _stream_commands():
        host, _, port = _services()[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"].partition(":")
        assert host == "kafka" and int(port) in kafka_ports, name


def _prometheus_config() -> tuple[dict[str, Any], Path]:
    service = _services()["prometheus"]
    flag = next(a for a in service["command"] if a.startswith("--config.file="))
    path = _host_path(service, flag.partition("=")[2])
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config, path


def test_compose_prometheus_scrapes_the_worker_service_on_its_port() -> None:
    config, _ = _prometheus_config()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["eligibility-filter"]  # the job the dashboards and alerts select on
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    port = Settings.from_env({"STREAM_DEV_MODE": "1"}).web_port
    assert targets == [f"worker:{port}"]
    assert "worker" in _services()
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_compose_prometheus_rule_files_are_mounted() -> None:
    config, path = _prometheus_config()
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert (path.parent / rule_file).is_file(), rule_file


def test_compose_prometheus_and_grafana_ports() -> None:
    assert _container_ports(_services()["prometheus"]) == [9090]
    assert _container_ports(_services()["grafana"]) == [3000]


def test_compose_grafana_provisioning_points_at_prometheus_and_the_generated_dashboards() -> None:
    grafana = _services()["grafana"]
    provisioning = _host_path(grafana, "/etc/grafana/provisioning")
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == f"http://prometheus:{_container_ports(_services()['prometheus'])[0]}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "eligibility.yml").read_text())["providers"]
    dashboards = _host_path(grafana, provider["options"]["path"])
    assert dashboards == ROOT / "dashboards"
    assert {p.name for p in dashboards.glob("*.json")} >= {"eligibility-overview.json", "eligibility-compliance.json"}
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert _host_path(grafana, home).is_file()
