"""Backup benchmark (issue #14): crewship's backup archive beside a plain ``tar`` of the
same data dir, and the time from a restore to a live crew answering a kickoff.

One ``crewship server`` (temp data dir, its own envs dir inside it, as on a fresh
install) holds: the classic-crew fixture live with two releases and real kickoffs,
``HISTORY`` more kickoff rows written straight into ``state.db`` (execution history), and
a second app holding ``BLOB_MB`` MB of random data on a branch that is not deployed.

- backup time: ``crewship backup`` against the running server (SQLite online backup, git
  bundles, keys, manifest with checksums) vs ``tar -cf`` of the whole data dir (which
  also copies builds, environments and logs, and is not a consistent SQLite copy while
  the server writes). Interleaved, median of ``RUNS``.
- backup size: the archive vs the tar.
- the longest write transaction on ``state.db`` (a writer thread committing in a loop, as
  the daemon does) while the backup runs vs while the tar runs (which takes no lock):
  what "never blocks pushes or kickoffs for more than a moment" costs.
- restore to live: from the stopped server to the first kickoff answered SUCCESS with
  the app's old token: ``crewship restore`` into a new dir + ``crewship server`` (which
  rebuilds the environment from ``uv.lock``, warm uv cache) vs extracting the tar back
  in place + ``crewship server`` (which only starts the release it finds).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from builder.release import remove_tree
from crewship.store.state import Database, now
from tests.support.crewenv import locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

NAME = "backup"
APP, STORE = "bench-crew", "bench-store"
INPUTS = {"topic": "backups", "audience": "operators"}
RUNS = 3
HISTORY = 5000
BLOB_MB = 20
GOALS = {"time": 1.5, "size": 0.5, "write": 5.0, "restore": 10.0}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def mb(size: int) -> float:
    return round(size / 1024 / 1024, 2)


def git(srv: CrewshipServer, *args: str, cwd: Path) -> None:
    srv.git(srv.admin_key if args[0] == "push" else None, *args, cwd=cwd, timeout=900)


def populate(srv: CrewshipServer, llm: FakeLLM, root: Path) -> str:
    """The app live with two releases and history; returns its token."""
    srv.ssh(srv.admin_key, "apps:create", APP, check=True)
    srv.ssh(srv.admin_key, "config:set", APP, *[f"{k}={v}" for k, v in llm.env().items()],
            check=True)
    token = srv.ssh(srv.admin_key, "tokens", APP, check=True).stdout.strip()
    project = locked_copy("classic_crew", root / "project")
    git(srv, "init", "-q", "-b", "main", cwd=project)
    for message in ("initial", "second"):
        (project / "NOTES.md").write_text(message)
        git(srv, "add", "-A", cwd=project)
        git(srv, "commit", "-q", "-m", message, cwd=project)
        git(srv, "push", "-q", srv.git_url(APP), "main", cwd=project)
    for _ in range(2):
        kickoff(srv, token)
    blob = root / "blob"
    srv.init_repo(blob, {"data.bin": os.urandom(BLOB_MB * 1024 * 1024)}, branch="store")
    git(srv, "push", "-q", srv.git_url(STORE), "store", cwd=blob)
    seed_history(srv.data_dir / "state.db")
    return token


def seed_history(db_path: Path) -> None:
    db = Database(db_path)
    try:
        app_id = db.one("SELECT id FROM apps WHERE name = ?", APP)[0]  # type: ignore[index]
        with db.tx() as c:
            c.executemany("INSERT INTO kickoffs (id, app_id, release, state, inputs_json, "
                          "result, created_at, finished_at, execution_time) VALUES "
                          "(?, ?, 2, 'SUCCESS', ?, ?, ?, ?, 1.5)",
                          [(f"seed-{i:06d}", app_id, '{"topic": "t", "audience": "a"}',
                            "a result paragraph " * 20, now(), now()) for i in range(HISTORY)])
    finally:
        db.close()


def kickoff(srv: CrewshipServer, token: str, timeout: float = 900.0) -> None:
    """POST a kickoff (retrying while nothing runs yet) and wait for SUCCESS."""
    base = f"{srv.http_url}/apps/{APP}"
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.post(f"{base}/kickoff", json={"inputs": INPUTS}, headers=headers, timeout=30)
        if resp.status_code == 200:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no kickoff accepted: {resp.status_code} {resp.text}")
        time.sleep(0.1)
    kickoff_id = resp.json()["kickoff_id"]
    while time.monotonic() < deadline:
        state = httpx.get(f"{base}/status/{kickoff_id}", headers=headers, timeout=30).json()
        if state.get("state") == "SUCCESS":
            return
        if state.get("state") in ("FAILURE", "REVOKED"):
            raise RuntimeError(f"kickoff failed: {state}")
        time.sleep(0.05)
    raise RuntimeError("kickoff did not finish")


def timed(argv: list[str], srv: CrewshipServer | None = None) -> float:
    started = time.perf_counter()
    if srv is not None:
        srv.cli(*argv, timeout=900)
    else:   # GNU tar exits 1 when a file (state.db-wal) changed while it read it
        done = subprocess.run(argv, check=False, capture_output=True, timeout=900)
        if done.returncode > 1:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")
    return time.perf_counter() - started


class Writer:
    """Small write transactions on ``state.db`` in a loop (as the daemon makes them),
    recording the longest commit while each labelled window is open."""

    def __init__(self, db_path: Path) -> None:
        self.db = Database(db_path)
        self.app_id = self.db.one("SELECT id FROM apps WHERE name = ?", APP)[0]  # type: ignore[index]
        self.window: str | None = None
        self.longest: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop)

    def loop(self) -> None:
        while not self.stop.is_set():
            label = self.window
            started = time.perf_counter()
            with self.db.tx() as c:
                c.execute("INSERT INTO kickoffs (id, app_id, state, inputs_json, created_at) "
                          "VALUES ('bench-writer', ?, 'SUCCESS', '{}', ?)", (self.app_id, now()))
                c.execute("DELETE FROM kickoffs WHERE id = 'bench-writer'")
            took = time.perf_counter() - started
            if label is not None and label == self.window:
                self.longest[label] = max(self.longest.get(label, 0.0), took)
            time.sleep(0.002)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.db.close()


def measure_backups(srv: CrewshipServer, root: Path,
                    writer: Writer) -> tuple[list[float], list[float], Path]:
    ours, theirs = [], []
    tarball = root / "plain.tar"
    for _ in range(RUNS):
        writer.window = "crewship"
        ours.append(timed(["backup", "--data-dir", str(srv.data_dir)], srv))
        writer.window = None
        tarball.unlink(missing_ok=True)
        writer.window = "tar"
        theirs.append(timed(["tar", "-cf", str(tarball), "--exclude=./backups", "-C",
                             str(srv.data_dir), "."]))
        writer.window = None
    return ours, theirs, tarball


def restore_to_live(srv: CrewshipServer, token: str, archive: Path, tarball: Path,
                    root: Path) -> tuple[float, float]:
    original = srv.data_dir
    shutil.copy(archive, root / "archive.tar")
    srv.stop()
    started = time.perf_counter()
    srv.data_dir = root / "restored"
    srv.cli("restore", str(root / "archive.tar"), "--data-dir", str(srv.data_dir), timeout=900)
    srv.start()
    kickoff(srv, token)
    ours = time.perf_counter() - started
    srv.stop()
    remove_tree(original)
    started = time.perf_counter()
    original.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(original)], check=True, timeout=900)
    srv.data_dir = original
    srv.start()
    kickoff(srv, token)
    return ours, time.perf_counter() - started


def row(case: str, ours: float, theirs: float, goal: float, runs: int,
        unit: str = "s", **extra: Any) -> dict[str, Any]:
    ratio = ours / theirs
    return {"benchmark": NAME, "case": case, "runs": runs, "crewship_s": round(ours, 4),
            "baseline": "plain tar of the data dir", "baseline_s": round(theirs, 4),
            "ratio": round(ratio, 3), "goal": goal, "met": ratio <= goal, "unit": unit, **extra}


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="crewship-bench-backup-") as tmp:
        root = Path(tmp)
        srv = CrewshipServer(root / "server", env={"CREWSHIP_HEALTH_TIMEOUT": "180"})
        with FakeLLM() as llm:
            srv.start()
            try:
                token = populate(srv, llm, root)
                state = sum(p.stat().st_size for p in srv.data_dir.glob("state.db*"))
                holds = {"state_db_mb": mb(state),
                         "repos_mb": mb(du(srv.data_dir / "repos")),
                         "data_dir_mb": mb(du(srv.data_dir)),
                         "envs_mb": mb(du(srv.data_dir / "envs")), "kickoffs": HISTORY + 2}
                with Writer(srv.data_dir / "state.db") as writer:
                    ours, theirs, tarball = measure_backups(srv, root, writer)
                archive = max((srv.data_dir / "backups").glob("crewship-backup-*.tar"))
                sizes = archive.stat().st_size, tarball.stat().st_size
                restored, untarred = restore_to_live(srv, token, archive, tarball, root)
            finally:
                srv.close()
    what = (f"{holds['state_db_mb']} MB state, {holds['repos_mb']} MB repos; "
            f"data dir {holds['data_dir_mb']} MB")
    return [
        row(f"backup time ({what})", statistics.median(ours), statistics.median(theirs),
            GOALS["time"], RUNS, holds=holds, crewship_all_s=[round(t, 3) for t in ours],
            baseline_all_s=[round(t, 3) for t in theirs]),
        row("backup size", mb(sizes[0]), mb(sizes[1]), GOALS["size"], 1, unit="MB"),
        row("longest state.db write while it runs", writer.longest["crewship"] * 1000,
            writer.longest["tar"] * 1000, GOALS["write"], RUNS, unit="ms"),
        row("restore to first kickoff SUCCESS", restored, untarred, GOALS["restore"], 1),
    ]
