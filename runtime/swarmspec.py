"""One app as a Swarm service: its spec from an ``InstanceSpec``, and its tasks as crewship
reads them. Pure: no Docker calls (runtime/swarm.py makes them).

- Ports: host networking (no overlay or routing mesh needed) and one port per task,
  ``CREWSHIP_PORT_BASE + slot`` (the slot from Swarm's ``{{.Task.Slot}}`` template). Every
  rollout picks a new base, so during a ``start-first`` update the new task of slot 1
  never wants the port the old task of slot 1 still holds; the daemon knows each task's
  port from its spec (base) and slot.
- The runner channel's secret is a Docker secret per rollout (``/run/secrets/crewship``,
  readable by the crew's uid only, delivered by Swarm only to nodes running the task),
  never in the command, the environment or ``docker inspect``'s Env.
- The container health check is the runner's own: a signed ``GET /healthz`` that must
  answer 200 with the runner's proof (``HEALTH_SCRIPT``, using the release's own copy of
  ``crewship_runner.signing``), so Swarm only counts a task running once it is healthy;
  and the port's listening socket must belong to the task's own PID 1 (the runner, exec'd
  by the launch line), so a task being replaced on the same port cannot answer for it.
- Hardening as the docker runtime's (runtime/container.py ``hardening``): the crew's uid,
  read-only root, tmpfs /tmp and HOME, no capabilities, no new privileges, a pids limit,
  no host mounts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from crewship.dockerd import epoch
from runtime.backend import InstanceSpec, instance_name
from runtime.container import CONTAINER_UID, PIDS_LIMIT

LABEL_APP = "crewship.app"
LABEL_SERVER = "crewship.server"
LABEL_RELEASE = "crewship.release"
LABEL_GENERATION = "crewship.generation"
LABEL_PORT_BASE = "crewship.port_base"
SECRET_FILE = "crewship"  # noqa: S105 (a file name, not a password)
SECRET_PATH = f"/run/secrets/{SECRET_FILE}"
# Checked every second (a new task is counted running within a second of being healthy);
# a loaded node must not have a busy but healthy task killed, so only ten failures in a
# row, each allowed 10 s, make it unhealthy (a runner that dies ends its task at once).
HEALTH_INTERVAL = 1.0
HEALTH_TIMEOUT = 10.0
HEALTH_RETRIES = 10
TMPFS_BYTES = 256 * 1024 * 1024
# A service's tmpfs cannot be given an owner (Docker 20.10), and one mounted over a directory
# the image has (/home/crew) keeps that directory's root 0755: HOME is a fresh 1777 tmpfs.
TASK_HOME = "/crewship-home"
NS = 1_000_000_000
# Tasks that hold (or are about to hold) their port and answer the channel.
LIVE_STATES = ("running",)
STARTING_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting")
# What a rollout's update is doing (the service's UpdateStatus.State).
UPDATE_DONE = "completed"
UPDATE_FAILED = ("paused", "rollback_started", "rollback_paused", "rollback_completed")

# Each task's port: the rollout's base, SLOT_SPAN ports per slot, and a place in its slot's
# span from the task's own id, so two tasks of one slot (a replacement Swarm starts while
# the old one still drains) almost never want the same port; the daemon computes the same.
SLOT_SPAN = 100
PORT_LINES = ("import zlib\n"
              "e = os.environ\n"
              f"port = (int(e['CREWSHIP_PORT_BASE']) + int(e['CREWSHIP_SLOT']) * {SLOT_SPAN}\n"
              f"        + zlib.crc32(e['CREWSHIP_TASK'].encode()) % {SLOT_SPAN})\n")
HEALTH_SCRIPT = ("""\
import hmac, http.client, importlib, os, sys
runner = sys.argv[1].rstrip('/')
sys.path.insert(0, os.path.dirname(runner))
name = os.path.basename(runner)  # the package, or an older image's one-file runner
s = importlib.import_module(name[:-3] if name.endswith('.py') else name + '.signing')
key = open(sys.argv[2], 'rb').read().strip()
PORT_LINEShost = os.environ.get('CREWSHIP_BIND', '127.0.0.1')
host = '127.0.0.1' if host == '0.0.0.0' else host
# Only our own runner counts: the port's listening socket must be one the task's PID 1
# holds. Another task of the same rollout (same secret; a replaced task still draining on
# this slot's port) would otherwise answer for a runner that is still loading.
want = set()
for line in open('/proc/net/tcp').read().splitlines()[1:]:
    f = line.split()
    if f[3] == '0A' and int(f[1].rsplit(':', 1)[1], 16) == port:
        want.add('socket:[%s]' % f[9])
