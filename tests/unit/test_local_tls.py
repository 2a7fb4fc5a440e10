"""The local CA: made once, server certificates issued for the given names and reused."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from deploy.local.tls import LocalCA, install_key, main


def _sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(san.get_values_for_type(x509.DNSName)),
            {str(ip) for ip in san.get_values_for_type(x509.IPAddress)})


def test_the_ca_is_made_once_and_signs_the_server_certificate(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path / "tls")
    issued = ca.server_cert("postgres", dns=["localhost"], ips=["127.0.0.1"])
    ca_cert = x509.load_pem_x509_certificate(issued.ca.read_bytes())
    server = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    server.verify_directly_issued_by(ca_cert)  # raises if not
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _sans(issued.cert) == ({"localhost"}, {"127.0.0.1"})
    assert server.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    assert issued.key.stat().st_mode & 0o077 == 0
    assert (tmp_path / "tls" / "ca.key").stat().st_mode & 0o077 == 0


def test_a_restart_reuses_the_ca_and_the_certificate(tmp_path: Path) -> None:
    first = LocalCA(tmp_path).server_cert("postgres", dns=["localhost"], ips=["127.0.0.1"])
    before = (first.ca.read_bytes(), first.cert.read_bytes(), first.key.read_bytes())
    again = LocalCA(tmp_path).server_cert("postgres", dns=["localhost"], ips=["127.0.0.1"])
    assert (again.ca.read_bytes(), again.cert.read_bytes(), again.key.read_bytes()) == before


def test_other_names_get_a_new_certificate_from_the_same_ca(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    first = ca.server_cert("kafka", dns=["localhost"])
    old_cert, ca_bytes = first.cert.read_bytes(), first.ca.read_bytes()
    again = ca.server_cert("kafka", dns=["localhost", "kafka"], ips=["::1"])
    assert again.cert.read_bytes() != old_cert
    assert again.ca.read_bytes() == ca_bytes
    assert _sans(again.cert) == ({"localhost", "kafka"}, {str(ipaddress.ip_address("::1"))})


def test_a_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    LocalCA(tmp_path / "a").server_cert("db", dns=["localhost"])
    other = LocalCA(tmp_path / "b")
    other.ensure()
    for name in ("db.crt", "db.key"):
        (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    issued = other.server_cert("db", dns=["localhost"])
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(issued.ca.read_bytes()))


@pytest.mark.parametrize(("name", "dns", "ips"), [("../x", ["a"], []), ("db", [], []),
                                                   ("db", [], ["not-an-ip"])])
def test_bad_requests_are_refused(tmp_path: Path, name: str, dns: list[str],
                                  ips: list[str]) -> None:
    with pytest.raises(ValueError):
        LocalCA(tmp_path).server_cert(name, dns=dns, ips=ips)


def test_install_key_copies_with_a_private_key(tmp_path: Path) -> None:
    issued = LocalCA(tmp_path / "ca").server_cert("postgres", dns=["localhost"])
    installed = install_key(issued, tmp_path / "server")
    assert installed.key.read_bytes() == issued.key.read_bytes()
    assert installed.key.stat().st_mode & 0o777 == 0o600
    assert installed.ca.read_bytes() == issued.ca.read_bytes()


def test_the_command_line_issues_a_certificate(tmp_path: Path) -> None:
    assert main([str(tmp_path), "postgres", "--dns", "postgres", "--ip", "127.0.0.1"]) == 0
    assert _sans(tmp_path / "postgres.crt") == ({"postgres"}, {"127.0.0.1"})


def test_the_command_line_installs_without_the_ca_key(tmp_path: Path) -> None:
    out = tmp_path / "server"
    assert main([str(tmp_path / "ca"), "db", "--dns", "db", "--install", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "db.crt", "db.key"]
    assert (out / "db.key").stat().st_mode & 0o777 == 0o600
