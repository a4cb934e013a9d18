"""Security regressions for backups over SSH: only admins list, make or verify them
(an archive holds the host key, the secrets key and every app's state)."""

from __future__ import annotations

import pytest

from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e]


def test_backups_commands_are_for_admins_only(server: CrewshipServer) -> None:
    bob = server.add_user("bob")
    for args in (("backups",), ("backups:create",), ("backups:verify",)):
        result = server.ssh(bob, *args)
        assert result.returncode != 0
        assert "only an admin can manage backups" in result.stderr + result.stdout
    assert list((server.data_dir / "backups").glob("*.tar")) == []
    empty = server.ssh(server.admin_key, "backups", check=True).stdout
    assert "no backups yet" in empty
    missing = server.ssh(server.admin_key, "backups:verify", "20200101")
    assert missing.returncode != 0
    assert "there is no backup yet" in missing.stderr + missing.stdout
