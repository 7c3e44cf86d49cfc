"""What ``make compose-test`` reads before Docker is involved (harness/compose_images.py,
harness/compose_test.py): each image variable of docker-compose.yml has the upstream image
as its default and a stand-in directory built on the debootstrapped base, whose entry points
are valid shell; a stand-in's tag changes when its files change; compose durations and host
ports as compose-test reads them. The stack itself runs in ``make compose-test``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import compose_images, compose_test

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = {
    "PYTHON_IMAGE": "python:3.11-slim",
    "MARIADB_IMAGE": "mariadb:10.11",
    "REDIS_IMAGE": "redis:7-alpine",
    "RABBITMQ_IMAGE": "rabbitmq:3-management",
    "HAPROXY_IMAGE": "haproxy:2.6",
    "PROMETHEUS_IMAGE": "prom/prometheus:v2.55.1",
    "GRAFANA_IMAGE": "grafana/grafana:11.3.0",
}


def test_each_image_variable_defaults_to_the_upstream_image() -> None:
    assert compose_images.upstream_defaults() == UPSTREAM


def test_each_stand_in_is_built_on_the_base() -> None:
    directories = {d for d in compose_images.IMAGE_VARIABLES.values() if d is not None}

    assert directories == {p.name for p in compose_images.IMAGES_DIR.iterdir() if p.is_dir()}
    for directory in directories:
        dockerfile = (compose_images.IMAGES_DIR / directory / "Dockerfile").read_text()
        assert f"ARG BASE_IMAGE={compose_images.BASE_IMAGE}" in dockerfile, directory
        assert "FROM ${BASE_IMAGE}" in dockerfile, directory


@pytest.mark.parametrize("script", sorted(compose_images.IMAGES_DIR.glob("*/*.sh")), ids=str)
def test_entry_points_are_valid_shell_and_executable(script: Path) -> None:
    result = subprocess.run(
        ["sh", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, result.stderr
    assert script.stat().st_mode & 0o111, f"{script} is not executable"
    assert script.read_text().startswith("#!/bin/sh\n")


def test_a_stand_in_tag_follows_its_files_and_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    shutil.copytree(compose_images.IMAGES_DIR / "redis", images / "redis")
    monkeypatch.setattr(compose_images, "IMAGES_DIR", images)

    first = compose_images.standin_tag("redis", "sha256:base-1")
    same = compose_images.standin_tag("redis", "sha256:base-1")
    other_base = compose_images.standin_tag("redis", "sha256:base-2")
    (images / "redis" / "Dockerfile").write_text("# changed\n", encoding="utf-8")
    changed = compose_images.standin_tag("redis", "sha256:base-1")

    assert re.fullmatch(r"orderstack-standin/redis:[0-9a-f]{12}", first)
    assert first == same
    assert len({first, other_base, changed}) == 3


def test_durations_as_compose_writes_them() -> None:
    assert compose_test.duration_seconds("20s") == 20
    assert compose_test.duration_seconds("1m30s") == 90
    assert compose_test.duration_seconds("1.5s") == 1.5
    assert compose_test.duration_seconds(None) == 10  # Docker's default


def test_every_host_port_compose_test_sets_is_a_variable_of_the_file() -> None:
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    ports = [
        str(port)
        for service in yaml.safe_load(compose)["services"].values()
        for port in service.get("ports", [])
    ]
    variables = {name for port in ports for name in re.findall(r"\$\{([A-Z_]+)", port)}

    assert set(compose_test.PORT_VARIABLES) == variables - {"HTTP_BIND_ADDRESS"}
    # Only HAProxy's two may be published beyond loopback, and only by that variable.
    for port in ports:
        assert port.startswith(("127.0.0.1:", "${HTTP_BIND_ADDRESS:-0.0.0.0}:")), port
    assert len([p for p in ports if p.startswith("${HTTP_BIND_ADDRESS")]) == 2
