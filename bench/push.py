"""Push benchmark: crewship's SSH front door against OpenSSH's sshd + git-receive-pack.

Both servers run in the same process tree and are measured in the same run, pushes
interleaved, each to a fresh bare repo (an app created beforehand on the crewship
side, untimed) so both do the same work. Pushes go to a branch that is not deployed,
so crewship's time is transport + its post-receive hand-off, not a build.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sshd import OpenSSHServer
from tests.support.server import GIT_IDENTITY, CrewshipServer

NAME = "push"
BRANCH = "bench"


@dataclass(frozen=True)
class Case:
    name: str
    runs: int
    goal: float  # crewship time / OpenSSH time must be at most this
    files: Mapping[str, bytes]


def cases(small_runs: int, large_runs: int, large_mb: int) -> list[Case]:
    small = {"README.md": b"# bench\n", "src/app/main.py": b"print('hello')\n" * 20,
             "pyproject.toml": b"[project]\nname = 'bench'\nversion = '0.1.0'\n"}
    large = {"data.bin": os.urandom(large_mb * 1024 * 1024), **small}
    return [Case("small push (3 files)", small_runs, 0.5, small),
            Case(f"{large_mb} MB push (random data)", large_runs, 1.0, large)]


def git(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=dict(env or client_env()),
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def client_env(ssh_command: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_IDENTITY)
    if ssh_command:
        env["GIT_SSH_COMMAND"] = ssh_command
    return env


def make_source(path: Path, files: Mapping[str, bytes]) -> None:
    path.mkdir(parents=True)
    git("init", "-q", "-b", BRANCH, cwd=path)
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "bench", cwd=path)
    git("gc", "-q", cwd=path)  # the same packed source for every push


def timed_push(src: Path, url: str, env: Mapping[str, str]) -> float:
    started = time.perf_counter()
    git("push", "-q", url, f"HEAD:refs/heads/{BRANCH}", cwd=src, env=env)
    return time.perf_counter() - started


class Bench:
    def __init__(self, root: Path, crewship: CrewshipServer, sshd: OpenSSHServer) -> None:
        self.root = root
        self.crewship = crewship
        self.sshd = sshd
        self.crewship_env = crewship.git_env(crewship.admin_key)
        self.sshd_env = client_env(sshd.git_ssh_command())
        self.count = 0

    def push_crewship(self, src: Path) -> float:
        self.count += 1
        app = f"bench-{self.count}"
        self.crewship.ssh(self.crewship.admin_key, "apps:create", app, check=True)
        took = timed_push(src, self.crewship.git_url(app), self.crewship_env)
        self.crewship.ssh(self.crewship.admin_key, "apps:destroy", app, "--force", check=True)
        return took

    def push_openssh(self, src: Path) -> float:
        self.count += 1
        bare = self.root / "bare" / f"bench-{self.count}.git"
        git("init", "-q", "--bare", str(bare), cwd=self.root)
        took = timed_push(src, self.sshd.git_url(bare), self.sshd_env)
        shutil.rmtree(bare)
        return took

    def measure(self, case: Case) -> dict[str, Any]:
        src = self.root / "src" / case.name.split()[0]
        make_source(src, case.files)
        self.push_crewship(src)  # warm-up: page cache, first-connection costs
        self.push_openssh(src)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(case.runs):
            ours.append(self.push_crewship(src))
            theirs.append(self.push_openssh(src))
        shutil.rmtree(src)
        crewship_s, openssh_s = statistics.median(ours), statistics.median(theirs)
        ratio = crewship_s / openssh_s
        return {"benchmark": NAME, "case": case.name, "runs": case.runs,
                "crewship_s": round(crewship_s, 4), "baseline": "OpenSSH sshd",
                "baseline_s": round(openssh_s, 4), "ratio": round(ratio, 3),
                "goal": case.goal, "met": ratio <= case.goal,
                "crewship_all_s": [round(t, 4) for t in ours],
                "baseline_all_s": [round(t, 4) for t in theirs]}


def run(small_runs: int = 5, large_runs: int = 3, large_mb: int = 50) -> list[dict[str, Any]]:
    """Measure every case; returns one result row per case."""
    with tempfile.TemporaryDirectory(prefix="crewship-bench-") as tmp:
        root = Path(tmp)
        crewship = CrewshipServer(root / "crewship")
        with crewship, OpenSSHServer(root / "sshd", crewship.admin_key) as sshd:
            bench = Bench(root, crewship, sshd)
            return [bench.measure(case) for case in cases(small_runs, large_runs, large_mb)
                    if case.runs > 0]
