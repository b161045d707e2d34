"""scalein.py: a StatefulSet's pod from its environment, its StatefulSet's replicas from a real HTTP server.

The server is a stand-in for the Kubernetes API (there is no cluster here), served
over HTTP on loopback: the answers a real API gives (200 with the object, 404, 403,
500), malformed ones, and none in time. Reading them never raises anything but
CannotTell, which keeps the member. The leave itself, on the real broker, is
tests/integration/test_scalein.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import Settings
from stream.errors import ConfigError
from stream.runtime.scalein import CannotTell, Pod, going_for_good, leave_if_scaled_in, replicas_of
from tests.unit.kube_api import Api, serve


@pytest.fixture
def api() -> Iterator[Api]:
    yield from serve()


def pod_at(url: str, tmp_path: Path, ordinal: int = 1) -> Pod:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    return Pod(api=url, namespace="ns", statefulset="ef", ordinal=ordinal, token_file=token, ca_file=None)


# -- the pod from its environment -----------------------------------------------------


def test_a_statefulset_pod_in_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("prod\n")
    (tmp_path / "token").write_text("t")
    env = {
        "HOSTNAME": "rel-eligibility-filter-12",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
    }
    pod = Pod.from_env(env, tmp_path)
    assert pod == Pod(
        api="https://10.0.0.1:6443",
        namespace="prod",
        statefulset="rel-eligibility-filter",
        ordinal=12,
        token_file=tmp_path / "token",
        ca_file=None,
    )
    assert pod.url == "https://10.0.0.1:6443/apis/apps/v1/namespaces/prod/statefulsets/rel-eligibility-filter"


def test_the_api_of_an_ipv6_cluster_and_an_explicit_one(tmp_path: Path) -> None:
    env = {"HOSTNAME": "ef-0", "KUBERNETES_SERVICE_HOST": "fd00::1", "POD_NAMESPACE": "ns"}
    pod = Pod.from_env(env, tmp_path)
    assert pod is not None and pod.api == "https://[fd00::1]:443"
    pod = Pod.from_env({**env, "STREAM_KUBERNETES_API": "http://127.0.0.1:8001/"}, tmp_path)
    assert pod is not None and pod.api == "http://127.0.0.1:8001"


@pytest.mark.parametrize(
    "env",
    [
        {"HOSTNAME": "laptop", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAMESPACE": "ns"},  # not a StatefulSet's pod
        {"HOSTNAME": "ef-03", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAMESPACE": "ns"},  # no ordinal
        {"HOSTNAME": "EF-1", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAMESPACE": "ns"},  # not a pod name
        {"HOSTNAME": "ef-1", "POD_NAMESPACE": "ns"},  # no cluster
        {"HOSTNAME": "ef-1", "KUBERNETES_SERVICE_HOST": "10.0.0.1"},  # no namespace
    ],
)
def test_not_a_statefulset_pod_with_an_api_is_none(env: dict[str, str], tmp_path: Path) -> None:
    assert Pod.from_env(env, tmp_path) is None


def test_an_api_url_of_another_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STREAM_KUBERNETES_API"):
        Pod.from_env(
            {"HOSTNAME": "ef-1", "STREAM_KUBERNETES_API": "file:///etc/passwd", "POD_NAMESPACE": "n"}, tmp_path
        )


@given(st.text(max_size=80), st.text(max_size=20))
def test_any_hostname_is_a_pod_or_none_never_an_error(hostname: str, namespace: str) -> None:
    pod = Pod.from_env(
        {"HOSTNAME": hostname, "STREAM_KUBERNETES_API": "http://127.0.0.1:1", "POD_NAMESPACE": namespace},
        Path("/nonexistent"),
    )
    if pod is not None:
        assert f"{pod.statefulset}-{pod.ordinal}" == hostname


@given(st.integers(0, 10**9), st.none() | st.integers(0, 10**9))
def test_a_pod_goes_for_good_when_its_statefulset_is_gone_or_scaled_below_it(
    ordinal: int, replicas: int | None
) -> None:
    assert going_for_good(ordinal, replicas) == (replicas is None or ordinal >= replicas)


# -- the StatefulSet's replicas from the API ---------------------------------------------


def test_replicas_are_read_with_the_service_account_token(api: Api, tmp_path: Path) -> None:
    assert replicas_of(pod_at(api.url, tmp_path)) == 2
    assert api.seen == [("/apis/apps/v1/namespaces/ns/statefulsets/ef", "Bearer secret-token")]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"spec": {"replicas": 0}}', 0),
        (200, b'{"spec": {}}', 1),  # the API's default
        (200, b'{"metadata": {"deletionTimestamp": "2026-12-07T10:00:00Z"}, "spec": {"replicas": 3}}', None),
        (404, b'{"kind": "Status", "code": 404}', None),
    ],
)
def test_answers_that_tell(api: Api, tmp_path: Path, status: int, body: bytes, expected: int | None) -> None:
    api.status, api.body = status, body
    assert replicas_of(pod_at(api.url, tmp_path)) == expected


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, b'{"kind": "Status", "code": 403}'),
        (401, b""),
        (500, b"oops"),
        (200, b"not json"),
        (200, b"[1, 2]"),
        (200, b'{"spec": {"replicas": "2"}}'),
        (200, b'{"spec": {"replicas": -1}}'),
        (200, b'{"spec": {"replicas": true}}'),
        (200, b'{"spec": []}'),
    ],
)
def test_answers_that_do_not_tell(api: Api, tmp_path: Path, status: int, body: bytes) -> None:
    api.status, api.body = status, body
    with pytest.raises(CannotTell):
        replicas_of(pod_at(api.url, tmp_path))


def test_no_api_and_no_answer_in_time_do_not_tell(api: Api, tmp_path: Path) -> None:
    with pytest.raises(CannotTell, match="out of reach"):
        replicas_of(pod_at("http://127.0.0.1:1", tmp_path))
    api.delay = 2.0
    with pytest.raises(CannotTell, match="out of reach"):
        replicas_of(pod_at(api.url, tmp_path), timeout=0.3)


@pytest.fixture(scope="module")
def shared_api() -> Iterator[Api]:
    """One stand-in for every example of a search (a server per example would cost its shutdown's poll)."""
    yield from serve()


@settings(max_examples=200, deadline=None)
@given(status=st.sampled_from([200, 201, 204, 301, 400, 404, 409, 500, 503]), body=st.binary(max_size=300))
def test_any_answer_is_replicas_none_or_cannot_tell(shared_api: Api, status: int, body: bytes) -> None:
    shared_api.status, shared_api.body = status, body
    pod = Pod(api=shared_api.url, namespace="ns", statefulset="ef", ordinal=0, token_file=None, ca_file=None)
    try:
        replicas = replicas_of(pod, timeout=2)
    except CannotTell:
        return
    assert replicas is None or (isinstance(replicas, int) and replicas >= 0)
    if replicas is None:
        assert status == 404 or b"deletionTimestamp" in body


# -- the decision to leave, short of the broker -------------------------------------------


def test_off_without_static_membership_or_outside_a_pod_nothing_is_asked(api: Api, tmp_path: Path) -> None:
    base = Settings(group_instance_id="ef-1")
    pod = pod_at(api.url, tmp_path)
    assert not asyncio.run(leave_if_scaled_in(replace(base, leave_on_scale_in=False), pod))
    assert not asyncio.run(leave_if_scaled_in(replace(base, group_instance_id=None), pod))
    assert not asyncio.run(leave_if_scaled_in(base, None))
    assert api.seen == []


def test_a_restart_or_an_api_that_cannot_tell_stays_without_asking_the_broker(api: Api, tmp_path: Path) -> None:
    # The broker is out of reach: asking it would fail the test (the call returns False either way,
    # so the log says which path ran).
    base = Settings(group_instance_id="ef-1", bootstrap_servers="127.0.0.1:1")
    api.body = b'{"spec": {"replicas": 2}}'  # ordinal 1 of 2: a restart
    assert not asyncio.run(leave_if_scaled_in(base, pod_at(api.url, tmp_path)))
    api.status = 403
    assert not asyncio.run(leave_if_scaled_in(base, pod_at(api.url, tmp_path)))
    assert len(api.seen) == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"FOO\r\n\r\n",  # not HTTP
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"spec"',  # cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a broken chunk
        b"",  # closed at once
    ],
)
def test_a_broken_http_answer_does_not_tell(raw: bytes) -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(raw)
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    pod = Pod(
        api=f"http://127.0.0.1:{server.getsockname()[1]}",
        namespace="ns",
        statefulset="ef",
        ordinal=0,
        token_file=None,
        ca_file=None,
    )
    try:
        with pytest.raises(CannotTell):
            replicas_of(pod, timeout=5)
    finally:
        thread.join(5)
        server.close()
