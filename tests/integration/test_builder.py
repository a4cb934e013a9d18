"""The builder against real git, real uv and a real (tiny) project.

Projects are written by the tests and locked with ``uv lock`` at test time: no
lockfile (and so no registry URL) is ever committed to this repository.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.env import LOCK_PREFIX, READY_MARKER, EnvBuilder
from builder.export import export_commit, read_file_at
from builder.release import BuiltRelease, ReleaseBuilder, load_release, runner_argv
from builder.validate import check_lockfile
from crewship.config import Layout
from crewship.errors import BuildError, InvalidInputError, ValidationError
from crewship.reporter import NullReporter

UV = str(Path(sys.executable).parent / "uv") if (Path(sys.executable).parent / "uv").exists() \
    else (shutil.which("uv") or "uv")
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
# A dependency-free lock, valid for a project named "tiny" (no registry involved).
VIRTUAL_LOCK = ('version = 1\nrevision = 3\nrequires-python = "{requires}"\n\n[[package]]\n'
                'name = "tiny"\nversion = "0.1.0"\nsource = {{ virtual = "." }}\n')


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def pyproject(deps: str = '"six"', requires: str = ">=3.10") -> str:
    return ('[project]\nname = "tiny"\nversion = "0.1.0"\n'
            f'requires-python = "{requires}"\ndependencies = [{deps}]\n'
            '[tool.crewai]\ntype = "crew"\n')


CREW_FILES = {
    "src/tiny/__init__.py": "",
    "src/tiny/crew.py": "VALUE = 1\n",
    "src/tiny/config/agents.yaml": "a:\n  role: r\n",
    "src/tiny/config/tasks.yaml": "t:\n  description: d\n",
}


class Project:
    """A work tree that pushes to a bare repository, like a developer's checkout."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "repos" / "tiny.git"
        self.work = root / "work"
        self.bare.mkdir(parents=True)
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self.work.mkdir()
        git("init", "-q", "-b", "main", cwd=self.work)

    def commit(self, files: dict[str, str], *, lock: bool = False,
               remove: tuple[str, ...] = ()) -> str:
        write(self.work, files)
        for rel in remove:
            (self.work / rel).unlink()
        if lock:
            subprocess.run([UV, "lock", "-q"], cwd=self.work, check=True,
                           env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", "c", cwd=self.work)
        git("push", "-q", str(self.bare), "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture
def runner_source(tmp_path: Path) -> Path:
    return Path(__file__).resolve().parents[2] / "runtime" / "runner"


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path / "data")
    lay.ensure()
    return lay


@pytest.fixture
def builder(layout: Layout, runner_source: Path) -> ReleaseBuilder:
    envs = EnvBuilder(layout.envs, sys.executable, UV)
    return ReleaseBuilder(layout, envs, runner_source=runner_source)


def build(builder: ReleaseBuilder, project: Project, version: int, commit: str,
          report: NullReporter | None = None) -> BuiltRelease:
    return asyncio.run(builder.build("tiny", version, project.bare, commit,
                                     report or NullReporter()))


def snapshot(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(root)): snapshot(p) for p in [root, *root.rglob("*")]
            if not p.is_symlink()}


# -- builds ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_first_build_installs_and_places_a_read_only_release(
        builder: ReleaseBuilder, project: Project, layout: Layout) -> None:
    commit = project.commit({"pyproject.toml": pyproject(), **CREW_FILES}, lock=True)
    report = NullReporter()
    release = build(builder, project, 1, commit, report)

    assert not release.env.cache_hit
    assert "-----> Installing dependencies" in report.lines
    assert any("Installed 1 package" in line for line in report.lines), report.lines
    assert release.dir == layout.release_dir("tiny", 1)
    assert (release.env.path / READY_MARKER).is_file()
    subprocess.run([str(release.env.python_path), "-c", "import six"], check=True)

    meta = load_release(release.dir)
    assert (meta.commit, meta.kind, meta.package, meta.env_key) == (
        commit, "crew", "tiny", release.env.key)
    assert (meta.app_dir / "src/tiny/crew.py").is_file()
    assert (meta.runner / "__main__.py").is_file()
    crew_py = meta.app_dir / "src/tiny/crew.py"
    assert not crew_py.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not list(layout.tmp.iterdir())

    argv = runner_argv(release, "127.0.0.1", 9001, "i1")
    assert argv[:3] == [str(release.env.path / "bin/python"), str(release.dir /
                        "crewship_runner"), "--app-dir"]
    assert argv == runner_argv(meta, "127.0.0.1", 9001, "i1")
    assert "--definition" not in argv
    assert argv[-2:] == ["--instance", "i1"]


