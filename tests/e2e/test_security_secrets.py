"""Security suite, secrets at rest (issue 11 item 3), on a real server with a real classic
crew on the fake LLM: config values never in state.db (or its WAL) in plain text, the key
file's mode, config:purge-history and the rollback it makes refuse; and (docker) an index
password in no image's history."""

from __future__ import annotations

import asyncio
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.env import EnvBuilder, default_uv
from builder.image import ImageBuilder, connect
from builder.release import RUNNER_DIR
from crewship.config import Layout
from crewship.reporter import NullReporter
from tests.conftest import DOCKER_BASE_IMAGE
from tests.e2e.test_deploy import configure, new_project, push
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e]

LEAKED = f"sk-leaked-{secrets.token_hex(8)}"


@dataclass
class Demo:
    srv: CrewshipServer
    llm: FakeLLM

    def ssh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.srv.ssh(self.srv.admin_key, *args, check=check, timeout=180)

    def raw_state(self) -> bytes:
        """Every byte SQLite keeps: the database file, its WAL and its shared memory."""
        files = [self.srv.data_dir / name for name in ("state.db", "state.db-wal",
                                                        "state.db-shm")]
        return b"".join(p.read_bytes() for p in files if p.exists())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    srv = CrewshipServer(tmp_path_factory.mktemp("secrets"),
                         env={"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs")})
    with FakeLLM() as llm:
        srv.start()
        try:
            configure(srv, "demo", llm)
            project = new_project(srv, "classic_crew", tmp_path_factory.mktemp("project"))
            assert "=====> demo v1 is live" in push(srv, project, "demo")
            yield Demo(srv, llm)
        finally:
            srv.close()


@pytest.mark.slow
def test_config_values_are_never_in_state_db_in_plain_text(demo: Demo) -> None:
    out = demo.ssh("config:set", "demo", f"LEAKED_KEY={LEAKED}")
    assert "demo v2 is live" in out.stdout + out.stderr
    assert demo.ssh("config", "demo", "--show", "--json").stdout.count(LEAKED) == 1
    raw = demo.raw_state()
    assert b"LEAKED_KEY" in raw            # the key names are not secret
    assert LEAKED.encode() not in raw      # the value is, in the config table and v2's row
    for value in demo.llm.env().values():  # nor the LLM settings set at the start (v1)
        if len(value) >= 8:
            assert value.encode() not in raw, value
    assert LEAKED not in demo.srv.log_text()


@pytest.mark.slow
def test_the_secrets_key_is_a_0600_file_of_its_own_never_logged(demo: Demo) -> None:
    key = demo.srv.data_dir / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    material = key.read_text().strip()
    assert len(material) == 44
    assert material not in demo.srv.log_text()
    assert material.encode() not in demo.raw_state()


@pytest.mark.slow
def test_purge_history_removes_a_leaked_key_and_rollback_to_it_refuses(demo: Demo) -> None:
    still_set = demo.ssh("config:purge-history", "demo", "LEAKED_KEY", check=False)
    assert still_set.returncode != 0
    assert "run 'config:unset demo LEAKED_KEY' first" in still_set.stderr
    dev = demo.srv.add_user("dev")
    demo.ssh("access:add", "demo", "dev", "deploy")
    denied = demo.srv.ssh(dev, "config:purge-history", "demo", "LEAKED_KEY")
    assert denied.returncode != 0
    assert "needs admin" in denied.stderr

    assert "demo v3 is live" in demo.ssh("config:unset", "demo", "LEAKED_KEY").stdout
    out = demo.ssh("config:purge-history", "demo", "LEAKED_KEY")
    assert "removed LEAKED_KEY from 1 release(s): v2" in out.stdout, out.stdout
    releases = {r["version"]: r for r in demo.srv.ssh_json(demo.srv.admin_key, "releases", "demo")}
    assert releases["v2"]["purged_keys"] == ["LEAKED_KEY"]
    assert releases["v1"]["purged_keys"] == releases["v3"]["purged_keys"] == []

    refused = demo.ssh("rollback", "demo", "v2", check=False)
    assert refused.returncode != 0
    assert "v2 had LEAKED_KEY removed from its config by config:purge-history" in refused.stderr
    assert demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")["release"] == "v3"
    again = demo.ssh("config:purge-history", "demo", "LEAKED_KEY")
    assert "nothing to purge" in again.stdout


# ------------------------------------------------------------------- docker
@pytest.mark.docker
def test_an_index_password_is_in_no_images_history(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A project without dependencies: uv never contacts the (127.0.0.1) index."""
    password = f"fake-index-pw-{secrets.token_hex(6)}"
    monkeypatch.setenv("UV_INDEX_URL", f"https://crewship-test:{password}@127.0.0.1:9/simple")
    work = tmp_path / "work"
    (work / "app").mkdir(parents=True)
    (work / "app" / "pyproject.toml").write_text(
        '[project]\nname = "nodeps"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        "dependencies = []\n")
    subprocess.run([default_uv(), "lock", "--offline", "--python", sys.executable],
                   cwd=work / "app", check=True, capture_output=True, timeout=120)
    (work / RUNNER_DIR).mkdir()
    (work / RUNNER_DIR / "__main__.py").write_text("print('runner')\n")
    layout = Layout(tmp_path / "data")
    layout.ensure()
    builder = ImageBuilder(layout, EnvBuilder(layout.envs, sys.executable), DOCKER_BASE_IMAGE)
    client = connect()
    report = NullReporter()
    progress = asyncio.run(builder._build(client, "secret-probe", 1, "0" * 40, work, report))
    try:
        history = subprocess.run(["docker", "history", "--no-trunc", "crewship/secret-probe:v1"],
                                 check=True, capture_output=True, text=True, timeout=60).stdout
        assert "COPY" in history
        assert password not in history
        for image in client.images.list(all=True):
            recorded = " ".join(str(h.get("CreatedBy") or "") for h in image.history())
            assert password not in recorded, image.id
        assert password not in "\n".join(report.lines)
        assert any("not kept in any image" in line for line in report.lines)
    finally:
        client.images.remove(str(progress.image_id), force=True)
        client.close()