fds = set()
for fd in os.listdir('/proc/%s/fd' % sys.argv[3]):
    try:
        fds.add(os.readlink('/proc/%s/fd/%s' % (sys.argv[3], fd)))
    except OSError:
        pass
if not want & fds:
    sys.exit(1)
sig = s.sign(key, 'GET', '/healthz', b'')
c = http.client.HTTPConnection(host, port, timeout=8)
c.request('GET', '/healthz', headers={s.SIGNATURE_HEADER: sig})
r = c.getresponse()
body = r.read()
proof = (r.getheader(s.PROOF_HEADER) or '').encode()
good = hmac.compare_digest(proof, s.response_mac(key, sig, r.status, body).encode())
sys.exit(0 if r.status == 200 and good else 1)
""").replace("PORT_LINES", PORT_LINES)
# The runner's own argv, then the task's bind address, port, tag and secret file (argparse
# keeps the last of a repeated option, so these win over the spec's placeholders); exec'd,
# so the runner is the task's PID 1 (the health check relies on it).
LAUNCH = f"""\
import os, sys, zlib
e = os.environ
port = (int(e['CREWSHIP_PORT_BASE']) + int(e['CREWSHIP_SLOT']) * {SLOT_SPAN}
        + zlib.crc32(e['CREWSHIP_TASK'].encode()) % {SLOT_SPAN})
argv = sys.argv[1:] + ['--host', e['CREWSHIP_BIND'], '--port', str(port), '--instance',
                       e['CREWSHIP_RELEASE'] + '.' + e['CREWSHIP_SLOT'], '--secret-file', {SECRET_PATH!r}]
