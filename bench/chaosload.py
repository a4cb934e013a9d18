"""The chaos suite's load (bench/chaos.py): kickoffs posted and followed, and the counts.

``Load`` runs ``concurrency`` worker threads, each posting a kickoff through a
``CrewClient`` (the crew API with the app's token) and following it to its end, until
``total`` were accepted or it is told to stop. A kickoff is *accepted* when ``POST
/kickoff`` answered with an id; *refused* when it answered 429 or 503 or nothing (the
daemon was down); *lost* when, ``SETTLE`` seconds after the load stopped, its state is
not SUCCESS/FAILURE/REVOKED (or the server does not know it). ``Load.row`` sums it up as a
``Row``, one line of the report, with the commonest failure reasons.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.server import CrewshipServer

APP = "chaos"
INPUTS = {"topic": "chaos", "audience": "operators"}
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
SETTLE = 180.0          # seconds the last accepted kickoffs get to finish
POLL = 0.3


@dataclass
class Row:
    scenario: str
    accepted: int
    succeeded: int
    failed: int
    lost: int
    recover_s: float | None = None
    refused: int = 0
    seconds: float = 0.0
    notes: str = ""

    def line(self) -> str:
        recover = "-" if self.recover_s is None else f"{self.recover_s:.1f}s"
        return (f"{self.scenario:<44} accepted {self.accepted:>5}  succeeded {self.succeeded:>5}  "
                f"failed {self.failed:>4}  lost {self.lost:>3}  recover {recover:>6}  "
                f"(refused {self.refused}, {self.seconds:.0f}s){'  ' + self.notes if self.notes else ''}")


class CrewClient:
    """The crew API as a load generator sees it (one client per thread)."""

    def __init__(self, srv: CrewshipServer, token: str) -> None:
        self.base = f"{srv.http_url}/apps/{APP}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def kickoff(self, http: httpx.Client) -> tuple[str | None, int]:
        """(kickoff id or None, HTTP status or 0 when the daemon did not answer)."""
        try:
            resp = http.post(f"{self.base}/kickoff", json={"inputs": INPUTS},
                             headers=self.headers)
        except httpx.HTTPError:
            return None, 0
        if resp.status_code == 200:
            return str(resp.json()["kickoff_id"]), 200
        return None, resp.status_code

    def state(self, http: httpx.Client, kickoff_id: str) -> str | None:
        return self.status(http, kickoff_id).get("state")

    def status(self, http: httpx.Client, kickoff_id: str) -> dict[str, Any]:
        """The kickoff's status body; ``{"state": "NOT FOUND"}``; ``{}`` if no answer."""
        try:
            resp = http.get(f"{self.base}/status/{kickoff_id}", headers=self.headers)
        except httpx.HTTPError:
            return {}
        if resp.status_code == 404:
            return {"state": "NOT FOUND"}
        return dict(resp.json()) if resp.status_code == 200 else {}


class Load:
    """``concurrency`` workers, each posting a kickoff and waiting for its end, until
    ``total`` were accepted or ``stop`` is set; ids and final states are recorded."""

    def __init__(self, client: CrewClient, concurrency: int, total: int | None = None) -> None:
        self.client = client
        self.concurrency = concurrency
        self.total = total
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted: list[str] = []
        self.states: dict[str, str] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self.posting = 0
        self.threads: list[threading.Thread] = []

    def start(self) -> Load:
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f"load-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _take_slot(self) -> bool:
        """Room for one more kickoff: reserved at once, so the total is never exceeded."""
        with self.lock:
            if self.stop.is_set():
                return False
            if self.total is not None and len(self.accepted) + self.posting >= self.total:
                return False
            self.posting += 1
            return True

    def _work(self) -> None:
        with httpx.Client(timeout=30, trust_env=False) as http:
            while self._take_slot():
                kickoff_id, status = self.client.kickoff(http)
                with self.lock:
                    self.posting -= 1
                    if kickoff_id is not None:
                        self.accepted.append(kickoff_id)
                    else:
                        self.refused += 1
                if kickoff_id is None:
                    time.sleep(0.5 if status in (0, 429, 503) else 0.1)
                    continue
                self._follow(http, kickoff_id, time.monotonic() + SETTLE)

    def _follow(self, http: httpx.Client, kickoff_id: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            status = self.client.status(http, kickoff_id)
            state = status.get("state")
            if state in (*TERMINAL, "NOT FOUND"):
                with self.lock:
                    self.states[kickoff_id] = str(state)
                    if state != "SUCCESS":
                        self.errors[_reason(str(status.get("error") or state))] += 1
                return
            time.sleep(POLL)

    def finish(self, timeout: float = SETTLE + 60) -> None:
        """Stop posting; wait for every worker to see its last kickoff end (or give up)."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with httpx.Client(timeout=30, trust_env=False) as http:  # anything still open
            for kickoff_id in self.accepted:
                if kickoff_id not in self.states:
                    self._follow(http, kickoff_id, time.monotonic() + 5)

    def row(self, name: str, started: float, recover_s: float | None = None,
            notes: str = "") -> Row:
        finals = [self.states.get(k) for k in self.accepted]
        reasons = "; ".join(f"{n}x {why}" for why, n in self.errors.most_common(3))
        notes = f"{notes}  failed: {reasons}" if reasons else notes
        return Row(name, len(self.accepted), finals.count("SUCCESS"),
                   finals.count("FAILURE") + finals.count("REVOKED"),
                   sum(1 for s in finals if s not in TERMINAL), recover_s, self.refused,
                   time.monotonic() - started, notes)


def _reason(error: str) -> str:
    """A failure's reason without the instance id, so equal reasons count together."""
    return re.sub(r"instance \S+", "instance", error)[:80]
