"""The registry release images go through so that every swarm node pulls the same bytes.

``CREWSHIP_REGISTRY`` (host:port) names one the operator runs. Without it the swarm
runtime runs its own on the manager: Debian's ``docker-registry`` (the Docker registry
API), started and stopped with the server, listening on ``host:registry_port``, data in
``DATA_DIR/registry`` (its config is written there too). A registry a previous daemon
left running (killed before it could stop it) is stopped by its pid first. Before it
serves, ``garbage-collect`` frees the layers of deleted images (apps:destroy).

Images are pushed as ``REGISTRY/crewship/<server>/<app>:v<N>`` and deployed by digest
(``...@sha256:...``), so a tag moved later never changes what a node runs.

    CrewshipError
    └── RegistryError     the registry could not be started, reached or pushed to
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from crewship.errors import CrewshipError
from crewship.log import get as get_logger
from crewship.reporter import NullReporter, Reporter

log = get_logger(__name__)

START_TIMEOUT = 30.0
MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json"))
INSTALL_HINT = ("install Debian's docker-registry package (apt-get install docker-registry) "
                "or point CREWSHIP_REGISTRY at a registry every node can pull from")


class RegistryError(CrewshipError):
    """The registry could not be started, reached or pushed to."""


def config_text(address: str, data: Path) -> str:
    host, _, port = address.rpartition(":")
    return (f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {data}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {host}:{port}\n")


class Registry:
    def __init__(self, address: str, root: Path | None = None, listen: str = "") -> None:
        """``address``: where nodes pull from (host:port); ``root``: where the local
        registry keeps its config and data (None: an external one); ``listen``: what the
        local one binds (default: ``address``)."""
        self.address = address
        self.root = root
        self.listen = listen or address
        self._proc: asyncio.subprocess.Process | None = None
        host = address.rpartition(":")[0]
        self._scheme = "http" if _loopback(host) else "https"
        self._http = httpx.AsyncClient(timeout=30.0, trust_env=False)

    @property
    def base(self) -> str:
        return f"{self._scheme}://{self.address}"

    async def start(self) -> None:
        """Run the local registry (when this server owns one) and wait until it answers."""
        if self.root is None:
            return
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RegistryError(f"docker-registry is not installed: {INSTALL_HINT}")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(config_text(self.listen, self.root / "data"))
        self._stop_leftover(self.root / "registry.pid")
        if await self._answers():
            raise RegistryError(f"something else already listens on {self.address}: set "
                                "CREWSHIP_REGISTRY_PORT to a free port")
        out = (self.root / "registry.log").open("ab")
        try:
            gc = await asyncio.create_subprocess_exec(
                binary, "garbage-collect", str(config), stdout=out, stderr=out)
            await gc.wait()
            self._proc = await asyncio.create_subprocess_exec(
                binary, "serve", str(config), stdout=out, stderr=out,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
        (self.root / "registry.pid").write_text(str(self._proc.pid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await self._answers():
            if self._proc.returncode is not None or loop.time() > deadline:
                raise RegistryError(f"docker-registry did not start on {self.address} (see "
                                    f"{self.root / 'registry.log'})")
            await asyncio.sleep(0.1)
        log.info("registry_started", address=self.address, pid=self._proc.pid)

    @staticmethod
    def _stop_leftover(pidfile: Path) -> None:
        """A registry a killed daemon left behind: stopped by its pid, if it is one."""
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"docker-registry" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            log.info("registry_leftover_stopped", pid=pid)

    async def _answers(self) -> bool:
        try:
            reply = await self._http.get(f"{self.base}/v2/", timeout=2.0)
        except httpx.HTTPError:
            return False
        return reply.status_code in (200, 401)

    async def publish(self, client: docker.DockerClient, image: str, repo: str, tag: str,
                      report: Reporter | None = None) -> str:
        """Push the local ``image`` as ``repo:tag``; its reference by digest."""
        rep = report or NullReporter()
        name = f"{self.address}/{repo}"
        rep.step(f"Pushing the image to {self.address}")
        try:
            digest = await asyncio.to_thread(_push, client, image, name, tag)
        except docker.errors.DockerException as exc:
            raise RegistryError(f"could not push {name}:{tag}: {exc}") from exc
        rep.info(f"{name}@{digest[:19]}")
        return f"{name}@{digest}"

    async def delete(self, repo: str) -> int:
        """Delete every image of ``repo`` (apps:destroy); their layers go at the next start."""
        try:
            reply = await self._http.get(f"{self.base}/v2/{repo}/tags/list")
            tags = (reply.json().get("tags") or []) if reply.status_code == 200 else []
            removed = 0
            for tag in tags:
                head = await self._http.head(f"{self.base}/v2/{repo}/manifests/{tag}",
                                             headers={"Accept": MANIFEST_TYPES})
                digest = head.headers.get("Docker-Content-Digest")
                if digest:
                    gone = await self._http.delete(f"{self.base}/v2/{repo}/manifests/{digest}")
                    removed += gone.status_code in (200, 202)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("registry_delete_failed", repo=repo, error=str(exc))
            return 0
        return removed

    async def aclose(self) -> None:
        await self._http.aclose()
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self.root is not None:
            (self.root / "registry.pid").unlink(missing_ok=True)
        log.info("registry_stopped", address=self.address)


def _push(client: docker.DockerClient, image: str, name: str, tag: str) -> str:
    client.api.tag(image, name, tag)
    digest = ""
    try:
        for line in client.api.push(name, tag=tag, stream=True, decode=True):
            if line.get("error"):
                raise RegistryError(f"could not push {name}:{tag}: {line['error']}")
            aux: dict[str, Any] = line.get("aux") or {}
            digest = str(aux.get("Digest") or digest)
    finally:  # the image keeps its own tag; the builder's clean-up still finds it
        with contextlib.suppress(docker.errors.DockerException):
            client.api.remove_image(f"{name}:{tag}", noprune=True)
    if not digest.startswith("sha256:"):
        raise RegistryError(f"pushing {name}:{tag} gave no digest")
    return digest


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