@pytest.mark.slow
def test_code_only_push_reuses_the_env_untouched(
        builder: ReleaseBuilder, project: Project) -> None:
    first = build(builder, project, 1, project.commit(
        {"pyproject.toml": pyproject(), **CREW_FILES}, lock=True))
    before = tree_snapshot(first.env.path)

    report = NullReporter()
    start = time.monotonic()
    second = build(builder, project, 2, project.commit({"src/tiny/crew.py": "VALUE = 2\n"}),
                   report)
    elapsed = time.monotonic() - start

    assert second.env.cache_hit
    assert second.env.key == first.env.key
    assert "-----> Installing dependencies (cache hit)" in report.lines
    assert tree_snapshot(first.env.path) == before
    assert (second.dir / "app/src/tiny/crew.py").read_text() == "VALUE = 2\n"
    assert (first.dir / "app/src/tiny/crew.py").read_text() == "VALUE = 1\n"
    assert elapsed < 5.0


@pytest.mark.slow
def test_lockfile_change_makes_a_new_env(builder: ReleaseBuilder, project: Project) -> None:
    first = build(builder, project, 1, project.commit(
        {"pyproject.toml": pyproject(), **CREW_FILES}, lock=True))
    second = build(builder, project, 2, project.commit(
        {"pyproject.toml": pyproject('"six==1.16.0"')}, lock=True))
    assert not second.env.cache_hit
    assert second.env.key != first.env.key
    assert first.env.path.is_dir()
    assert second.env.path.is_dir()
    out = subprocess.run([str(second.env.python_path), "-c", "import six; print(six.__version__)"],
                         check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "1.16.0"
    assert builder.envs.gc({second.env.key}) == [first.env.key]
    assert not first.env.path.exists()


@pytest.mark.slow
def test_concurrent_builds_of_one_key_install_once(layout: Layout, project: Project,
                                                   tmp_path: Path) -> None:
    project.commit({"pyproject.toml": pyproject(), **CREW_FILES}, lock=True)
    envs = EnvBuilder(layout.envs, sys.executable, UV)

    async def both() -> list[bool]:
        refs = await asyncio.gather(envs.ensure(project.work, NullReporter()),
                                    envs.ensure(project.work, NullReporter()))
        return sorted(r.cache_hit for r in refs)

    assert asyncio.run(both()) == [False, True]


def key_of(work: Path) -> str:
    return asyncio.run(EnvBuilder(Path("/nonexistent"), sys.executable, UV).key_for(work))


# One server's EnvBuilder in a process of its own (servers sharing CREWSHIP_ENVS_DIR).
ENSURE = """
import asyncio, json, sys
from pathlib import Path
from builder.env import EnvBuilder
from crewship.reporter import NullReporter
report = NullReporter()
ref = asyncio.run(EnvBuilder(Path(sys.argv[1]), sys.executable, sys.argv[3])
                  .ensure(Path(sys.argv[2]), report))
print(json.dumps({"hit": ref.cache_hit, "key": ref.key,
                  "waited": any("another server" in line for line in report.lines)}))
"""


@pytest.mark.slow
def test_two_servers_sharing_the_envs_dir_build_a_key_once(layout: Layout, project: Project,
                                                           tmp_path: Path) -> None:
    import fcntl
    import json

    project.commit({"pyproject.toml": pyproject(), **CREW_FILES}, lock=True)
    shared = tmp_path / "shared-envs"
    key = key_of(project.work)
    shared.mkdir()
    holder = os.open(shared / f"{LOCK_PREFIX}{key}", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a third builder is at it: both must wait
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE, str(shared), str(project.work), UV],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        time.sleep(3.0)
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert not (shared / key).exists()  # nobody built while the lock was held
    finally:
        os.close(holder)  # released: one builds, the other finds it ready
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(out.strip().splitlines()[-1]) for out, _err in outs]
    assert sorted(r["hit"] for r in results) == [False, True], results
    assert all(r["waited"] and r["key"] == key for r in results), results
    assert (shared / key / READY_MARKER).is_file()
    subprocess.run([str(shared / key / "bin" / "python"), "-c", "import six"], check=True)


def test_half_built_env_is_removed_and_rebuilt(layout: Layout, tmp_path: Path) -> None:
    work = tmp_path / "p"
    write(work, {"pyproject.toml": pyproject(deps=""), "uv.lock": VIRTUAL_LOCK.format(
        requires=">=3.10")})
    envs = EnvBuilder(layout.envs, sys.executable, UV)
    key = asyncio.run(envs.key_for(work))
    write(layout.envs / key, {"junk.txt": "half"})
    ref = asyncio.run(envs.ensure(work, NullReporter()))
    assert not ref.cache_hit
    assert ref.key == key
    assert not (ref.path / "junk.txt").exists()
    assert (ref.path / READY_MARKER).is_file()
    assert ref.python_path.exists()


def test_uv_failure_is_a_build_error_with_uv_output(layout: Layout, tmp_path: Path) -> None:
    work = tmp_path / "p"
    write(work, {"pyproject.toml": pyproject(deps=""),
                 "uv.lock": VIRTUAL_LOCK.format(requires=">=3.99")})
    envs = EnvBuilder(layout.envs, sys.executable, UV)
    with pytest.raises(BuildError, match="uv sync") as info:
        asyncio.run(envs.ensure(work, NullReporter()))
    assert "3.99" in str(info.value)
    assert [p.name for p in layout.envs.iterdir()] == [f"{LOCK_PREFIX}{key_of(work)}"]


# -- failures that install nothing --------------------------------------------------------------

