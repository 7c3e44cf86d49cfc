"""HAProxy in front of the replicas: the harness's generated configuration and the one
docker-compose.yml mounts both check /readyz and send a refused request elsewhere."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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
    if shutil.which("haproxy") is None:
        # Checked by HAProxy itself where it is installed; CI must have it (.ci/run).
        if IN_CI:
            pytest.fail("CI needs haproxy to check the generated configuration")
        return
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True)
    assert check.returncode == 0, check.stderr


def test_compose_puts_haproxy_in_front_of_both_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    haproxy = services["haproxy"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert set(haproxy["ports"]) == {"8080:8080", "3000:3000"}
    # The services publish nothing of their own, so that they can be scaled.
    assert "ports" not in services["order-service"]
    assert "ports" not in services["product-service"]
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert config.count("option httpchk GET /readyz") == 2
    assert "server-template order- 10 order-service:8080" in config
    assert "server-template product- 10 product-service:3000" in config
