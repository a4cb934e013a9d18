"""DockerBackend: each instance is a container of the release's image.

- ``start``: ``docker run`` of ``spec.image`` with ``spec.argv`` as the command, the
  spec's environment, host networking (the runner listens on ``spec.host:spec.port``,
  127.0.0.1), Docker's restart policy off (the supervisor restarts), the app's memory and
  CPU limits, and labels ``crewship.app``, ``crewship.release``, ``crewship.index``,
  ``crewship.port``, ``crewship.host`` so a restarted daemon can adopt it; locked down
  by ``hardening()`` (read-only root, tmpfs HOME and /tmp, no capabilities, no new
  privileges, a pids limit, no host mounts). The container's definition (options,
  labels, reading them back) is runtime/container.py.
- A follower thread per container appends its output to ``logs/NAME/app.log``, whole
  lines only (a line's buffer is bounded by ``runtime.logs.MAX_LINE``), each stamped
  with the instance's tag by the daemon, so instances never splice and a crew cannot
  forge ``[system]`` lines; it reopens the file after a rotation.
- ``stop``: SIGTERM, ``grace`` seconds, SIGKILL; idempotent. ``wait``: the exit status
  (a signal death, status 128+N, reads as -N like a process). An exited container is
  removed once its output is in the log.
- ``list``: running labelled containers, adopted (followed from now on, not replayed);
  only this server's (``crewship.server``, a hash of the data dir: one dockerd may serve
  several servers), so a restarted daemon never stops or adopts another's containers.
- The runner channel's secret (``spec.secret``) is a file in ``DATA_DIR/run/secrets``
  (directory 0700) bind-mounted read-only at ``/run/crewship/secret`` and named by
  ``--secret-file``: not in the command, the environment or ``docker inspect``'s Env.
  (The swarm runtime hands it over as a Docker secret: runtime/swarmspec.py.)

Short SDK calls go through ``asyncio.to_thread``; the calls that block for a
container's lifetime (waiting, following output) run on the backend's own threads, so
they never starve the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from crewship import dockerd
from crewship.config import Layout
from crewship.dockerd import short
from crewship.log import get as get_logger
from runtime.backend import STATUS_UNKNOWN, BackendError, InstanceRef, InstanceSpec
from runtime.container import (
    LABEL_APP,
    LABEL_SERVER,
    exit_status,
    ref_from,
    run_container,
)
from runtime.logs import LOG_NAME, AppLog, LineTagger, LogWriter

log = get_logger(__name__)

_KILL_WAIT = 10.0
_ROTATE_CHECK = 256 * 1024  # bytes a follower writes between two checks for rotation
def connect(timeout: float = 60.0) -> docker.DockerClient:
    """A client of the local Docker daemon, or ``BackendError`` saying what to start."""
    return dockerd.connect(timeout, BackendError)


@dataclass
class _Tracked:
    ref: InstanceRef
    container_id: str
    exited: asyncio.Future[int] | None = None
    watcher: asyncio.Task[None] | None = None
    follower: threading.Thread | None = None
    stream: Any = None
    streamed: threading.Event = field(default_factory=threading.Event)


class DockerBackend:
    """Instances as containers; see the module docstring."""

    def __init__(self, layout: Layout, client: docker.DockerClient | None = None) -> None:
        self._layout = layout
        self._client = client
        self._tracked: dict[str, _Tracked] = {}
        self._statuses: OrderedDict[str, int] = OrderedDict()
        self._closed = False
        self._exit_reasons: dict[str, str] = {}   # instance id -> "memory_exceeded"
        # whose containers these are: one dockerd may serve several crewship servers
        self._server = dockerd.server_id(layout.root)

    async def _docker(self) -> docker.DockerClient:
        if self._client is None:
            self._client = await asyncio.to_thread(connect)
        return self._client

    # -- start -------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> InstanceRef:
        if not spec.image:
            raise BackendError(f"cannot start {spec.name}: the release has no image (it was "
                               "built for the process runtime): push again to build one")
        if not spec.argv:
            raise BackendError(f"cannot start {spec.name}: empty command")
        client = await self._docker()
        ident = f"{spec.app}-{spec.name}-{secrets.token_hex(3)}"
        try:
            container = await asyncio.to_thread(run_container, client, spec, ident, self._server,
                                                self._secret_file(ident, spec.secret))
        except docker.errors.ImageNotFound as exc:
            self._secret_path(ident).unlink(missing_ok=True)
            raise BackendError(f"cannot start {spec.name}: image {spec.image[:19]} is gone "
                               "(pruned?): push again to rebuild it") from exc
        except docker.errors.DockerException as exc:
            self._secret_path(ident).unlink(missing_ok=True)
            raise BackendError(f"cannot start {spec.name}: {short(exc)}") from exc
        ref = ref_from(container.attrs, container.labels, ident)
        tracked = _Tracked(ref, container.id or ident)
        self._tracked[ident] = tracked
        self._follow(tracked, since=None)
        log.info("instance_started", app=spec.app, instance=ident, container=container.short_id)
        return ref

    def _secret_path(self, ident: str) -> Path:
        return self._layout.run / "secrets" / ident

    def _secret_file(self, ident: str, secret: str) -> Path | None:
        """The secret as a file to mount: readable inside the container whatever its uid,
        unreachable on the host (its directory is 0700)."""
        if not secret:
            return None
        path = self._secret_path(ident)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
        try:
            os.write(fd, secret.encode())
        finally:
            os.close(fd)
        return path

    # -- output --------------------------------------------------------------

    def _follow(self, tracked: _Tracked, since: int | None) -> None:
        if tracked.follower is not None or self._client is None:
            return
        thread = threading.Thread(target=self._pump, args=(self._client, tracked, since),
                                  name=f"docker-logs-{tracked.ref.id}", daemon=True)
        tracked.follower = thread
        thread.start()

    def _pump(self, client: docker.DockerClient, tracked: _Tracked, since: int | None) -> None:
        """Append whole lines of the container's output to the app's log (a thread)."""
        log_dir = self._layout.app_logs(tracked.ref.app)
        applog = AppLog(log_dir)
        writer = LogWriter(log_dir / LOG_NAME)
        tagger = LineTagger(tracked.ref.name)  # the daemon tags: no forged [system] lines
        checked = 0
        try:
            stream = client.api.logs(tracked.container_id, stdout=True, stderr=True,
                                     stream=True, follow=True, since=since)
            tracked.stream = stream
            for chunk in stream:
                if out := tagger.feed(chunk):
                    writer.write(out)
                if writer.written - checked >= _ROTATE_CHECK:
                    checked = writer.written
                    applog.rotate_if_needed()
        except Exception as exc:  # a follower must never kill the daemon
            if not self._closed:
                log.warning("instance_logs_failed", instance=tracked.ref.id, error=str(exc))
        finally:
            with contextlib.suppress(OSError):
                if rest := tagger.flush():
                    writer.write(rest)
            writer.close()
            tracked.streamed.set()

    # -- stop and wait -----------------------------------------------------

    async def stop(self, ref: InstanceRef, grace: float) -> None:
        tracked = await self._find(ref)
        if tracked is None:
            return  # gone and forgotten already: stopping is idempotent
        exited = self._exit_future(tracked)
        if exited.done():
            return
        await self._kill(tracked, "SIGTERM")
        try:
            await asyncio.wait_for(asyncio.shield(exited), grace)
            return
        except TimeoutError:
            pass
        log.info("instance_killed", app=ref.app, instance=ref.id, grace=grace)
        await self._kill(tracked, "SIGKILL")
        try:
            await asyncio.wait_for(asyncio.shield(exited), _KILL_WAIT)
        except TimeoutError:
            raise BackendError(f"{ref.name} (container {tracked.container_id[:12]}) "
                               "survived SIGKILL") from None

    async def _kill(self, tracked: _Tracked, signal: str) -> None:
        client = await self._docker()
        try:
            await asyncio.to_thread(client.api.kill, tracked.container_id, signal)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: not running any more
                raise BackendError(f"cannot signal {tracked.ref.name}: {short(exc)}") from exc
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot signal {tracked.ref.name}: {short(exc)}") from exc

    async def wait(self, ref: InstanceRef) -> int:
        tracked = await self._find(ref)
        if tracked is None:
            if ref.id in self._statuses:
                return self._statuses[ref.id]
            raise BackendError(f"unknown instance {ref.id}")
        return await asyncio.shield(self._exit_future(tracked))

    async def _find(self, ref: InstanceRef) -> _Tracked | None:
        tracked = self._tracked.get(ref.id)
        if tracked is None and ref.id not in self._statuses:
            client = await self._docker()
            with contextlib.suppress(docker.errors.DockerException):
                attrs = await asyncio.to_thread(client.api.inspect_container,
                                                f"crewship-{ref.id}")
                tracked = self._tracked.setdefault(ref.id, _Tracked(ref, str(attrs["Id"])))
        return tracked

    def _exit_future(self, tracked: _Tracked) -> asyncio.Future[int]:
        if tracked.exited is None:
            tracked.exited = asyncio.get_running_loop().create_future()
            tracked.watcher = asyncio.create_task(self._watch(tracked),
                                                  name=f"watch-{tracked.ref.id}")
        return tracked.exited

    async def _watch(self, tracked: _Tracked) -> None:
        client = await self._docker()
        status = await _in_thread(_wait_exit, client, tracked.container_id)
        # the output is in the log before anyone hears of the exit (health-check output)
        await asyncio.to_thread(tracked.streamed.wait, 5.0)
        if await asyncio.to_thread(_oom_killed, client, tracked.container_id):
            self._exit_reasons[tracked.ref.id] = "memory_exceeded"
        with contextlib.suppress(docker.errors.DockerException):
            await asyncio.to_thread(client.api.remove_container, tracked.container_id,
                                    force=True)
        self._secret_path(tracked.ref.id).unlink(missing_ok=True)
        self._tracked.pop(tracked.ref.id, None)
        self._statuses[tracked.ref.id] = status
        while len(self._statuses) > 1024:
            self._statuses.popitem(last=False)
        log.info("instance_exited", app=tracked.ref.app, instance=tracked.ref.id, status=status)
        assert tracked.exited is not None
        if not tracked.exited.done():
            tracked.exited.set_result(status)

    def exit_reason(self, ref: InstanceRef) -> str | None:
        """``memory_exceeded`` when the kernel killed the container over its memory limit."""
        return self._exit_reasons.pop(ref.id, None)

    def client(self) -> docker.DockerClient | None:
        """The connection, for the usage sampler (runtime/usage.py); None before the first."""
        return self._client

    # -- list and close ----------------------------------------------------

    async def list(self, app: str | None = None) -> list[InstanceRef]:
        client = await self._docker()
        label = f"{LABEL_APP}={app}" if app is not None else LABEL_APP
        try:
            found = await asyncio.to_thread(client.api.containers, all=True,
                                            filters={"label": label})
        except docker.errors.DockerException as exc:
            raise BackendError(f"cannot list containers: {short(exc)}") from exc
        refs = []
        for summary in found:
            labels = summary.get("Labels") or {}
            if not self._ours(labels, everything=app is None):
                continue
            ident = labels.get("crewship.instance", "")
            if summary.get("State") != "running":
                if ident not in self._tracked:  # exited while no daemon watched it
                    with contextlib.suppress(docker.errors.DockerException):
                        await asyncio.to_thread(client.api.remove_container, summary["Id"],
                                                force=True)
                continue
            try:
                attrs = await asyncio.to_thread(client.api.inspect_container, summary["Id"])
            except docker.errors.NotFound:
                continue
            ref = ref_from(attrs, labels, ident)
            if ident not in self._tracked:
                tracked = self._tracked[ident] = _Tracked(ref, str(summary["Id"]))
                self._follow(tracked, since=int(time.time()))
            refs.append(self._tracked[ident].ref)
        return refs

    def _ours(self, labels: dict[str, str], *, everything: bool) -> bool:
        """A container this server started: its server label, or (asked about one app)
        none at all, as containers started before the label existed have."""
        owner = labels.get(LABEL_SERVER)
        if owner is None:
            return not everything  # never stop another server's unlabelled container
        return owner == self._server

    async def aclose(self) -> None:
        """Stop watching and following; the containers keep running for the next daemon."""
        self._closed = True
        tasks = [t.watcher for t in self._tracked.values() if t.watcher is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for tracked in self._tracked.values():
            if tracked.exited is not None and not tracked.exited.done():
                tracked.exited.cancel()
            if tracked.stream is not None:
                with contextlib.suppress(Exception):
                    tracked.stream.close()
        self._tracked.clear()
        if self._client is not None:
            await asyncio.to_thread(self._client.close)  # ends the blocked waits too
            self._client = None


async def _in_thread(fn: Callable[..., int], *args: Any) -> int:
    """``fn(*args)`` on a daemon thread of its own: it may block for a container's whole
    life, which must neither starve the default executor nor hold up the daemon's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    def settle(result: int | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result if result is not None else STATUS_UNKNOWN)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="docker-wait", daemon=True).start()
    return await future


def _wait_exit(client: docker.DockerClient, container_id: str) -> int:
    """Block until the container exits (a thread); its status, or STATUS_UNKNOWN."""
    while True:
        try:
            result = client.api.wait(container_id, timeout=None)
            return exit_status(int(result.get("StatusCode", STATUS_UNKNOWN)))
        except docker.errors.NotFound:
            return STATUS_UNKNOWN
        except Exception:  # connection hiccup: look again, then wait again
            try:
                state = client.api.inspect_container(container_id)["State"]
            except docker.errors.NotFound:
                return STATUS_UNKNOWN
            except Exception:  # the client was closed: nobody waits any more
                return STATUS_UNKNOWN
            if not state.get("Running"):
                return exit_status(int(state.get("ExitCode", STATUS_UNKNOWN)))
            time.sleep(1.0)


def _oom_killed(client: docker.DockerClient, container_id: str) -> bool:
    try:
        state = client.api.inspect_container(container_id)["State"]
    except Exception:  # gone already, or the client was closed
        return False
    return bool(state.get("OOMKilled"))


