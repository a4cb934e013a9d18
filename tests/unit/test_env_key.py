"""Dependency environments are keyed by what decides them, not by the project's name."""

from __future__ import annotations

from builder.env import Interpreter, env_key, lock_identity

PY = Interpreter("/usr/bin/python3", "3.11.7", "3.11.7 (main)", "/usr/bin/python3.11")


def lock(project: str, deps: str = '{ name = "crewai" }', crewai: str = "1.15.30") -> bytes:
    root = (f'[[package]]\nname = "{project}"\nversion = "0.1.0"\nsource = {{ editable = "." }}\n'
            f"dependencies = [\n    {deps},\n]\n\n")
    crew = (f'[[package]]\nname = "crewai"\nversion = "{crewai}"\n'
            'source = { registry = "https://pypi.org/simple" }\n\n')
    head = 'version = 1\nrevision = 3\nrequires-python = ">=3.10, <3.14"\n\n'
    # uv sorts packages by name: the project's entry lands before or after crewai
    return (head + (root + crew if project < "crewai" else crew + root)).encode()


def test_projects_that_differ_only_in_their_name_share_an_env() -> None:
    assert env_key(lock("alpha"), PY) == env_key(lock("zulu_flow"), PY)


def test_a_different_dependency_or_version_is_a_different_env() -> None:
    base = env_key(lock("demo"), PY)
    assert env_key(lock("demo", crewai="1.15.31"), PY) != base
    assert env_key(lock("demo", deps='{ name = "crewai", extra = ["tools"] }'), PY) != base


def test_a_lock_that_is_not_toml_is_keyed_as_it_is() -> None:
    assert lock_identity(b"\xff not toml [") == b"\xff not toml ["
    assert env_key(b"junk = [", PY) != env_key(b"junk = [[", PY)
