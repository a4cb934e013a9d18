"""An app's service logs into its log file, across every task, node and rollout.

One thread per service follows ``docker service logs --follow --details`` (the
manager gathers every task's output from every node, new tasks included) and appends
each line to ``logs/APP/app.log`` tagged with the task's instance name (``v3.1``) by
the daemon, as the docker runtime's followers do: a crew cannot forge ``[system]`` lines
and two tasks never splice. When the stream ends (a manager hiccup) it follows again
from where it stopped.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from crewship.log import get as get_logger
from runtime.logs import LOG_NAME, AppLog, LineTagger, LogWriter

log = get_logger(__name__)

TASK_KEY = b"com.docker.swarm.task.id="
_ROTATE_CHECK = 256 * 1024


def split_details(chunk: bytes) -> tuple[str, bytes]:
    """``com.docker.swarm.node.id=..,..task.id=T <line>`` -> (T, line)."""
    head, _, line = chunk.partition(b" ")
    for item in head.split(b","):
        if item.startswith(TASK_KEY):
            return item[len(TASK_KEY):].decode(errors="replace"), line
    return "", chunk


class ServiceLogFollower:
    def __init__(self, client: docker.DockerClient, service: str, log_dir: Path,
                 name_of: Callable[[str], str], since: float) -> None:
        """``name_of``: a task id -> its instance name (``v3.1``); ``since``: from when."""
        self._client = client
        self._service = service
        self._dir = log_dir
        self._name_of = name_of
        self._stop = threading.Event()
        self._stream: Any = None
        self._since = int(since)
        self._thread = threading.Thread(target=self._run, name=f"swarm-logs-{service}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        since = self._since
        while not self._stop.is_set():
            try:
                self._pump(since)
            except Exception as exc:  # a follower must never kill the daemon
                if self._stop.is_set():
                    return
                log.info("service_logs_interrupted", service=self._service, error=str(exc))
            since = int(time.time())
            self._stop.wait(1.0)

    def _pump(self, since: int) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        applog, writer = AppLog(self._dir), LogWriter(self._dir / LOG_NAME)
        taggers: dict[str, LineTagger] = {}
        checked = 0
        try:
            self._stream = self._client.api.service_logs(
                self._service, details=True, follow=True, stdout=True, stderr=True,
                since=since)
            for chunk in self._stream:
                task, line = split_details(chunk)
                name = self._name_of(task) if task else "swarm"
                tagger = taggers.get(name) or taggers.setdefault(name, LineTagger(name))
                if out := tagger.feed(line):
                    writer.write(out)
                if writer.written - checked >= _ROTATE_CHECK:
                    checked = writer.written
                    applog.rotate_if_needed()
        finally:
            for tagger in taggers.values():
                with contextlib.suppress(OSError):
                    if rest := tagger.flush():
                        writer.write(rest)
            writer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
