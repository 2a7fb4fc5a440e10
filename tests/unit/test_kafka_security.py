"""Kafka client TLS settings, the ACL table and the local CA's client certificates."""

from __future__ import annotations

import shlex
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.local.tls import LocalCA
from shared.errors import ConfigError
from shared.kafka_acls import (
    DOWNSTREAM_GROUP_PREFIX,
    PRINCIPALS,
    kafka_acls_commands,
    pipeline_acls,
)
from shared.kafka_tls import client_options, connection_environment, ssl_context
from shared.settings import Settings

pytestmark = pytest.mark.unit


def _pem(tmp_path: Path, name: str = "signer") -> Path:
    issued = LocalCA(tmp_path / "ca").client_cert(f"kafka-{name}", common_name=name)
    pem = tmp_path / f"{name}.pem"
    pem.write_bytes(issued.key.read_bytes() + issued.cert.read_bytes())
    return pem


def test_plaintext_adds_nothing_but_the_bootstrap_servers() -> None:
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert client_options(s) == {"bootstrap_servers": "k:9092"}


def test_ssl_verifies_the_broker_and_presents_the_client_certificate(tmp_path: Path) -> None:
    pem = _pem(tmp_path)
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL",
                           "KAFKA_SSL_CAFILE": str(tmp_path / "ca" / "ca.crt"),
                           "KAFKA_SSL_CERTFILE": str(pem)})
    options = client_options(s)
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1  # the configured CA only


@pytest.mark.parametrize("variable", ["KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE"])
def test_an_unusable_file_is_named(tmp_path: Path, variable: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", variable: str(garbage)})
    with pytest.raises(ConfigError) as info:
        ssl_context(s)
    assert variable in str(info.value) and str(garbage) in str(info.value)


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(missing)})
    with pytest.raises(ConfigError, match="No such file") as info:
        client_options(s)
    assert str(missing) in str(info.value)


def test_another_process_gets_the_same_connection_and_nothing_else() -> None:
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9093", "KAFKA_SECURITY_PROTOCOL": "SSL",
                           "KAFKA_SSL_CERTFILE": "/c/a.pem", "VAULT_TOKEN": "s.secret"})
    env = connection_environment(s)
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SSL" and env["KAFKA_SSL_CERTFILE"] == "/c/a.pem"
    assert all(k.startswith("KAFKA_") for k in env)
    assert "s.secret" not in env.values()


def test_the_acl_table_is_least_privilege_for_the_configured_names() -> None:
    s = Settings.from_env({"LEDGER_TOPIC_APPEND": "a", "LEDGER_TOPIC_SIGNED": "s",
                           "LEDGER_TOPIC_ANCHORED": "n", "LEDGER_SIGNER_GROUP": "gs",
                           "LEDGER_ANCHORER_GROUP": "ga"})
    got = {(a.principal, a.operation, a.resource, a.name, a.prefixed) for a in pipeline_acls(s)}
    assert got == {
        ("ingest", "WRITE", "topic", "a", False), ("ingest", "READ", "topic", "s", False),
        ("signer", "READ", "topic", "a", False), ("signer", "READ", "group", "gs", False),
        ("signer", "WRITE", "topic", "s", False), ("signer", "WRITE", "topic", "a.dlq", False),
        ("anchorer", "READ", "topic", "s", False), ("anchorer", "READ", "group", "ga", False),
        ("anchorer", "WRITE", "topic", "n", False),
        ("anchorer", "WRITE", "topic", "s.dlq", False),
        ("producer", "WRITE", "topic", "a", False),
        ("consumer", "READ", "topic", "n", False),
        ("consumer", "READ", "group", DOWNSTREAM_GROUP_PREFIX, True),
    }
    assert {a.principal for a in pipeline_acls(s, ["producer"])} == {"producer"}
    with pytest.raises(ConfigError, match="unknown Kafka principal"):
        pipeline_acls(s, ["root"])


def test_the_printed_commands_are_kafka_acls_commands_one_per_acl() -> None:
    acls = pipeline_acls(Settings(), PRINCIPALS)
    lines = kafka_acls_commands(acls, bootstrap="kafka:9093", command_config="admin.properties")
    assert len(lines) == len(acls)
    consumer_group = shlex.split(lines[-1])
    assert consumer_group[:6] == ["kafka-acls.sh", "--bootstrap-server", "kafka:9093",
                                  "--command-config", "admin.properties", "--add"]
    assert consumer_group[6:] == ["--allow-principal", "User:consumer", "--operation", "Read",
                                  "--group", DOWNSTREAM_GROUP_PREFIX,
                                  "--resource-pattern-type", "prefixed"]


def test_a_client_certificate_names_its_principal_and_only_client_use(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    issued = ca.client_cert("kafka-anchorer", common_name="anchorer")
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=anchorer"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_path.read_bytes()))
    again = ca.client_cert("kafka-anchorer", common_name="anchorer")
    assert again.cert.read_bytes() == issued.cert.read_bytes()  # still good: reused
    renamed = ca.client_cert("kafka-anchorer", common_name="signer")  # another principal
    names = x509.load_pem_x509_certificate(renamed.cert.read_bytes()).subject
    assert [a.value for a in names.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["signer"]


def test_a_broker_certificate_serves_and_acts_as_a_client(tmp_path: Path) -> None:
    issued = LocalCA(tmp_path).server_cert("kafka", dns=["localhost"], ips=["127.0.0.1"],
                                           common_name="kafka-broker", client_auth=True)
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=kafka-broker"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
