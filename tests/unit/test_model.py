"""The pure rules: app/user/key/config names and the access matrix."""

from __future__ import annotations

import pytest

from crewship.errors import InvalidInputError
from crewship.model import (
    AccessLevel,
    App,
    User,
    access_level,
    validate_app_name,
    validate_config_key,
    validate_key_name,
    validate_user_name,
)

ADMIN = User(1, "root", is_admin=True)
OWNER = User(2, "olive", is_admin=False)
OTHER = User(3, "otto", is_admin=False)
APP = App(1, "demo", "0b7c0e7e-0000-4000-8000-000000000000", owner="olive", created_at="now")
ORPHAN = App(2, "orphan", "0b7c0e7e-0000-4000-8000-000000000001", owner=None, created_at="now")

L = AccessLevel


@pytest.mark.parametrize(("user", "app", "grant", "expected"), [
    # admins: admin everywhere, whatever their grant
    (ADMIN, APP, None, L.ADMIN),
    (ADMIN, APP, L.READ, L.ADMIN),
    (ADMIN, ORPHAN, None, L.ADMIN),
    (ADMIN, None, None, L.ADMIN),
    # the owner: admin on their app
    (OWNER, APP, None, L.ADMIN),
    (OWNER, APP, L.READ, L.ADMIN),
    # owner of nothing: their grant, or none
    (OWNER, ORPHAN, None, L.NONE),
    (OTHER, APP, None, L.NONE),
    (OTHER, APP, L.READ, L.READ),
    (OTHER, APP, L.DEPLOY, L.DEPLOY),
    (OTHER, APP, L.ADMIN, L.ADMIN),
    # an app that does not exist yet: any known user may create it by pushing
    (OTHER, None, None, L.DEPLOY),
    (OTHER, None, L.READ, L.DEPLOY),
])
def test_access_level_matrix(user: User, app: App | None, grant: AccessLevel | None,
                             expected: AccessLevel) -> None:
    assert access_level(user, app, grant) is expected


def test_access_levels_are_ordered() -> None:
    assert L.NONE < L.READ < L.DEPLOY < L.ADMIN
    assert [str(level) for level in L] == ["none", "read", "deploy", "admin"]


@pytest.mark.parametrize(("text", "level"), [
    ("read", L.READ), ("deploy", L.DEPLOY), ("admin", L.ADMIN), ("READ", L.READ)])
def test_access_level_parse(text: str, level: AccessLevel) -> None:
    assert AccessLevel.parse(text) is level


@pytest.mark.parametrize(("text", "message"), [
    ("owner", "unknown access level 'owner'"), ("", "unknown access level"),
    ("none", "access:remove")])
def test_access_level_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        AccessLevel.parse(text)


@pytest.mark.parametrize("name", [
    "ab", "demo", "my-crew", "crew2", "a1", "a" * 39, "research-crew-v2"])
def test_valid_app_names_are_returned_unchanged(name: str) -> None:
    assert validate_app_name(name) == name


@pytest.mark.parametrize("name", [
    "", "a", "a" * 40, "a" * 200, "Demo", "1crew", "-crew", "my_crew", "my.crew", "../x",
    "/etc/passwd", "etc/passwd", "Bad_Name", "crew ", " crew", "crew\n", "créw", "crew;ls",
    "crew.git", "a\x00b"])
def test_invalid_app_names_are_refused_not_rewritten(name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid app name"):
        validate_app_name(name)


def test_long_app_name_is_truncated_in_the_message() -> None:
    with pytest.raises(InvalidInputError) as raised:
        validate_app_name("b" * 200)
    message = str(raised.value)
    assert "b" * 47 + "..." in message
    assert "b" * 48 not in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["bob", "b", "bob.smith", "bob_1", "b-2", "a" * 39])
def test_valid_user_names(name: str) -> None:
    assert validate_user_name(name) == name


@pytest.mark.parametrize("name", ["", "Bob", "1bob", "bob smith", "a" * 40, "../bob", "bob@x"])
def test_invalid_user_names(name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid user name"):
        validate_user_name(name)


@pytest.mark.parametrize("name", ["laptop", "Work-Laptop", "me@host", "k.1", "x" * 64])
def test_valid_key_names(name: str) -> None:
    assert validate_key_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", "a b", "x" * 65, "a/b", ".hidden"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid key name"):
        validate_key_name(name)


@pytest.mark.parametrize("key", ["OPENAI_API_KEY", "_X", "A1", "MODEL"])
def test_valid_config_keys(key: str) -> None:
    assert validate_config_key(key) == key


@pytest.mark.parametrize("key", ["", "openai_api_key", "1KEY", "A-B", "A B", "A=B"])
def test_invalid_config_keys(key: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid config name"):
        validate_config_key(key)
