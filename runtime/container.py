"""The crew container: how the docker runtime defines one, and reads one back.

- ``hardening()``: the lock-down every crew container gets (DESIGN.md section 5), also
  the swarm runtime's task template (runtime/swarmspec.py) as far as Swarm allows.
- ``run_container``: ``docker run`` of a release's image for one instance: host
  networking, Docker's restart policy off (the supervisor restarts), the app's memory
  and CPU limits, the runner's secret file mounted read-only, and the labels
  (``crewship.app``, ``.server``, ``.release``, ``.index``, ``.port``, ``.host``,
  ``.instance``) from which ``ref_from`` rebuilds the instance after a daemon restart.
- ``exit_status``: Docker's exit code as the process backend reports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container

from crewship.dockerd import epoch
from runtime.backend import InstanceRef, InstanceSpec

LABEL_APP = "crewship.app"
LABEL_SERVER = "crewship.server"
SECRET_MOUNT = "/run/crewship/secret"  # noqa: S105 (a path, not a password)
# The locked-down container (DESIGN.md section 5): the image's user and HOME (the same
# numbers as builder/image.py, which this floor does not import), the only writable places.
CONTAINER_UID = 10001
CONTAINER_HOME = "/home/crew"
PIDS_LIMIT = 1024
TMPFS_SIZE = "256m"


def hardening() -> dict[str, Any]:
    """``containers.run`` options every crew container gets: the crew's uid, read-only
    root, writable HOME and /tmp (tmpfs), no capabilities, no new privileges, bounded
    pids, no host mounts."""
    owned = f"uid={CONTAINER_UID},gid={CONTAINER_UID}"
    owned_by = f"{CONTAINER_UID}:{CONTAINER_UID}"
    return {
        "user": owned_by,   # the image's crew user, whatever the image says
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={TMPFS_SIZE},mode=1777",  # noqa: S108
                  CONTAINER_HOME: f"rw,nosuid,nodev,size={TMPFS_SIZE},mode=0700,{owned}"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": PIDS_LIMIT,
        "volumes": {},   # never the data dir (the runner's secret file is the one exception)
    }


def exit_status(code: int) -> int:
    """Docker's exit code as the process backend reports it: 137 (SIGKILL) -> -9."""
    return -(code - 128) if 128 < code < 160 else code


def run_container(client: docker.DockerClient, spec: InstanceSpec, ident: str,
                  server: str, secret_file: Path | None) -> Container:
    """Start ``spec`` as the container ``crewship-<ident>`` of this ``server`` (blocking)."""
    labels = {LABEL_APP: spec.app, LABEL_SERVER: server,
              "crewship.release": str(spec.release),
              "crewship.index": str(spec.index), "crewship.port": str(spec.port),
              "crewship.host": spec.host, "crewship.instance": ident}
    limits: dict[str, Any] = {}
    if spec.memory:
        limits["mem_limit"] = spec.memory
        limits["memswap_limit"] = spec.memory  # no swap beyond the limit
    if spec.cpus:
        limits["nano_cpus"] = int(spec.cpus * 1e9)
    command = list(spec.argv)
    if secret_file is not None:
        limits["volumes"] = {str(secret_file): {"bind": SECRET_MOUNT, "mode": "ro"}}
        command += ["--secret-file", SECRET_MOUNT]
    container: Container = client.containers.run(
        spec.image, command=command, name=f"crewship-{ident}", detach=True,
        environment=spec.env, working_dir=str(spec.cwd), labels=labels,
        network_mode="host", restart_policy={"Name": "no"}, stop_signal="SIGTERM",
        **{**hardening(), **limits})  # the secret file is the one host mount
    container.reload()  # State.Pid and StartedAt
    return container


def ref_from(attrs: dict[str, Any], labels: dict[str, str], ident: str) -> InstanceRef:
    """The instance a container of ours runs, from its labels and state."""
    state = attrs.get("State") or {}
    return InstanceRef(id=ident, app=labels[LABEL_APP], release=int(labels["crewship.release"]),
                       index=int(labels["crewship.index"]),
                       host=labels.get("crewship.host", "127.0.0.1"),
                       port=int(labels["crewship.port"]), pid=int(state.get("Pid") or 0) or None,
                       started_at=epoch(str(state.get("StartedAt") or "")))
