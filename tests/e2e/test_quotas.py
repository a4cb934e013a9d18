"""Quotas per user (issue 19): apps, instances and memory, over SSH with the real client.

No crew runs here: apps are created and scaled before any release is live (the scale
is stored and counts against the owner's quota all the same).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_accounts import error_line
from tests.support.server import CrewshipServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("quotas"),
                            env={"CREWSHIP_QUOTA_APPS": "5"})
    server.start()
    yield server
    server.close()


def test_quotas_set_bob_apps_3_instances_4_refuses_his_4th_app_and_5th_instance(
        srv: CrewshipServer) -> None:
    bob = srv.add_user("bob")
    done = srv.ssh(srv.admin_key, "quotas:set", "bob", "apps=3", "instances=4", check=True)
    assert "apps 0 of 3" in done.stdout
    for name in ("bob-one", "bob-two", "bob-three"):
        srv.ssh(bob, "apps:create", name, check=True)

    fourth = srv.ssh(bob, "apps:create", "bob-four")
    assert error_line(fourth) == ("error: quota apps=3 reached: bob owns 3 app(s); destroy one "
                                  "or ask an admin ('quotas:set bob apps=N')")
    assert "bob-four" not in srv.ssh(srv.admin_key, "apps", check=True).stdout
    # a push that would create the app is refused the same way, and creates nothing
    project = srv.data_dir.parent / "bob-project"
    srv.init_repo(project, {"README.md": "hello\n"})
    pushed = srv.git(bob, "push", srv.git_url("bob-four"), "HEAD:main", cwd=project, check=False)
    assert pushed.returncode != 0
    assert "quota apps=3 reached" in pushed.stderr
    assert not srv.repo_path("bob-four").exists()

    srv.ssh(bob, "ps:scale", "bob-one", "2", check=True)          # 2 + 1 + 1 = 4
    fifth = srv.ssh(bob, "ps:scale", "bob-two", "2")
    assert error_line(fifth) == ("error: quota instances=4 exceeded: bob's apps run 4 "
                                 "instance(s), scaling bob-two to 2 would make 5")
    assert srv.ssh_json(bob, "status", "bob-two")["scale"] == 1

    shown = srv.ssh_json(bob, "quotas")
    assert shown == [{"user": "bob", "source": "set by admin",
                      "apps": {"quota": 3, "used": 3}, "instances": {"quota": 4, "used": 4},
                      "memory": {"quota": None, "used": 0}}]
    # only admins set quotas or see others'; admins are exempt by default
    assert "only an admin" in error_line(srv.ssh(bob, "quotas:set", "bob", "apps=9"))
    assert "only an admin" in error_line(srv.ssh(bob, "quotas", "admin"))
    assert srv.ssh_json(srv.admin_key, "quotas")[0]["source"] == "admin (exempt)"
    assert "is not apps=N" in error_line(srv.ssh(srv.admin_key, "quotas:set", "bob", "cpus=2"))


def test_the_default_quota_applies_to_users_without_one_and_memory_needs_limits(
        srv: CrewshipServer) -> None:
    carol = srv.add_user("carol")
    assert srv.ssh_json(carol, "quotas")[0]["apps"] == {"quota": 5, "used": 0}  # the default
    srv.ssh(srv.admin_key, "quotas:set", "carol", "memory=1g", check=True)
    srv.ssh(carol, "apps:create", "carol-one", check=True)
    assert "needs a memory limit" in error_line(srv.ssh(carol, "ps:scale", "carol-one", "2"))
    srv.ssh(carol, "ps:limits", "carol-one", "--memory", "512m", check=True)
    srv.ssh(carol, "ps:scale", "carol-one", "2", check=True)
    refused = error_line(srv.ssh(carol, "ps:limits", "carol-one", "--memory", "768m"))
    assert refused == ("error: quota memory=1g exceeded: carol's apps reserve 1g, carol-one "
                       "at 2 x 768m would make 1536m")


def test_admins_list_every_users_quota_and_use(srv: CrewshipServer) -> None:
    srv.add_user("dave")
    rows = {r["user"]: r for r in srv.ssh_json(srv.admin_key, "quotas", "--all")}
    assert rows["dave"]["source"] == "default"
    assert rows["dave"]["apps"] == {"quota": 5, "used": 0}
    assert rows["admin"]["source"] == "admin (exempt)"
    text = srv.ssh(srv.admin_key, "quotas", "dave", check=True).stdout
    assert text.splitlines()[0].split() == ["USER", "APPS", "INSTANCES", "MEMORY", "QUOTA"]
    assert "0 of 5" in text
    assert "unlimited" in text
