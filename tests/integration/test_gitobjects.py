"""crewship/store/gitobjects.py against real bare repos, checked with the real git binary."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crewship.errors import ConflictError, InvalidInputError
from crewship.store import gitobjects
from crewship.store.gitobjects import ZERO_SHA


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    repo = tmp_path / "app.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(repo)], check=True)
    return repo


def make_tree(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (root / "src" / "pkg" / "main.py").write_text("print('hi')\n")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho run\n")
    script.chmod(0o755)
    os.symlink("pyproject.toml", root / "link.toml")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("not part of the commit\n")
    return root


def test_a_directory_becomes_a_commit_git_reads_back(bare: Path, tmp_path: Path) -> None:
    work = make_tree(tmp_path / "work")
    sha = gitobjects.commit_directory(bare, work, parent=None, author="alice", message="ZIP deploy")
    git(bare, "fsck", "--strict", "--no-dangling")
    listing = git(bare, "ls-tree", "-r", sha)
    modes = {line.split("\t")[1]: line.split()[0] for line in listing.splitlines()}
    assert modes == {"pyproject.toml": "100644", "run.sh": "100755", "link.toml": "120000",
                     "src/pkg/main.py": "100644"}
    assert git(bare, "log", "-1", "--format=%an <%ae>|%s", sha).strip() == \
        "alice <alice@crewship>|ZIP deploy"
    info = gitobjects.commit_info(bare, sha)
    assert (info.author, info.message) == ("alice <alice@crewship>", "ZIP deploy")
    assert gitobjects.read_file(bare, sha, "src/pkg/main.py") == b"print('hi')\n"
    assert gitobjects.read_file(bare, sha, "missing.txt") is None
    with pytest.raises(InvalidInputError):
        gitobjects.read_file(bare, sha, "../etc/passwd")


def test_refs_move_only_by_compare_and_swap(bare: Path, tmp_path: Path) -> None:
    first = gitobjects.commit_directory(bare, make_tree(tmp_path / "a"), parent=None,
                                        author="alice", message="one")
    (tmp_path / "a" / "pyproject.toml").write_text("changed\n")
    second = gitobjects.commit_directory(bare, tmp_path / "a", parent=first, author="bob",
                                         message="two")
    ref = "refs/heads/main"
    gitobjects.set_ref(bare, ref, first, None)
    assert git(bare, "rev-parse", ref).strip() == first
    with pytest.raises(ConflictError):
        gitobjects.set_ref(bare, ref, second, None)  # exists already
    with pytest.raises(ConflictError):
        gitobjects.set_ref(bare, ref, second, second)  # not where the caller thinks
    gitobjects.set_ref(bare, ref, second, first)
    assert gitobjects.ref_target(bare, ref) == second
    assert gitobjects.branches(bare) == [ref]
    gitobjects.set_ref(bare, ref, ZERO_SHA, second)
    assert gitobjects.ref_target(bare, ref) is None
    assert git(bare, "for-each-ref").strip() == ""
