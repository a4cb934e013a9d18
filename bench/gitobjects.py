"""The daemon's own git work in-process (dulwich) beside the git child processes it replaced.

Each case runs 30 times on a bare repo holding the classic crew fixture; medians. The
baseline is what crewship ran before: ``git add/write-tree/commit-tree`` with a temporary
index for a ZIP deployment's commit, ``git rev-parse``, ``git update-ref`` (compare-and-swap)
and ``git cat-file blob``.

    python -m bench --only gitobjects        # or: python -m bench.gitobjects
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crewship.store import gitobjects

NAME = "gitobjects"
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "classic_crew"
RUNS = 30


def median_ms(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def git(repo: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], env=env, cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def run() -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gitobjects-"))
    try:
        repo, work = tmp / "app.git", tmp / "work"
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
        shutil.copytree(FIXTURE, work)
        env = {**os.environ, "GIT_INDEX_FILE": str(tmp / "index"), "GIT_WORK_TREE": str(work),
               "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "c",
               "GIT_COMMITTER_EMAIL": "c@x"}

        def git_commit() -> str:
            git(repo, "add", "--all", "--force", "--", ".", env=env, cwd=work)
            return git(repo, "commit-tree", git(repo, "write-tree", env=env), "-m", "x", env=env)

        sha = git_commit()
        ref = "refs/heads/main"
        git(repo, "update-ref", ref, sha)
        cases = [
            ("ZIP deployment as a commit", git_commit,
             lambda: gitobjects.commit_directory(repo, work, parent=None, author="a", message="x")),
            ("resolve a branch", lambda: git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}"),
             lambda: gitobjects.ref_target(repo, ref)),
            ("move a ref (compare-and-swap)", lambda: git(repo, "update-ref", ref, sha, sha),
             lambda: gitobjects.set_ref(repo, ref, sha, sha)),
            ("read a file at a commit", lambda: git(repo, "cat-file", "blob", f"{sha}:pyproject.toml"),
             lambda: gitobjects.read_file(repo, sha, "pyproject.toml")),
        ]
        rows = []
        for case, baseline, ours in cases:
            base_ms, ours_ms = median_ms(baseline), median_ms(ours)
            rows.append({"case": case, "crewship_s": ours_ms / 1000, "baseline_s": base_ms / 1000,
                         "ratio": ours_ms / base_ms})
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    for row in run():
        print(f"{row['case']}: dulwich {row['crewship_s'] * 1000:.2f} ms vs git "
              f"{row['baseline_s'] * 1000:.2f} ms ({row['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
