"""Secured Kafka for real: the filter through a SASL_SSL listener (SCRAM-SHA-512) with ACLs on.

A second local broker (scripts/kafka.sh with KAFKA_SASL_SSL_PORT, its own ports and
state directory, so the main broker's suite and its ACL-free PLAINTEXT listener are
untouched) with a throwaway CA. Each principal holds exactly the ACLs the README's
"Secured Kafka" table lists for it, read from the README itself, so the table is what
is tested. Locally a secured broker that cannot start skips these tests loudly; under
CI=true it is a failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import CreateAclsRequest

from stream.config import Settings, TopicNames
from stream.connection import client_options
from stream.runtime.topics import create_topics
from stream.verifier.verify import verify
from tests.conftest import ROOT, missing

from .harness import KEY, Out, build_worker, free_port, http_get, latest_by_key, process_env, unique_settings
from .test_filter_scenario import CONTENT, OBJECTIONS, PROFILES
from .test_members import remove_members

pytestmark = pytest.mark.integration

# Ports and state of the secured broker; apart from the main broker's (9092/9093, .cache/kafka).
PLAIN_PORT = int(os.environ.get("KAFKA_SECURE_PLAIN_PORT", "19192"))
CONTROLLER_PORT = int(os.environ.get("KAFKA_SECURE_CONTROLLER_PORT", "19193"))
SASL_SSL_PORT = int(os.environ.get("KAFKA_SECURE_SASL_SSL_PORT", "19194"))
STATE_DIR = ROOT / ".cache" / "kafka-secure"
USERS = ("admin", "worker", "verifier", "trainer", "form", "stranger")

# Kafka's codes for the ACLs the README names (org.apache.kafka.common.acl / resource).
RESOURCE_TYPES = {"Topic": 2, "Group": 3, "Cluster": 4}
OPERATIONS = {"Read": 3, "Write": 4, "Create": 5, "Describe": 8}
LITERAL, ALLOW = 3, 3


@dataclass(frozen=True)
class SecureBroker:
    """The secured broker: its SASL_SSL address, CA and each user's password file."""

    bootstrap: str
    ca_file: Path

    def env(self, user: str, *, ca_file: Path | None = None) -> dict[str, str]:
        """The KAFKA_* variables that connect as `user` through the SASL_SSL listener."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD_FILE": str(STATE_DIR / "scram" / f"{user}.password"),
            "KAFKA_SSL_CA_FILE": str(ca_file or self.ca_file),
        }

    def settings(self, base: Settings, user: str) -> Settings:
        """`base` (its topics and group) connecting as `user`."""
        read = Settings.from_env({**self.env(user), "STREAM_DEV_MODE": "1"})
        return replace(base, bootstrap_servers=read.bootstrap_servers, kafka_security=read.kafka_security)


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    """The secured broker of scripts/kafka.sh, started here if need be (and left running, as the main one is)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "kafka.sh"), "start"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={
            **os.environ,
            "KAFKA_FORCE_LOCAL": "1",
            "KAFKA_PORT": str(PLAIN_PORT),
            "KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
            "KAFKA_SASL_SSL_PORT": str(SASL_SSL_PORT),
            "KAFKA_STATE_DIR": str(STATE_DIR),
            "KAFKA_SCRAM_USERS": " ".join(USERS),
            "KAFKA_HEAP": "512m",
        },
    )
    if proc.returncode != 0:
        missing(
            "SECURED KAFKA BROKER",
            "security tests",
            f"scripts/kafka.sh start (KAFKA_SASL_SSL_PORT={SASL_SSL_PORT}) failed:\n{proc.stdout}\n{proc.stderr}",
        )
    yield SecureBroker(bootstrap=f"localhost:{SASL_SSL_PORT}", ca_file=STATE_DIR / "tls" / "ca.pem")


@pytest.fixture
async def admin(secure_broker: SecureBroker, tmp_path: Path) -> AsyncIterator[Settings]:
    """Fresh uuid-named topics on the secured broker, made by the super user `admin`; deleted afterwards."""
    settings = secure_broker.settings(unique_settings("unused", tmp_path), "admin")
    await create_topics(settings)
    yield settings
    await delete_topics(settings)


async def delete_topics(settings: Settings) -> None:
    """Delete the topics named after these settings' uuid tag."""
    client = AIOKafkaAdminClient(**client_options(settings))
    await client.start()
    try:
        prefix = settings.topics.content.split(".")[0] + "."
        doomed = [t for t in await client.list_topics() if t.startswith(prefix)]
        if doomed:
            await client.delete_topics(doomed)
    finally:
        await client.close()


# -- the README's ACL table ------------------------------------------------------------


@dataclass(frozen=True)
class Acl:
    """One row of the README's table, for one resource name."""

    principal: str
    resource_type: str
    name: str
    operations: tuple[str, ...]


