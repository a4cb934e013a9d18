"""The one way crewship reaches the local Docker daemon (the image builder and the docker
runtime both), and the one hint that says what to start when it does not answer."""

from __future__ import annotations

import os

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


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
