"""HAProxy in front of the replicas: the harness's generated configuration and the one
docker-compose.yml mounts both check /readyz, send a refused request elsewhere, cut slow
clients (`timeout http-request`, `option http-buffer-request`); deploy/haproxy.cfg is valid
for HAProxy as shipped and with its TLS lines turned on."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness.balancer import haproxy_config
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]


def test_the_harness_config_checks_every_replica_on_readyz(tmp_path: Path) -> None:
    config = haproxy_config(
        {
            "order": (18080, ["127.0.0.1:9001", "127.0.0.1:9002"]),
            "product": (13000, ["127.0.0.1:9003"]),
        }
    )
    assert "bind 127.0.0.1:18080" in config and "bind 127.0.0.1:13000" in config
    assert config.count("option httpchk GET /readyz") == 2
    assert "server order-1 127.0.0.1:9002 check" in config
    assert "option redispatch" in config
    assert "timeout http-request 10000ms" in config
    assert "option http-buffer-request" in config
    assert "timeout http-request 1500ms" in haproxy_config({}, request_timeout=1.5)
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    haproxy_accepts(path)


def haproxy_accepts(path: Path) -> None:
    """HAProxy itself checks the file, where it is installed; CI must have it (.ci/run)."""
    if shutil.which("haproxy") is None:
        if IN_CI:
            pytest.fail("CI needs haproxy to check the configurations")
        pytest.skip("haproxy is not installed")
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True)
    assert check.returncode == 0, check.stderr


def deploy_config() -> str:
    """deploy/haproxy.cfg, its replicas' names not looked up at start (``init-addr none``):
    outside Docker they do not resolve, and each lookup waits seconds for its timeout."""
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert config.count("init-addr libc,none") == 1
    return config.replace("init-addr libc,none", "init-addr none")


def test_the_deploy_config_cuts_slow_clients_and_is_valid(tmp_path: Path) -> None:
    config = deploy_config()
    defaults = config[config.index("defaults") : config.index("frontend")]
    assert "timeout http-request 10s" in defaults
    assert "option http-buffer-request" in defaults
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    haproxy_accepts(path)


def test_the_deploy_config_terminates_tls_once_its_lines_are_uncommented(tmp_path: Path) -> None:
    """The documented switch (docs/operations.md): the `bind ... ssl` lines uncommented, a
    certificate and its key in one PEM file at the path they name."""
    certificate = tmp_path / "orderstack.pem"
    certificate.write_bytes(self_signed_pem())
    config = deploy_config()
    lines = [
        line for line in config.splitlines() if line.strip().startswith("# bind ") and "ssl" in line
    ]
    assert len(lines) == 2 and all("/etc/haproxy/certs/orderstack.pem" in x for x in lines)
    for line in lines:
        config = config.replace(line, line.replace("# bind", "bind"))
    path = tmp_path / "haproxy.cfg"
    path.write_text(config.replace("/etc/haproxy/certs/orderstack.pem", str(certificate)))
    haproxy_accepts(path)


def self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orderstack.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_compose_puts_haproxy_in_front_of_both_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    haproxy = services["haproxy"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    # The seed's ports by default (a variable picks each host port and address).
    published = {re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", port) for port in haproxy["ports"]}
    assert published == {"0.0.0.0:8080:8080", "0.0.0.0:3000:3000"}
    # The services publish nothing of their own, so that they can be scaled.
    assert "ports" not in services["order-service"]
    assert "ports" not in services["product-service"]
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert config.count("option httpchk GET /readyz") == 2
    assert "server-template order- 10 order-service:8080" in config
    assert "server-template product- 10 product-service:3000" in config