def readme_acls() -> list[Acl]:
    """Every row of the table in the README's "Secured Kafka" section, one Acl per resource name."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Secured Kafka", 1)[1].split("\n## ", 1)[0]
    acls = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[1] not in RESOURCE_TYPES:
            continue
        principal, resource_type, names, operations = cells
        for name in re.findall(r"`([^`]+)`", names):
            acls.append(Acl(principal, resource_type, name, tuple(o.strip() for o in operations.split(","))))
    return acls


def resolve(name: str, settings: Settings) -> str:
    """A README resource name (the default topic and group names) as the test's uuid-named one."""
    defaults = TopicNames()
    for field in defaults.__dataclass_fields__:
        if name == getattr(defaults, field):
            return str(getattr(settings.topics, field))
    default_group = Settings().group_id
    if name.startswith(default_group):
        return settings.group_id + name.removeprefix(default_group)
    raise AssertionError(f"README names {name!r}, which is neither a topic nor the group of the defaults")


async def grant(admin: Settings, user: str, readme_principal: str) -> list[Acl]:
    """Give `user` exactly the ACLs the README lists for `readme_principal`; return them.

    aiokafka's admin client has no ACL call; CreateAcls goes through its general client.
    """
    acls = [a for a in readme_acls() if a.principal == readme_principal]
    assert acls, f"the README lists no ACLs for {readme_principal!r}"
    client = AIOKafkaClient(**client_options(admin))
    await client.bootstrap()
    try:
        for acl in acls:
            for operation in acl.operations:
                request = CreateAclsRequest(
                    RESOURCE_TYPES[acl.resource_type],
                    resolve(acl.name, admin),
                    LITERAL,
                    f"User:{user}",
                    "*",
                    OPERATIONS[operation],
                    ALLOW,
                )
                response = await client.send(client.get_random_node(), request)
                errors = [(code, message) for code, message in response.creation_responses if code != 0]
                assert not errors, f"CreateAcls {acl} {operation}: {errors}"
    finally:
        await client.close()
    return acls


# -- clients as each principal -----------------------------------------------------------


async def send(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    """Produce in order as the settings' principal; every record acknowledged."""
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, key=k, value=v) for k, v in records])
    finally:
        await producer.stop()


