"""Kafka security settings: every refusal names its variable, secrets stay out of reprs, every client uses them."""

from __future__ import annotations

import ast
import ssl
import subprocess
from pathlib import Path

import pytest

from stream.config import KafkaSecurity, SaslMechanism, SecurityProtocol, Settings
from stream.connection import client_options, faust_credentials, ssl_context
from stream.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pa55word-never-shown"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA certificate and a client certificate with its key, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "client"):
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem")),
            ],
            capture_output=True,
            check=True,
        )
    (d / "password").write_text(PASSWORD + "\n")
    (d / "empty").write_text("\n")
    (d / "garbage.pem").write_text("not a certificate\n")
    (d / "latin1").write_bytes(b"\xe9t\xe9\n")
    return {
        "ca": d / "ca.pem",
        "cert": d / "client.pem",
        "key": d / "client.key",
        "password": d / "password",
        "empty": d / "empty",
        "garbage": d / "garbage.pem",
        "latin1": d / "latin1",
        "missing": d / "does-not-exist",
    }


def sasl_ssl(pki: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "worker",
        "KAFKA_SASL_PASSWORD_FILE": str(pki["password"]),
        "KAFKA_SSL_CA_FILE": str(pki["ca"]),
        **extra,
    }


def test_security_unset_is_plaintext_without_credentials() -> None:
    security = KafkaSecurity.from_env({})
    assert security == KafkaSecurity()
    assert security.protocol is SecurityProtocol.PLAINTEXT and security.ssl_check_hostname is True
    assert client_options(Settings(bootstrap_servers="b:9092")) == {
        "bootstrap_servers": "b:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(Settings()) is None


def test_security_sasl_ssl_reads_password_from_file_and_values_case_insensitively(pki: dict[str, Path]) -> None:
    security = KafkaSecurity.from_env(
        sasl_ssl(pki, KAFKA_SECURITY_PROTOCOL="sasl_ssl", KAFKA_SASL_MECHANISM="scram-sha-256")
    )
    assert security.protocol is SecurityProtocol.SASL_SSL
    assert security.sasl_mechanism is SaslMechanism.SCRAM_SHA_256
    assert security.sasl_username == "worker" and security.sasl_password == PASSWORD  # stripped of the newline
    assert security.ssl_ca_file == pki["ca"]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS'"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM='GSSAPI'"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "w"}, "KAFKA_SASL_PASSWORD_FILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_USERNAME": "w"}, "does not use SASL"),
        ({"KAFKA_SASL_USERNAME": "w"}, "does not use SASL"),
        ({"KAFKA_SSL_CHECK_HOSTNAME": "maybe"}, "KAFKA_SSL_CHECK_HOSTNAME='maybe'"),
    ],
)
def test_security_bad_values_refused_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("(", r"\(")):
        KafkaSecurity.from_env(env)


@pytest.mark.parametrize(
    ("protocol", "files", "names"),
    [
        ("SASL_SSL", {"KAFKA_SASL_PASSWORD_FILE": "missing"}, "KAFKA_SASL_PASSWORD_FILE=.*No such file"),
        ("SASL_SSL", {"KAFKA_SASL_PASSWORD_FILE": "empty"}, "KAFKA_SASL_PASSWORD_FILE=.* is empty"),
        ("SASL_SSL", {"KAFKA_SASL_PASSWORD_FILE": "latin1"}, "KAFKA_SASL_PASSWORD_FILE=.*UTF-8"),
        ("SASL_SSL", {"KAFKA_SSL_CA_FILE": "missing"}, "KAFKA_SSL_CA_FILE=.*No such file"),
        ("SASL_SSL", {"KAFKA_SSL_CERT_FILE": "missing", "KAFKA_SSL_KEY_FILE": "key"}, "KAFKA_SSL_CERT_FILE="),
        ("SASL_SSL", {"KAFKA_SSL_CERT_FILE": "cert", "KAFKA_SSL_KEY_FILE": "missing"}, "KAFKA_SSL_KEY_FILE="),
        ("SSL", {"KAFKA_SSL_CERT_FILE": "cert"}, "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together"),
        ("SSL", {"KAFKA_SSL_KEY_FILE": "key"}, "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together"),
        ("PLAINTEXT", {"KAFKA_SSL_CA_FILE": "ca"}, "KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS"),
        (
            "PLAINTEXT",
            {"KAFKA_SSL_CERT_FILE": "cert", "KAFKA_SSL_KEY_FILE": "key"},
            "KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS",
        ),
    ],
)
def test_security_bad_files_refused_naming_the_variable(
    pki: dict[str, Path], protocol: str, files: dict[str, str], names: str
) -> None:
    env = {k: v for k, v in sasl_ssl(pki, KAFKA_SECURITY_PROTOCOL=protocol).items() if protocol.startswith("SASL")}
    env.update({name: str(pki[file]) for name, file in files.items()})
    env["KAFKA_SECURITY_PROTOCOL"] = protocol
    with pytest.raises(ConfigError, match=names) as refused:
        KafkaSecurity.from_env(env)
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize("variable", ["KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE"])
def test_ssl_context_unusable_pem_refused_naming_the_variable(pki: dict[str, Path], variable: str) -> None:
    env = sasl_ssl(pki, KAFKA_SSL_CERT_FILE=str(pki["cert"]), KAFKA_SSL_KEY_FILE=str(pki["key"]))
    env[variable] = str(pki["garbage"])
    security = KafkaSecurity.from_env(env)  # readable: only building the TLS context can tell
    with pytest.raises(ConfigError, match=variable):
        ssl_context(security)