def test_missing_lockfile_fails(builder: ReleaseBuilder, project: Project,
                                layout: Layout) -> None:
    commit = project.commit({"pyproject.toml": pyproject(), **CREW_FILES})
    report = NullReporter()
    with pytest.raises(ValidationError) as info:
        build(builder, project, 1, commit, report)
    assert info.value.code == "missing_lockfile"
    assert "uv lock" in info.value.fix
    assert any(line.startswith(" !     error missing_lockfile: Expected to find")
               for line in report.lines)
    assert list(layout.envs.iterdir()) == []


def test_requires_python_excluding_the_server_fails_clearly(
        builder: ReleaseBuilder, project: Project, layout: Layout) -> None:
    commit = project.commit({"pyproject.toml": pyproject(deps="", requires=">=3.99"),
                             "uv.lock": VIRTUAL_LOCK.format(requires=">=3.99"), **CREW_FILES})
    report = NullReporter()
    with pytest.raises(BuildError) as info:
        build(builder, project, 1, commit, report)
    message = str(info.value)
    version = ".".join(map(str, sys.version_info[:3]))
    assert f"requires Python >=3.99 but this server builds with Python {version}" in message
    assert "CREWSHIP_PYTHON=" in message
    assert "requires-python" in message
    assert "-----> Installing dependencies" not in report.lines
    assert list(layout.envs.iterdir()) == []


def test_broken_layout_fails_fast_with_nothing_installed(
        builder: ReleaseBuilder, project: Project, layout: Layout) -> None:
    files = {k: v for k, v in CREW_FILES.items() if not k.endswith("crew.py")}
    commit = project.commit({"pyproject.toml": pyproject(),
                             "uv.lock": VIRTUAL_LOCK.format(requires=">=3.10"), **files})
    report = NullReporter()
    start = time.monotonic()
    with pytest.raises(ValidationError) as info:
        build(builder, project, 1, commit, report)
    assert time.monotonic() - start < 2.0
    assert info.value.code == "missing_crew_py"
    assert report.lines[0] == "-----> Validating"
    assert "       fix: Create crew.py with an @CrewBase-annotated class, or set " \
           '`[tool.crewai] type = "flow"` in pyproject.toml if this is a flow.' in report.lines
    assert list(layout.envs.iterdir()) == []
    assert list(layout.tmp.iterdir()) == []
    assert not layout.release_dir("tiny", 1).exists()


# -- export, reads, lock check, removal -------------------------------------------------------------

def test_export_and_read_file_at(project: Project, tmp_path: Path) -> None:
    commit = project.commit({"pyproject.toml": pyproject(), **CREW_FILES})
    (project.work / "rel").symlink_to("src/tiny/crew.py")
    commit = project.commit({})
    dest = tmp_path / "out"
    asyncio.run(export_commit(project.bare, commit, dest))
    assert (dest / "src/tiny/config/tasks.yaml").read_text() == CREW_FILES[
        "src/tiny/config/tasks.yaml"]
    assert (dest / "rel").is_symlink()
    assert asyncio.run(read_file_at(project.bare, commit, "src/tiny/crew.py")) == b"VALUE = 1\n"
    assert asyncio.run(read_file_at(project.bare, commit, "nope.txt")) is None
    with pytest.raises(InvalidInputError):
        asyncio.run(read_file_at(project.bare, commit, "../x"))
    with pytest.raises(InvalidInputError):
        asyncio.run(export_commit(project.bare, "--output=/tmp/x", tmp_path / "o2"))


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside"])
def test_export_refuses_links_out_of_the_tree(project: Project, tmp_path: Path,
                                              target: str) -> None:
    (project.work / "evil").symlink_to(target)
    commit = project.commit({"pyproject.toml": pyproject()})
    with pytest.raises(BuildError, match="cannot unpack"):
        asyncio.run(export_commit(project.bare, commit, tmp_path / "out"))


def test_export_works_inside_a_hook_environment(project: Project, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    commit = project.commit({"pyproject.toml": pyproject()})
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_QUARANTINE_PATH", str(tmp_path / "q"))
    asyncio.run(export_commit(project.bare, commit, tmp_path / "out"))
    assert (tmp_path / "out/pyproject.toml").is_file()


def test_check_lockfile_reports_a_stale_lock(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": pyproject(deps=""),
                     "uv.lock": VIRTUAL_LOCK.format(requires=">=3.10")})
    assert asyncio.run(check_lockfile(tmp_path, UV, sys.executable)) is None
    write(tmp_path, {"pyproject.toml": pyproject(deps="", requires=">=3.11")})
    finding = asyncio.run(check_lockfile(tmp_path, UV, sys.executable))
    assert finding is not None
    assert (finding.code, finding.severity) == ("stale_lockfile", "warning")


def test_remove_release_restores_write_bits(builder: ReleaseBuilder, layout: Layout) -> None:
    rel = layout.release_dir("tiny", 7)
    write(rel, {"app/a.py": "x", "release.json": "{}"})
    for path in rel.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    builder.remove_release("tiny", 7)
    assert not rel.exists()
    builder.remove_release("tiny", 7)

