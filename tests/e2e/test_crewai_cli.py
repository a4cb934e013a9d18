"""The real ``crewai deploy`` CLI (crewai-cli 1.15.30 from PyPI, in its own venv)
against a real crewship server: ``crewship login --crewai``, then create, push,
status, logs, list and remove, by ZIP upload (no origin remote) and by git (origin =
the app's crewship URL). The crewai CLI exits 0 on most failures, so the tests
assert on what it prints."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.crewapi import CrewAPI
from tests.support.crewenv import cache_root, locked_copy, uv_binary
from tests.support.fakellm import FakeLLM
from tests.support.server import GIT_IDENTITY, REPO_ROOT, CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CLI_VERSION = "1.15.30"


@pytest.fixture(scope="module")
def crewai_bin() -> Path:
    """``bin/`` of a venv with crewai-cli, made once per version under the test cache."""
    root = cache_root() / "crewai-cli"
    root.mkdir(parents=True, exist_ok=True)
    venv = root / CLI_VERSION
    with open(root / f"{CLI_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
            env["UV_PYTHON_DOWNLOADS"] = "never"
            subprocess.run([uv_binary(), "venv", "-q", "--python", sys.executable, str(venv)],
                           check=True, env=env, timeout=120)
            subprocess.run([uv_binary(), "pip", "install", "-q", "--python",
                            str(venv / "bin" / "python"), f"crewai-cli=={CLI_VERSION}"],
                           check=True, env=env, timeout=900)
            (venv / ".complete").write_text(CLI_VERSION)
    return venv / "bin"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("crewai-cli")) as server:
        yield server


class CrewAI:
    """Runs ``crewai`` with its own HOME, logged in to ``srv`` by ``crewship login``."""

    def __init__(self, srv: CrewshipServer, bin_dir: Path, home: Path) -> None:
        self.srv = srv
        self.home = home
        self.opened = home / "opened-urls"
        browser = home / "browser.sh"
        browser.parent.mkdir(parents=True, exist_ok=True)
        browser.write_text(f'#!/bin/sh\necho "$1" >> {self.opened}\n')
        browser.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("GIT_", "CREWAI", "CREWSHIP_", "VIRTUAL_ENV", "SSH_AUTH"))}
        self.env.update(GIT_IDENTITY)
        self.env.update({
            "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "BROWSER": str(browser), "CREWAI_PLUS_URL": srv.http_url,
            "CREWSHIP_SERVER": f"ssh://git@127.0.0.1:{srv.ssh_port}",
            "CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true",
            "CREWAI_TRACING_ENABLED": "false", "CREWAI_DISABLE_VERSION_CHECK": "true",
            "GIT_SSH_COMMAND": " ".join(srv.ssh_argv(srv.admin_key)[:-1]), "NO_COLOR": "1",
            "COLUMNS": "200", "TERM": "dumb"})

    def login(self) -> str:
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy(self.srv.admin_key, ssh / "id_ed25519")
        (ssh / "id_ed25519").chmod(0o600)
        result = subprocess.run([sys.executable, "-m", "crewship.cli", "login", "--crewai",
                                 "--server", self.srv.http_url, "--expires-days", "7"],
                                env=self.env, cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout

    def __call__(self, *args: str, cwd: Path, timeout: float = 300) -> str:
        result = subprocess.run(["crewai", *args], cwd=cwd, env=self.env, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return result.stdout + result.stderr

    def wait_online(self, cwd: Path, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self("deploy", "status", cwd=cwd)
            if re.search(r"Status:\s+Online", out):
                return out
            assert "Failed" not in out, out
            assert time.monotonic() < deadline, out
            time.sleep(2)


@pytest.fixture(scope="module")
def crewai(srv: CrewshipServer, crewai_bin: Path,
           tmp_path_factory: pytest.TempPathFactory) -> CrewAI:
    cli = CrewAI(srv, crewai_bin, tmp_path_factory.mktemp("home"))
    said = cli.login()
    assert "Made a crewship API token" in said
    assert "Stored the token for the crewai CLI" in said
    assert f"enterprise_base_url to {srv.http_url}" in said
    assert "accepts the token" in said
    return cli


def project(llm: FakeLLM, tmp_path: Path) -> Path:
    root = locked_copy("classic_crew", tmp_path)
    env = llm.env()
    env["MODEL"] = f'"{env["MODEL"]}"'  # quoted, as people write .env files
    (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return root


def crew_api(srv: CrewshipServer, app: str) -> CrewAPI:
    token = srv.ssh(srv.admin_key, "tokens", app, check=True).stdout.strip()
    return CrewAPI(srv.http_url, app, token)


def git_log(srv: CrewshipServer, app: str) -> list[str]:
    out = srv.git(None, "--git-dir", str(srv.repo_path(app)), "log", "--format=%an|%s", "main",
                  cwd=srv.root).stdout
    return out.splitlines()


def test_zip_path_create_push_status_logs_list_remove(
        srv: CrewshipServer, crewai: CrewAI, llm: FakeLLM, tmp_path: Path) -> None:
    root = project(llm, tmp_path)
    out = crewai("deploy", "create", "-y", "--skip-validate", cwd=root)
    assert "No origin remote found" in out, out
    assert "Deployment created successfully!" in out, out
    uuid = re.search(r"Name: demo_crew \(([0-9a-f-]{36})\)", out)
    assert uuid is not None, out
    assert "Status: Deploy Enqueued" in out
    status = crewai.wait_online(root)
    assert re.search(r"Name:\s+demo-crew", status), status
    api = crew_api(srv, "demo-crew")
    assert api.run({"topic": "zipped tea", "audience": "otters"})["state"] == "SUCCESS"
    page = crewai.opened.read_text().split()[0]
    assert page == f"{srv.http_url}/crewai_plus/deployments/{uuid.group(1)}"
    assert httpx.get(page, timeout=5).status_code == 303          # a login first
    token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    assert "Online" in httpx.get(page, timeout=5,
                                 headers={"Authorization": f"Bearer {token}"}).text

    tasks = root / "src/demo_crew/config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("short briefing", "crisp briefing"))
    out = crewai("deploy", "push", "--skip-validate", cwd=root)
    assert "Deploying the crew..." in out, out
    assert f"Uuid: {uuid.group(1)}" in out
    crewai.wait_online(root)
    assert re.search(r"Status:\s+Online", crewai("deploy", "status", "-u", uuid.group(1), cwd=root))
    done = api.run({"topic": "pushed tea", "audience": "otters"})
    assert done["state"] == "SUCCESS", done
    assert "crisp briefing" in done["result"]
    assert git_log(srv, "demo-crew") == ["admin|crewai deploy push (ZIP)",
                                         "admin|crewai deploy create (ZIP)"]
    assert [r["version"] for r in srv.ssh_json(srv.admin_key, "releases", "demo-crew")] == \
        ["v2", "v1"]

    logs = crewai("deploy", "logs", cwd=root)
    assert re.search(r"\d{4}-\d\d-\d\dT[\d:.]+Z - INFO: .*demo-crew v2 is live", logs), logs
    assert crewai("deploy", "logs", "-u", uuid.group(1), cwd=root) == logs
    listed = crewai("deploy", "list", cwd=root)
    assert f"- demo-crew ({uuid.group(1)}) Online" in listed, listed
    out = crewai("deploy", "remove", cwd=root)
    assert "Crew 'demo_crew' removed successfully." in out, out
    assert "demo-crew" not in crewai("deploy", "list", cwd=root)


def test_git_path_origin_is_the_apps_crewship_url(
        srv: CrewshipServer, crewai: CrewAI, llm: FakeLLM, tmp_path: Path) -> None:
    root = project(llm, tmp_path)
    git_url = srv.git_url("demo-crew")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"],
                 ["remote", "add", "origin", git_url]):
        srv.git(srv.admin_key, *args, cwd=root)
    srv.git(srv.admin_key, "push", "origin", "main", cwd=root)  # creates and deploys the app
    out = crewai("deploy", "create", "-y", "--skip-validate", cwd=root)
    assert "Deployment created successfully!" in out, out
    uuid = re.search(r"Name: demo_crew \(([0-9a-f-]{36})\)", out)
    assert uuid is not None, out
    crewai.wait_online(root)
    api = crew_api(srv, "demo-crew")
    assert api.run({"topic": "git tea", "audience": "otters"})["state"] == "SUCCESS"

    tasks = root / "src/demo_crew/config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace("short briefing", "sharp briefing"))
    srv.git(srv.admin_key, "commit", "-q", "-am", "sharper", cwd=root)
    srv.git(srv.admin_key, "push", "origin", "main", cwd=root)
    out = crewai("deploy", "push", "--skip-validate", cwd=root)
    assert "Deploying the crew..." in out, out
    crewai.wait_online(root)
    assert "sharp briefing" in api.run({"topic": "t", "audience": "a"})["result"]
    status = srv.ssh_json(srv.admin_key, "status", "demo-crew")
    head = srv.git(None, "rev-parse", "HEAD", cwd=root).stdout.strip()
    assert status["commit"] == head
    assert "is live" in crewai("deploy", "logs", cwd=root)
    assert f"- demo-crew ({uuid.group(1)}) Online" in crewai("deploy", "list", cwd=root)
    out = crewai("deploy", "remove", "-u", uuid.group(1), cwd=root)
    assert f"Crew '{uuid.group(1)}' removed successfully." in out, out
