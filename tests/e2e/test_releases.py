"""Releases, rollback, restart, scale, the deploy lock and API tokens (issue #4), against a
real classic crew on a fake LLM. One server for the module; the tests run in file order
and each builds on the releases the ones before it made (v1, v2 pushes; v3 rollback; ...)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_deploy import commit_all, configure, new_project, push, wait_until
from tests.support.crewapi import CrewAPI
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOCK_TIMEOUT = 1.0
# The lock test needs a change that holds the lock well past LOCK_TIMEOUT: a preloaded fork
# is live in tenths of a second, so the crew loads slowly while its HOME holds this file.
SLOW_MARK = "slow-start"
SLOW_START = f"""

import os as _os, time as _time  # noqa: E401,E402
if _os.path.exists(_os.path.join(_os.environ["HOME"], "{SLOW_MARK}")):
    _time.sleep(4)
"""
OLD_TEXT, NEW_TEXT = "short briefing", "crisp briefing"


@dataclass
class Demo:
    srv: CrewshipServer
    llm: FakeLLM
    api: CrewAPI
    project: Path
    v1: str
    v2: str

    def ssh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.srv.ssh(self.srv.admin_key, *args, check=check, timeout=120)

    def releases(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.srv.ssh_json(self.srv.admin_key, "releases", "demo")
        return found

    def live(self) -> dict[str, Any]:
        return next(r for r in self.releases() if r["live"])

    def answer(self) -> str:
        done = self.api.run({"topic": "moss", "audience": "gardeners"})
        assert done["state"] == "SUCCESS", done
        return str(done["result"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    envs = cache_root() / "server-envs"
    srv = CrewshipServer(tmp_path_factory.mktemp("releases"),
                         env={"CREWSHIP_ENVS_DIR": str(envs),
                              "CREWSHIP_DEPLOY_LOCK_TIMEOUT": str(LOCK_TIMEOUT)})
    with FakeLLM() as llm:
        srv.start()
        try:
            api = configure(srv, "demo", llm)
            project = new_project(srv, "classic_crew", tmp_path_factory.mktemp("project"))
            crew_py = project / "src/demo_crew/crew.py"
            crew_py.write_text(crew_py.read_text() + SLOW_START)
            commit_all(srv, project, "a start can be made slow")
            v1 = srv.git(None, "rev-parse", "HEAD", cwd=project).stdout.strip()
            assert "=====> demo v1 is live" in push(srv, project, "demo")
            tasks = project / "src/demo_crew/config/tasks.yaml"
            tasks.write_text(tasks.read_text().replace(OLD_TEXT, NEW_TEXT))
            v2 = commit_all(srv, project, "reword the task")
            assert "=====> demo v2 is live" in push(srv, project, "demo")
            yield Demo(srv, llm, api, project, v1, v2)
        finally:
            srv.close()


def test_releases_lists_both_pushes_newest_first_with_the_live_one_marked(demo: Demo) -> None:
    found = demo.releases()
    assert [(r["version"], r["kind"], r["commit"], r["status"], r["live"]) for r in found] == [
        ("v2", "push", demo.v2, "live", True), ("v1", "push", demo.v1, "superseded", False)]
    assert all(r["created_by"] == "admin" and r["build_available"] for r in found)
    assert found[0]["config_digest"] == found[1]["config_digest"] != ""
    text = demo.ssh("releases", "demo").stdout
    live_line = next(line for line in text.splitlines() if " v2 " in f" {line} ")
    assert live_line.startswith("*")
    assert NEW_TEXT in demo.answer()


def test_rollback_runs_the_old_build_without_installing(demo: Demo) -> None:
    out = demo.ssh("rollback", "demo").stdout
    assert "-----> Reusing v1's build (no install)" in out, out
    assert "Installing dependencies" not in out
    assert "=====> demo v3 is live" in out
    live = demo.live()
    assert (live["version"], live["kind"], live["commit"]) == ("v3", "rollback", demo.v1)
    assert live["description"] == "Rollback to v1"
    assert live["build"] == "v1"
    answer = demo.answer()
    assert OLD_TEXT in answer
    assert NEW_TEXT not in answer
    assert demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")["commit"] == demo.v1


def test_config_change_is_a_release_and_rollback_restores_the_old_config(demo: Demo) -> None:
    before = demo.srv.ssh_json(demo.srv.admin_key, "config", "demo")
    out = demo.ssh("config:set", "demo", "GREETING=hello").stdout
    assert "=====> demo v4 is live" in out
    v4 = demo.live()
    assert (v4["version"], v4["kind"], v4["build"]) == ("v4", "config", "v1")
    v2 = next(r for r in demo.releases() if r["version"] == "v2")
    assert v4["config_digest"] != v2["config_digest"]
    assert "GREETING" in demo.srv.ssh_json(demo.srv.admin_key, "config", "demo")

    out = demo.ssh("rollback", "demo", "v2").stdout
    assert "Reusing v2's build (no install)" in out
    v5 = demo.live()
    assert (v5["version"], v5["kind"], v5["commit"]) == ("v5", "rollback", demo.v2)
    assert v5["config_digest"] == v2["config_digest"]
    assert demo.srv.ssh_json(demo.srv.admin_key, "config", "demo") == before
    assert NEW_TEXT in demo.answer()


def test_restart_is_a_new_release_of_the_same_commit(demo: Demo) -> None:
    out = demo.ssh("restart", "demo").stdout
    assert "no install" in out
    assert "-----> Health check passed" in out
    assert "=====> demo v6 is live" in out
    v6 = demo.live()
    assert (v6["kind"], v6["commit"], v6["build"], v6["description"]) == \
        ("restart", demo.v2, "v2", "Restart of v5")
    status = demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")
    assert (status["state"], status["release"]) == ("running", "v6")
    assert NEW_TEXT in demo.answer()


@pytest.mark.parametrize(("args", "message"), [
    (("rollback", "demo", "v99"), "there is no release v99"),
    (("rollback", "demo", "banana"), "is not a release: use vN"),
    (("rollback", "demo", "v6"), "v6 is already live"),
    (("rollback", "nope"), "app not found: 'nope'"),
    (("ps:scale", "demo", "11"), "scale must be between 0 and 10"),
    (("ps:scale", "demo", "two"), "N must be a whole number"),
    (("ps:scale", "demo", "-1"), "N must be a whole number"),
    (("restart", "demo", "extra"), "unrecognized arguments"),
    (("api-tokens:revoke", "x"), "ID must be a token id"),
    (("api-tokens:create", "--expires-days", "0"), "between 1 and 3650"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(
        demo: Demo, args: tuple[str, ...], message: str) -> None:
    before = demo.releases()
    result = demo.ssh(*args, check=False)
    assert result.returncode != 0
    assert result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert demo.releases() == before


def test_scale_to_two_spreads_kickoffs_over_both_instances(demo: Demo) -> None:
    out = demo.ssh("ps:scale", "demo", "2").stdout
    assert "=====> demo runs 2 instance(s) of v6" in out
    status = demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")
    assert status["scale"] == 2
    assert [i["state"] for i in status["instances"]] == ["up", "up"]
    demo.llm.delay = 1.5
    try:
        ids = [demo.api.kickoff({"topic": f"t{n}", "audience": "a"}) for n in range(4)]
        done = [demo.api.wait(kickoff_id) for kickoff_id in ids]
    finally:
        demo.llm.delay = 0
    assert all(d["state"] == "SUCCESS" for d in done), done
    assert len({d["instance"] for d in done}) == 2
    assert demo.releases()[0]["version"] == "v6"  # scaling makes no release


def test_scale_to_zero_stops_the_app_until_it_is_scaled_up(demo: Demo) -> None:
    out = demo.ssh("ps:scale", "demo", "0").stdout
    assert "kickoffs get 503" in out
    status = demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")
    assert (status["state"], status["scale"]) == ("stopped", 0)
    refused = demo.api.post("/kickoff", json={"inputs": {"topic": "a", "audience": "b"}})
    assert refused.status_code == 503
    assert "scaled to 0" in refused.json()["message"]
    assert "ps:scale demo 1" in refused.json()["message"]
    assert demo.api.get("/").status_code == 503

    demo.ssh("ps:scale", "demo", "1")
    status = demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")
    assert (status["state"], status["scale"], len(status["instances"])) == ("running", 1, 1)
    assert NEW_TEXT in demo.answer()


def test_a_second_change_waits_for_the_lock_says_for_what_then_gives_up(demo: Demo) -> None:
    slow = demo.srv.data_dir / "homes" / "demo" / SLOW_MARK
    slow.write_text("the restart's instance loads for 4 s\n")
    holder = subprocess.Popen([*demo.srv.ssh_argv(demo.srv.admin_key), "restart", "demo"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")["state"]
                   == "deploying", timeout=30, what="the restart to start")
        waiter = demo.ssh("ps:scale", "demo", "2", check=False)
    finally:
        _out, err = holder.communicate(timeout=120)
        slow.unlink()
    assert holder.returncode == 0, err
    assert "Waiting for admin's restart of demo (started " in waiter.stdout, waiter.stdout
    assert waiter.returncode != 0
    assert "gave up after 1s: admin's restart of demo" in waiter.stderr, waiter.stderr
    assert "try again when it is done" in waiter.stderr
    assert demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")["scale"] == 1
    assert demo.live()["version"] == "v7"


def test_rollback_to_a_removed_build_fails_and_changes_nothing(demo: Demo) -> None:
    build = demo.srv.data_dir / "releases" / "demo" / "v1"
    subprocess.run(["chmod", "-R", "u+w", str(build)], check=True)
    shutil.rmtree(build)
    before = demo.releases()
    assert not next(r for r in before if r["version"] == "v1")["build_available"]
    result = demo.ssh("rollback", "demo", "v1", check=False)
    assert result.returncode != 0
    assert "v1's build was removed" in result.stderr
    assert f"push its commit {demo.v1[:12]} again" in result.stderr
    assert demo.releases() == before
    assert demo.api.get("/").status_code == 200


def test_api_tokens_are_created_listed_and_revoked(demo: Demo) -> None:
    created = demo.ssh("api-tokens:create", "--expires-days", "30")
    token = created.stdout.strip()
    assert token.startswith("csu_")
    assert "shown once" in created.stderr
    listed = demo.srv.ssh_json(demo.srv.admin_key, "api-tokens")
    assert len(listed) == 1
    assert listed[0]["prefix"] == token[:12]
    assert listed[0]["expires_at"]
    assert not listed[0]["expired"]
    assert token not in demo.ssh("api-tokens").stdout
    bob = demo.srv.add_user("bob")
    assert demo.srv.ssh_json(bob, "api-tokens") == []
    other = demo.srv.ssh(bob, "api-tokens:revoke", str(listed[0]["id"]))
    assert other.returncode != 0
    assert "bob has no API token" in other.stderr

    revoked = demo.ssh("api-tokens:revoke", str(listed[0]["id"]))
    assert "revoked API token" in revoked.stdout
    assert demo.srv.ssh_json(demo.srv.admin_key, "api-tokens") == []
    assert "help" in demo.ssh("help").stdout
    for name in ("releases", "rollback", "restart", "ps:scale", "api-tokens:create"):
        assert f"  {name} " in demo.ssh("help").stdout


def test_scale_survives_a_daemon_restart(demo: Demo) -> None:
    demo.ssh("ps:scale", "demo", "2")
    demo.srv.restart()
    wait_until(lambda: len([i for i in demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")
                            ["instances"] if i["state"] == "up"]) == 2,
               timeout=90, what="both instances to come back")
    assert demo.srv.ssh_json(demo.srv.admin_key, "status", "demo")["scale"] == 2
    assert NEW_TEXT in demo.answer()