async def read_until(settings: Settings, topic: str, count: int, timeout: float = 90.0) -> list[Out]:
    """Read `topic` from the beginning as the settings' principal until `count` records arrived."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[Out] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        async with asyncio.timeout(timeout):
            while len(out) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(Out(r.key, r.value, r.partition, r.offset) for r in records)
    except TimeoutError:
        raise AssertionError(f"{topic}: {len(out)} of {count} records after {timeout}s") from None
    finally:
        await consumer.stop()
    return out


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


# -- the tests ---------------------------------------------------------------------------


async def test_scenario_through_sasl_ssl_with_readme_acls_decides_exactly(
    secure_broker: SecureBroker, admin: Settings
) -> None:
    await grant(admin, "worker", "worker")
    await grant(admin, "form", "objection form")
    await grant(admin, "trainer", "trainer")
    port = free_port()
    env = process_env(
        admin,
        STREAM_WEB_PORT=str(port),
        STREAM_PSEUDONYM_KEY=KEY.decode(),
        STREAM_GROUP_INSTANCE_ID="secured-worker-0",
        **secure_broker.env("worker"),
    )
    log_path = admin.data_dir / "worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(120):
            while (await http_get(f"http://127.0.0.1:{port}/ready"))[0] != 200:
                assert worker.poll() is None, log_path.read_text()[-3000:]
                await asyncio.sleep(0.2)

        await send(admin, admin.topics.profiles, PROFILES)
        await send(secure_broker.settings(admin, "form"), admin.topics.objections, OBJECTIONS)
        await send(admin, admin.topics.content, [record for record, _ in CONTENT.values()])

        decisions = await read_until(admin, admin.topics.decisions, len(CONTENT))
        reasons = {d.json()["content_id"]: d.json()["reason"] for d in decisions}
        assert reasons == {cid: reason for cid, (_, reason) in CONTENT.items()}
        trainer = secure_broker.settings(admin, "trainer")
        eligible = {cid.encode() for cid, (_, reason) in CONTENT.items() if reason == "eligible"}
        feed = await read_until(trainer, admin.topics.feed, len(eligible))
        assert set(latest_by_key(feed)) == eligible

        # The worker's group is the only one, and there is no topic the README does not list.
        client = AIOKafkaAdminClient(**client_options(admin))
        await client.start()
        try:
            groups = {g[0] for g in await client.list_consumer_groups()}
            topics = {t for t in await client.list_topics() if admin.group_id in t}
        finally:
            await client.close()
        assert admin.group_id in groups and f"{admin.group_id}-host" not in groups
        assert topics == set()

        # The verifier, with its README ACLs, reads everything it checks and finds the feed right.
        await grant(admin, "verifier", "verifier")
        report = await verify(secure_broker.settings(admin, "verifier"))
        assert report.feed_items == len(eligible)
        assert report.violation_count == 0 and report.losses.count == 0

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()[-3000:]

        # A scale-in: the stopped static member removed with the worker's own rights (the
        # group's Read); the trainer, with no right on the group, is refused.
        code, _, err = await remove_members(admin, "secured-worker-0", **secure_broker.env("trainer"))
        assert code == 2 and "GroupAuthorizationFailedError" in err, err
        code, out, err = await remove_members(admin, "secured-worker-0", **secure_broker.env("worker"))
        assert code == 0, err
        assert out == f"secured-worker-0: removed from group {admin.group_id}\n"
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()


async def test_worker_as_principal_without_acls_is_refused_with_authorization_error(
    secure_broker: SecureBroker, admin: Settings
) -> None:
    worker = build_worker(secure_broker.settings(admin, "stranger"))
    with pytest.raises(KafkaError, match="Authorization"):
        await worker.start()
        await asyncio.wait_for(worker.run(), timeout=60)
    await worker.stop()


async def test_principals_are_refused_what_the_readme_does_not_grant(
    secure_broker: SecureBroker, admin: Settings
) -> None:
    await grant(admin, "trainer", "trainer")
    await grant(admin, "form", "objection form")
    # The objection form may write objections, not content.
    with pytest.raises(KafkaError, match="Authorization"):
        await send(secure_broker.settings(admin, "form"), admin.topics.content, [(b"a-gb", b"{}")])
    # A trainer may read the feed, not the inputs with their account ids and birth dates.
    consumer = AIOKafkaConsumer(
        admin.topics.profiles, **client_options(secure_broker.settings(admin, "trainer")), group_id=None
    )
    try:
        with pytest.raises(KafkaError, match="Authorization"):
            await consumer.start()
            await asyncio.wait_for(consumer.getmany(timeout_ms=5000), timeout=30)
    finally:
        await consumer.stop()


async def test_topics_generate_and_watch_through_sasl_ssl(secure_broker: SecureBroker, tmp_path: Path) -> None:
    settings = secure_broker.settings(unique_settings("unused", tmp_path), "admin")
    env = process_env(settings, **secure_broker.env("admin"))
    try:
        created = cli(env, "topics", "create")
        assert created.returncode == 0, created.stderr
        checked = cli(env, "topics", "check")
        assert checked.returncode == 0, checked.stderr
        generated = cli(env, "generate", "--count", "50", "--accounts", "20", "--malformed-share", "0", "--no-progress")
        assert generated.returncode == 0, generated.stderr
        assert len(await read_until(settings, settings.topics.content, 50)) == 50
        # watch prints its first count only once its consumer is connected.
        watch = subprocess.Popen(
            [sys.executable, "-m", "stream", "watch", "--interval", "0.2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watch.stdout is not None
            first = await asyncio.wait_for(asyncio.to_thread(watch.stdout.readline), timeout=60)
            assert "total=0" in first, f"watch printed {first!r}"
        finally:
            watch.kill()
            watch.communicate()
    finally:
        await delete_topics(settings)


def test_wrong_ca_fails_with_certificate_error(secure_broker: SecureBroker, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=another CA"),
            *("-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)),
        ],
        capture_output=True,
        check=True,
    )
    env = process_env(unique_settings("unused", tmp_path), **secure_broker.env("admin", ca_file=other_ca))
    result = cli(env, "topics", "check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "certificate verify failed" in result.stderr
    assert f"error: Kafka at localhost:{SASL_SSL_PORT} (SASL_SSL)" in result.stderr


def test_hostname_mismatch_fails_with_certificate_error(secure_broker: SecureBroker, tmp_path: Path) -> None:
    env = process_env(unique_settings("unused", tmp_path), **secure_broker.env("admin"))
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{SASL_SSL_PORT}"  # the certificate names localhost only
    result = cli(env, "topics", "check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "certificate verify failed" in result.stderr and "mismatch" in result.stderr
    assert f"error: Kafka at 127.0.0.1:{SASL_SSL_PORT} (SASL_SSL)" in result.stderr


def test_wrong_password_fails_with_sasl_authentication_error(secure_broker: SecureBroker, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    env = process_env(unique_settings("unused", tmp_path), **secure_broker.env("admin"))
    env["KAFKA_SASL_PASSWORD_FILE"] = str(wrong)
    result = cli(env, "topics", "check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "SaslAuthenticationFailed" in result.stderr and "invalid credentials" in result.stderr
    assert "not-the-password" not in result.stderr
