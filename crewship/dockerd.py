"""The one way crewship reaches the local Docker daemon (the image builder and the docker
runtime both), and the one hint that says what to start when it does not answer; the
one reading of Docker's answers (an error's one line, a timestamp) for every runtime."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime
from pathlib import Path

import docker
import docker.errors

from crewship.errors import CrewshipError

DOCKERD_HINT = ("start Docker (`systemctl start docker`, or `dockerd --bridge=none "
                "--iptables=false --ip-masq=false &` on a machine without a bridge), "
                "or run the server with --runtime process")


def connect(timeout: float, error: type[CrewshipError]) -> docker.DockerClient:
    """A client of the local Docker daemon, or ``error`` saying where it looked and what to do."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        raise error(f"Docker is not reachable at {docker_host()} ({exc}): {DOCKERD_HINT}") from exc
    return client


def server_id(root: Path) -> str:
    """This server's name on a shared Docker daemon (its data dir's hash): what labels its
    containers, services and secrets, and names its registry repositories."""
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def short(exc: Exception) -> str:
    """The first line of a Docker error (its explanation when it has one), at most 300
    characters."""
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def epoch(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds -> ``time.time()`` seconds."""
    try:
        head, _, frac = stamp.rstrip("Z").partition(".")
        moment = datetime.fromisoformat(head + "+00:00")
    except ValueError:
        return time.time()
    digits = "".join(c for c in frac if c.isdigit())[:6]
    return moment.timestamp() + float(f"0.{digits or 0}")