def test_secrets_never_in_repr_of_settings_or_faust_credentials(pki: dict[str, Path]) -> None:
    settings = Settings.from_env(sasl_ssl(pki, STREAM_DEV_MODE="1"))
    assert settings.kafka_security.sasl_password == PASSWORD
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in repr(settings.kafka_security)
    assert PASSWORD not in str(settings.kafka_security)
    assert PASSWORD not in repr(faust_credentials(settings))


def test_client_options_sasl_ssl_carry_mechanism_credentials_and_verifying_context(pki: dict[str, Path]) -> None:
    settings = Settings.from_env(
        sasl_ssl(
            pki,
            KAFKA_BOOTSTRAP_SERVERS="kafka-0:9093",
            KAFKA_SSL_CERT_FILE=str(pki["cert"]),
            KAFKA_SSL_KEY_FILE=str(pki["key"]),
            STREAM_DEV_MODE="1",
        )
    )
    options = client_options(settings)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "kafka-0:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True and context.verify_mode is ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ca"),),)]


def test_client_options_hostname_check_off_still_verifies_the_chain(pki: dict[str, Path]) -> None:
    settings = Settings.from_env(
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "0", "STREAM_DEV_MODE": "1"}
    )
    options = client_options(settings)
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert options["ssl_context"].check_hostname is False
    assert options["ssl_context"].verify_mode is ssl.CERT_REQUIRED


def test_client_options_sasl_plaintext_has_no_tls(pki: dict[str, Path]) -> None:
    settings = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "worker",
            "KAFKA_SASL_PASSWORD_FILE": str(pki["password"]),
            "STREAM_DEV_MODE": "1",
        }
    )
    options = client_options(settings)
    assert "ssl_context" not in options
    assert options["security_protocol"] == "SASL_PLAINTEXT" and options["sasl_mechanism"] == "PLAIN"


def test_faust_credentials_match_the_protocol(pki: dict[str, Path]) -> None:
    import faust.auth

    sasl = faust_credentials(Settings.from_env(sasl_ssl(pki, STREAM_DEV_MODE="1")))
    assert isinstance(sasl, faust.auth.SASLCredentials)
    assert sasl.protocol.value == "SASL_SSL" and sasl.mechanism.value == "SCRAM-SHA-512"
    assert sasl.username == "worker" and sasl.password == PASSWORD and sasl.ssl_context is not None
    tls = faust_credentials(
        Settings.from_env(
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(pki["ca"]), "STREAM_DEV_MODE": "1"}
        )
    )
    assert isinstance(tls, faust.auth.SSLCredentials) and tls.protocol.value == "SSL"


# -- every client in stream/ is built with the settings' options -------------------------

AIOKAFKA_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "AIOKafkaClient"}


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _passes(call: ast.Call, keyword: str | None, function: str) -> bool:
    """Whether the call has `keyword=function(...)` (or `**function(...)` for keyword None)."""
    return any(
        k.arg == keyword and isinstance(k.value, ast.Call) and _called_name(k.value) == function for k in call.keywords
    )


def test_every_kafka_client_in_stream_is_built_with_the_security_options() -> None:
    sites: list[str] = []
    forgotten: list[str] = []
    for path in sorted((ROOT / "stream").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = _called_name(node)
            where = f"{path.relative_to(ROOT)}:{node.lineno} {name}"
            if name in AIOKAFKA_CLIENTS:
                sites.append(where)
                if not _passes(node, None, "client_options"):
                    forgotten.append(f"{where} without **client_options(settings)")
            elif name == "App" and isinstance(node.func, ast.Attribute) and ast.unparse(node.func) == "faust.App":
                sites.append(where)
                if not _passes(node, "broker_credentials", "faust_credentials"):
                    forgotten.append(f"{where} without broker_credentials=faust_credentials(settings)")
    assert not forgotten, forgotten
    # The scan sees the known sites: worker (2), recovery, topics (2), app, generator, verifier (2), watch.
    assert len(sites) >= 10, sites