os.execv(argv[0], argv)
"""


def service_name(server: str, app: str) -> str:
    """``crewship-<server>-<app>``: whose it is at a glance (at most 57 characters)."""
    return f"crewship-{server[:8]}-{app}"


@dataclass(frozen=True)
class Rollout:
    """What one deploy rolls out beside the spec: its id, ports, secret and image."""

    generation: str
    port_base: int
    secret_id: str
    secret_name: str
    image: str        # registry reference by digest: every node pulls the same bytes


@dataclass(frozen=True)
class Timings:
    health_timeout: float
    drain_timeout: float
    restart_delay: float


def task_template(spec: InstanceSpec, rollout: Rollout, server: str, bind: str,
                  timings: Timings) -> dict[str, Any]:
    labels = {LABEL_APP: spec.app, LABEL_SERVER: server, LABEL_RELEASE: str(spec.release),
              LABEL_GENERATION: rollout.generation, LABEL_PORT_BASE: str(rollout.port_base)}
    env = {**spec.env, "CREWSHIP_PORT_BASE": str(rollout.port_base), "CREWSHIP_BIND": bind,
           "CREWSHIP_RELEASE": f"v{spec.release}", "CREWSHIP_SLOT": "{{.Task.Slot}}",
           "CREWSHIP_TASK": "{{.Task.ID}}",
           "HOME": TASK_HOME}
    python, runner = spec.argv[0], spec.argv[1]
    owner = str(CONTAINER_UID)
    container = {
        "Image": rollout.image, "Labels": labels,
        "Command": [python, "-c", LAUNCH, *spec.argv],
        "Env": [f"{k}={v}" for k, v in env.items()], "Dir": str(spec.cwd),
        "User": f"{owner}:{owner}", "ReadOnly": True, "CapabilityDrop": ["ALL"],
        "Privileges": {"NoNewPrivileges": True},
        "Mounts": [{"Type": "tmpfs", "Target": target,
                    "TmpfsOptions": {"SizeBytes": TMPFS_BYTES, "Mode": 0o1777}}
                   for target in ("/tmp", TASK_HOME)],  # noqa: S108
        "StopSignal": "SIGTERM", "StopGracePeriod": int(timings.drain_timeout * NS),
        "Healthcheck": {"Test": ["CMD", python, "-c", HEALTH_SCRIPT, runner, SECRET_PATH, "1"],
                        "Interval": int(HEALTH_INTERVAL * NS),
                        "Timeout": int(HEALTH_TIMEOUT * NS),
                        "Retries": HEALTH_RETRIES,
                        "StartPeriod": int(timings.health_timeout * NS)},
        "Secrets": [{"File": {"Name": SECRET_FILE, "UID": owner, "GID": owner, "Mode": 0o400},
                     "SecretID": rollout.secret_id, "SecretName": rollout.secret_name}],
    }
    limits: dict[str, Any] = {"Pids": PIDS_LIMIT}
    if spec.memory:
        limits["MemoryBytes"] = spec.memory
    if spec.cpus:
        limits["NanoCPUs"] = int(spec.cpus * NS)
    return {"ContainerSpec": container, "Resources": {"Limits": limits},
            "RestartPolicy": {"Condition": "any", "Delay": int(timings.restart_delay * NS),
                              "MaxAttempts": 0},
            "Placement": {"Constraints": list(spec.placement)},
            "Networks": [{"Target": "host"}]}


def service_options(spec: InstanceSpec, rollout: Rollout, server: str,
                    scale: int) -> dict[str, Any]:
    """``create_service``/``update_service`` keywords beside the task template."""
    return {
        "labels": {LABEL_APP: spec.app, LABEL_SERVER: server, LABEL_RELEASE: str(spec.release),
                   LABEL_GENERATION: rollout.generation},
        "mode": {"Replicated": {"Replicas": scale}},
        "update_config": {"Parallelism": 1, "Delay": 0, "Order": "start-first",
                          "FailureAction": "rollback", "Monitor": NS, "MaxFailureRatio": 0},
        "rollback_config": {"Parallelism": 1, "Delay": 0, "Order": "start-first",
                            "FailureAction": "pause", "Monitor": NS, "MaxFailureRatio": 0},
    }


@dataclass(frozen=True)
class Task:
    """One Swarm task of an app's service, as crewship needs it."""

    id: str
    app: str
    slot: int
    node_id: str
    state: str            # Swarm's actual state: running, failed, shutdown, ...
    desired: str          # running, shutdown
    release: int
    generation: str
    port: int
    secret_name: str
    changed_at: float     # wall-clock time of the last state change
    error: str
    exit_code: int | None
    container_id: str

    @property
    def name(self) -> str:
        return instance_name(self.release, self.slot)

    @property
    def instance_id(self) -> str:
        """``app-v3.1-<task>``: what kickoffs record (dispatch reads the release from it)."""
        return f"{self.app}-{self.name}-{self.id[:10]}"

    @property
    def serving(self) -> bool:
        """Healthy (Swarm counts a task running only once its health check passed)."""
        return self.state in LIVE_STATES and self.desired == "running"

    @property
    def crashed(self) -> bool:
        """Ended on its own (killed, non-zero exit, unhealthy), not stopped by a rollout."""
        return self.state in ("failed", "rejected") or (
            self.state == "complete" and self.desired == "running")


def parse_task(raw: dict[str, Any]) -> Task | None:
    """A task of one of our services, or None (not ours, or not yet placed in a slot)."""
    spec = (raw.get("Spec") or {}).get("ContainerSpec") or {}
    labels = spec.get("Labels") or {}
    status = raw.get("Status") or {}
    if LABEL_APP not in labels or not raw.get("Slot"):
        return None
    secrets = spec.get("Secrets") or [{}]
    container = status.get("ContainerStatus") or {}
    code = container.get("ExitCode")
    try:
        release, base = int(labels[LABEL_RELEASE]), int(labels[LABEL_PORT_BASE])
    except (KeyError, ValueError):
        return None
    return Task(id=str(raw["ID"]), app=labels[LABEL_APP], slot=int(raw["Slot"]),
                node_id=str(raw.get("NodeID") or ""), state=str(status.get("State", "")),
                desired=str(raw.get("DesiredState", "")), release=release,
                generation=labels.get(LABEL_GENERATION, ""),
                port=task_port(base, int(raw["Slot"]), str(raw["ID"])),
                secret_name=str(secrets[0].get("SecretName", "")),
                changed_at=epoch(str(status.get("Timestamp") or "")),
                error=str(status.get("Err") or ""), exit_code=int(code) if code is not None
                else None, container_id=str(container.get("ContainerID") or ""))


def task_port(base: int, slot: int, task_id: str) -> int:
    """The port a task's runner binds (``LAUNCH`` computes the same inside the task)."""
    return base + slot * SLOT_SPAN + zlib.crc32(task_id.encode()) % SLOT_SPAN
