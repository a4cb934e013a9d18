"""The ``crewship`` client (issue #4 items 4-5), driven only as a user would: a subprocess
``python -m crewship.cli ...`` with HOME holding the user's key as ``~/.ssh/id_ed25519``
and the CrewAI project as its working directory, against a real server.

The crew tests run in file order on one deployed app and build on each other
(v1 push, v2 config, v3 push, v4 rollback, ...); the error tests need no crew.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.crewenv import FIXTURES, locked_copy
from tests.support.fakellm import FakeLLM
from tests.support.server import (
    GIT_IDENTITY,
    REPO_ROOT,
    CrewshipServer,
    free_port,
    key_fingerprint,
    shared_envs_server,
)

pytestmark = [pytest.mark.e2e]

OLD_TEXT, NEW_TEXT = "short briefing", "crisp briefing"
SECRET = "sk-fake-test-key"


def make_home(root: Path, key: Path | None) -> Path:
    """A HOME whose ~/.ssh/id_ed25519 is ``key`` (or that has no key at all)."""
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if key is not None:
        shutil.copy(key, home / ".ssh" / "id_ed25519")
        shutil.copy(key.with_name(key.name + ".pub"), home / ".ssh" / "id_ed25519.pub")
        (home / ".ssh" / "id_ed25519").chmod(0o600)
    return home


def crewship(home: Path, cwd: Path, *args: str, input: str = "", env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the client as the owner of ``home`` in ``cwd`` (no agent, no inherited server)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("CREWSHIP_", "SSH_", "XDG_", "GIT_"))}
    base.update(GIT_IDENTITY, HOME=str(home), PYTHONPATH=str(REPO_ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "crewship.cli", *args], cwd=cwd, env=base,
                          input=input, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout + stderr of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """stderr of a command that must have failed, with ``error:`` on its last line."""
    assert result.returncode != 0, f"unexpected success:\n{result.stdout}\n{result.stderr}"
    assert "error: " in result.stderr, result.stderr
    return result.stderr


def skeleton(root: Path, name: str = "demo_crew") -> Path:
    """A classic crew project that passes the local checks (its uv.lock is a stub)."""
    project = root / "project"
    shutil.copytree(FIXTURES / "classic_crew", project,
                    ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    (project / "uv.lock").write_text("version = 1\n")
    if name != "demo_crew":
        pyproject = project / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace('name = "demo_crew"', f'name = "{name}"'))
        (project / "src/demo_crew").rename(project / "src" / name)
    return project


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("client")) as server:
        yield server


@pytest.fixture
def admin_home(srv: CrewshipServer, tmp_path: Path) -> Path:
    return make_home(tmp_path, srv.admin_key)


def server_env(srv: CrewshipServer) -> dict[str, str]:
    return {"CREWSHIP_SERVER": f"ssh://git@127.0.0.1:{srv.ssh_port}"}


def app_names(srv: CrewshipServer) -> list[str]:
    return [a["name"] for a in srv.ssh_json(srv.admin_key, "apps")]


# ------------------------------------------------------------------ the crew
@dataclass
class Crew:
    srv: CrewshipServer
    llm: FakeLLM
    home: Path
    project: Path
    help: str

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return crewship(self.home, self.project, *args, **kwargs)

    def needs(self, command: str) -> None:
        if f"  {command} " not in self.help:
            pytest.skip(f"the server has no '{command}' SSH command yet (issue 4 item 1)")

    def status(self) -> dict[str, Any]:
        return dict(json.loads(ok(self.run("deploy", "status", "--json"))))

    def up_pids(self) -> set[int]:
        """The pids of the live instances (not those still draining after a swap)."""
        return {i["pid"] for i in self.status()["instances"] if i["state"] == "up"}

    def answer(self, topic: str = "moss") -> str:
        return ok(self.run("kickoff", "--input", f"topic={topic}", "--input", "audience=gardeners",
                           "--wait"))

    def commit(self, message: str) -> None:
        for args in (("add", "-A"), ("commit", "-q", "-m", message)):
            subprocess.run(["git", *args], cwd=self.project, check=True, capture_output=True,
                           env={**os.environ, **GIT_IDENTITY})


@pytest.fixture(scope="module")
def crew(srv: CrewshipServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crew]:
    root = tmp_path_factory.mktemp("crew")
    with FakeLLM() as llm:
        project = locked_copy("classic_crew", root)
        env = {**llm.env(), "OPENAI_API_KEY": SECRET}
        (project / ".env").write_text("".join(f'{k}="{v}"\n' for k, v in env.items()))
        help_text = srv.ssh(srv.admin_key, "help", check=True).stdout
        yield Crew(srv, llm, make_home(root, srv.admin_key), project, help_text)


@pytest.mark.slow
def test_create_and_push_make_the_crew_live(crew: Crew) -> None:
    ok(crew.run("remote", "add", f"ssh://git@127.0.0.1:{crew.srv.ssh_port}"))
    out = ok(crew.run("deploy", "create", "--yes"))
    assert "config var(s) from .env will be stored: OPENAI_API_KEY" in out
    assert SECRET not in out  # keys shown, never values
    assert "Deployment created successfully!" in out
    assert "Permanently added '[127.0.0.1]:" in out  # host key remembered on first use
    assert (crew.home / ".config/crewship/known_hosts").is_file()
    config = json.loads(ok(crew.run("config", "list", "--json")))
    assert sorted(config) == sorted(crew.llm.env())
    assert json.loads(ok(crew.run("config", "list", "--show", "--json")))["OPENAI_API_KEY"] == SECRET

    out = ok(crew.run("deploy", "push"))
    assert "-----> Health check passed" in out
    assert "=====> demo-crew v1 is live" in out
    assert SECRET not in out
    answer = crew.answer("quantum tea")
    assert "FAKE-LLM-ANSWER" in answer
    assert "quantum tea" in answer


@pytest.mark.slow
def test_status_list_and_logs(crew: Crew) -> None:
    status = crew.status()
    assert (status["app"], status["release"], status["state"]) == ("demo-crew", "v1", "running")
    text = ok(crew.run("deploy", "status"))
    assert "release:   v1" in text
    listed = json.loads(ok(crew.run("deploy", "list", "--json")))
    assert [a["name"] for a in listed] == ["demo-crew"]
    assert status["uuid"] == listed[0]["uuid"]
    assert "v1" in ok(crew.run("deploy", "status", "--uuid", status["uuid"]))
    logs = ok(crew.run("deploy", "logs", "-n", "200"))
    assert "[system]" in logs
    assert "[v1.1]" in logs


@pytest.mark.slow
def test_config_set_makes_a_release_the_crew_sees(crew: Crew) -> None:
    out = ok(crew.run("config", "set", "MODEL=openai/fake-model-2"))
    assert "=====> demo-crew v2 is live" in out
    crew.answer()
    assert crew.llm.chat_requests()[-1]["model"] == "fake-model-2"


@pytest.mark.slow
def test_push_new_code_then_rollback_answers_with_the_old_code(crew: Crew) -> None:
    crew.needs("rollback")
    tasks = crew.project / "src/demo_crew/config/tasks.yaml"
    tasks.write_text(tasks.read_text().replace(OLD_TEXT, NEW_TEXT))
    crew.commit("reword the task")
    assert "=====> demo-crew v3 is live" in ok(crew.run("deploy", "push"))
    assert NEW_TEXT in crew.answer()

    out = ok(crew.run("rollback"))
    assert "-----> Rolling back demo-crew to v2" in out
    assert "-----> Reusing v1's build (no install)" in out  # v2 was v1's build + new config
    assert "Installing dependencies" not in out
    assert "=====> demo-crew v4 is live" in out
    answer = crew.answer()
    assert OLD_TEXT in answer
    assert NEW_TEXT not in answer
    assert crew.llm.chat_requests()[-1]["model"] == "fake-model-2"  # v2's config came back
    releases = json.loads(ok(crew.run("releases", "--json")))
    assert [(r["version"], r["kind"]) for r in releases[:4]] == \
        [("v4", "rollback"), ("v3", "push"), ("v2", "config"), ("v1", "push")]


@pytest.mark.slow
def test_force_push_of_the_live_commit_redeploys_it(crew: Crew) -> None:
    crew.needs("restart")
    out = ok(crew.run("deploy", "push", "--force"))
    assert "already has this commit: redeploying it" in out
    assert "no install" in out
    assert "=====> demo-crew v5 is live" in out


@pytest.mark.slow
def test_restart_starts_a_new_instance(crew: Crew) -> None:
    crew.needs("restart")
    before = crew.up_pids()
    out = ok(crew.run("restart"))
    assert "-----> Health check passed" in out
    assert "=====> demo-crew v6 is live" in out
    after = crew.status()
    assert after["release"] == "v6"
    assert crew.up_pids()
    assert not before & crew.up_pids()
    assert "FAKE-LLM-ANSWER" in crew.answer()


@pytest.mark.slow
def test_scale_two_serves_kickoffs_from_both_instances(crew: Crew) -> None:
    crew.needs("ps:scale")
    assert "runs 2 instance(s)" in ok(crew.run("scale", "2"))
    assert len(crew.up_pids()) == 2
    crew.llm.delay = 1.5
    try:
        runs = [subprocess.Popen(
            [sys.executable, "-m", "crewship.cli", "kickoff", "-i", f"topic=t{n}", "-i", "audience=a",
             "--wait", "--json"], cwd=crew.project, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "HOME": str(crew.home), "PYTHONPATH": str(REPO_ROOT)})
            for n in range(4)]
        done = [json.loads(run.communicate(timeout=120)[0]) for run in runs]
    finally:
        crew.llm.delay = 0
    assert all(d["state"] == "SUCCESS" for d in done), done
    assert len({d["instance"] for d in done}) == 2


@pytest.mark.slow
def test_remove_asks_then_removes_the_app_and_its_remote(crew: Crew) -> None:
    declined = crew.run("deploy", "remove", input="n\n")
    assert declined.returncode == 1
    assert "nothing was removed" in declined.stderr
    assert "demo-crew" in app_names(crew.srv)
    out = ok(crew.run("deploy", "remove", "--yes"))
    assert "Crew 'demo-crew' removed successfully." in out
    assert "demo-crew" not in app_names(crew.srv)
    remotes = subprocess.run(["git", "remote"], cwd=crew.project, capture_output=True, text=True)
    assert "crewship" not in remotes.stdout


# ------------------------------------------------------------------ errors
def test_a_refused_key_names_the_keys_offered_and_how_to_register_one(
        srv: CrewshipServer, tmp_path: Path) -> None:
    stranger = srv.make_key("stranger")
    home = make_home(tmp_path, stranger)
    err = failed(crewship(home, tmp_path, "deploy", "list", env=server_env(srv)))
    assert f"the server at 127.0.0.1:{srv.ssh_port} refused your SSH key(s)" in err
    assert f"~/.ssh/id_ed25519 (ssh-ed25519 {key_fingerprint(stranger)})" in err
    assert f"ssh -p {srv.ssh_port} git@127.0.0.1 keys:add NAME --user YOU" in err
    assert "crewship admin add-key" in err

    err = failed(crewship(make_home(tmp_path / "nokey", None), tmp_path, "deploy", "list",
                          env=server_env(srv)))
    assert "no SSH key to offer" in err
    assert "ssh-keygen -t ed25519" in err


def test_an_unknown_or_foreign_app_reads_as_not_found_with_what_to_do(
        srv: CrewshipServer, tmp_path: Path, admin_home: Path) -> None:
    project = skeleton(tmp_path, "ghost_crew")
    err = failed(crewship(admin_home, project, "deploy", "status", env=server_env(srv)))
    assert f"ghost-crew does not exist on 127.0.0.1:{srv.ssh_port} or is not yours" in err
    assert "crewship deploy create" in err
    err = failed(crewship(admin_home, project, "deploy", "status", "--uuid", "0000-none",
                          env=server_env(srv)))
    assert "no app with uuid 0000-none" in err

    srv.ssh(srv.admin_key, "apps:create", "private-app", check=True)
    bob = make_home(tmp_path / "bob", srv.add_user("bob"))
    mine = skeleton(tmp_path / "bob", "private_app")
    err = failed(crewship(bob, mine, "config", "set", "A=1", env=server_env(srv)))
    assert "private-app does not exist" in err
    assert srv.ssh_json(srv.admin_key, "config", "private-app") == {}


def test_an_unreachable_server_says_where_it_looked(tmp_path: Path, admin_home: Path) -> None:
    port = free_port()
    err = failed(crewship(admin_home, tmp_path, "deploy", "list",
                          env={"CREWSHIP_SERVER": f"ssh://git@127.0.0.1:{port}"}))
    assert f"cannot reach the crewship server at 127.0.0.1:{port}" in err
    assert "is 'crewship server' running" in err


def test_failed_validation_shows_code_message_fix_and_creates_nothing(
        srv: CrewshipServer, tmp_path: Path, admin_home: Path) -> None:
    project = skeleton(tmp_path, "demo_crew")
    (project / "src/demo_crew/config/tasks.yaml").unlink()
    result = crewship(admin_home, project, "deploy", "validate")
    assert result.returncode == 1
    assert "ERROR missing_tasks_yaml: Cannot find src/demo_crew/config/tasks.yaml" in result.stdout
    assert "  fix: Create src/demo_crew/config/tasks.yaml" in result.stdout
    before = app_names(srv)
    err = failed(crewship(admin_home, project, "deploy", "create", "--yes", env=server_env(srv)))
    assert "ERROR missing_tasks_yaml" in err
    assert "validation failed with 1 error(s)" in err
    assert app_names(srv) == before
    assert not (project / ".git").exists()


def test_no_server_configured_says_how_to_configure_one(tmp_path: Path, admin_home: Path) -> None:
    project = skeleton(tmp_path)
    err = failed(crewship(admin_home, project, "deploy", "status"))
    assert "no crewship server configured" in err
    assert "crewship remote add ssh://git@HOST:2222" in err
    err = failed(crewship(admin_home, project, "remote", "add", "https://example.test"))
    assert "not a crewship server URL" in err


def test_outside_a_crewai_project(srv: CrewshipServer, tmp_path: Path, admin_home: Path) -> None:
    for args in (("deploy", "create", "--yes"), ("deploy", "push"), ("deploy", "validate")):
        err = failed(crewship(admin_home, tmp_path, *args, env=server_env(srv)))
        assert "not in a CrewAI project: no pyproject.toml" in err


def test_declining_create_changes_nothing(srv: CrewshipServer, tmp_path: Path,
                                          admin_home: Path) -> None:
    project = skeleton(tmp_path, "shy_crew")
    (project / ".env").write_text("OPENAI_API_KEY=sk-secret\n")
    result = crewship(admin_home, project, "deploy", "create", input="n\n", env=server_env(srv))
    assert result.returncode == 1
    assert "1 config var(s) from .env will be stored: OPENAI_API_KEY" in result.stderr
    assert "sk-secret" not in result.stderr + result.stdout
    assert "nothing was created" in result.stderr
    assert "shy-crew" not in app_names(srv)


def test_a_failed_deploy_points_at_the_logs_and_changes_nothing(
        srv: CrewshipServer, tmp_path: Path, admin_home: Path) -> None:
    project = skeleton(tmp_path)
    ok(crewship(admin_home, project, "deploy", "create", "--yes", "--name", "broken-one",
                env=server_env(srv)))
    (project / "src/demo_crew/config/tasks.yaml").unlink()
    subprocess.run(["git", "commit", "-qam", "lose the tasks"], cwd=project, check=True,
                   env={**os.environ, **GIT_IDENTITY})
    result = crewship(admin_home, project, "deploy", "push", "--skip-validate")
    err = failed(result)
    assert "missing_tasks_yaml" in err
    assert "the deploy of broken-one failed" in err
    assert "crewship deploy logs" in err
    assert subprocess.run(["git", "--git-dir", str(srv.repo_path("broken-one")), "rev-parse",
                           "--verify", "-q", "main"], capture_output=True).returncode != 0
    assert srv.ssh_json(srv.admin_key, "status", "broken-one")["release"] is None


def test_a_changed_host_key_is_refused(srv: CrewshipServer, tmp_path: Path,
                                       admin_home: Path) -> None:
    other = srv.make_key("impostor").with_name("impostor.pub")
    kind, blob = other.read_text().split()[:2]
    known = admin_home / ".config/crewship/known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(f"[127.0.0.1]:{srv.ssh_port} {kind} {blob}\n")
    err = failed(crewship(admin_home, tmp_path, "deploy", "list", env=server_env(srv)))
    assert f"the host key of 127.0.0.1:{srv.ssh_port} has CHANGED" in err


def test_bad_arguments_are_refused_before_anything_is_sent(tmp_path: Path,
                                                          admin_home: Path) -> None:
    project = skeleton(tmp_path)
    env = {"CREWSHIP_SERVER": f"ssh://git@127.0.0.1:{free_port()}"}  # would be unreachable
    assert "invalid config name 'lower'" in failed(
        crewship(admin_home, project, "config", "set", "lower=1", env=env))
    assert "is not KEY=VALUE" in failed(
        crewship(admin_home, project, "config", "set", "NOVALUE", env=env))
    assert "invalid app name" in failed(
        crewship(admin_home, project, "deploy", "create", "--yes", "--name", "Bad_Name", env=env))


def test_keys_tokens_and_config_without_a_crew(srv: CrewshipServer, tmp_path: Path,
                                               admin_home: Path) -> None:
    project = skeleton(tmp_path, "tools_crew")
    (project / ".env").write_text("FIRST=1\nSECOND='two words'\n")
    env = server_env(srv)
    ok(crewship(admin_home, project, "deploy", "create", "--yes", env=env))
    shown = json.loads(ok(crewship(admin_home, project, "config", "list", "--show", "--json",
                                   env=env)))
    assert shown == {"FIRST": "1", "SECOND": "two words"}
    assert "Unset FIRST" in ok(crewship(admin_home, project, "config", "unset", "FIRST", env=env))
    assert "nothing to purge" in ok(crewship(admin_home, project, "config", "purge-history",
                                             "FIRST", env=env))
    assert "Set THIRD" in ok(crewship(admin_home, project, "config", "set", "THIRD=a=b", env=env))
    shown = json.loads(ok(crewship(admin_home, project, "config", "list", "--show", "--json",
                                   env=env)))
    assert shown == {"SECOND": "two words", "THIRD": "a=b"}

    first = crewship(admin_home, project, "token", env=env).stdout.strip()
    rotated = crewship(admin_home, project, "token", "--rotate", env=env).stdout.strip()
    assert first.startswith("cs_")
    assert rotated.startswith("cs_")
    assert first != rotated

    laptop = srv.make_key("admin-laptop")
    out = ok(crewship(admin_home, project, "keys", "add", "laptop", f"{laptop}.pub", env=env))
    assert f"added key laptop ({key_fingerprint(laptop)})" in out
    listed = json.loads(ok(crewship(admin_home, project, "keys", "list", "--json", env=env)))
    assert "laptop" in [k["name"] for k in listed]
    assert "removed key laptop" in ok(crewship(admin_home, project, "keys", "remove", "laptop",
                                               env=env))
    assert "not an OpenSSH public key" in failed(
        crewship(admin_home, project, "keys", "add", "oops", str(laptop), env=env))


def test_users_list_and_remove_through_the_client(srv: CrewshipServer, tmp_path: Path,
                                                  admin_home: Path) -> None:
    project = skeleton(tmp_path, "people_crew")
    env = server_env(srv)   # the server from CREWSHIP_SERVER: no app needed
    leaver = srv.add_user("leaver")
    result = crewship(admin_home, project, "users", "list", "--json", env=env)
    ok(result)
    listed = json.loads(result.stdout)
    assert "leaver" in [u["name"] for u in listed]
    out = ok(crewship(admin_home, project, "users", "remove", "leaver", env=env))
    assert "removed leaver: 1 keys" in out
    assert srv.ssh(leaver, "whoami").returncode == 255
