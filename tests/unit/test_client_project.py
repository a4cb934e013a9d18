"""The client's pure parts: app names from [project].name, .env parsing, findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.project import Finding
from crewship.client.errors import NotAProjectError
from crewship.client.project import (
    app_for_uuid,
    find_project,
    format_findings,
    normalize_app_name,
    parse_dotenv,
    read_dotenv,
)
from crewship.errors import InvalidInputError


@pytest.mark.parametrize(("name", "app"), [
    ("demo_crew", "demo-crew"),
    ("Demo_Crew", "demo-crew"),
    ("my crew", "my-crew"),
    ("already-fine", "already-fine"),
    ("  padded_name  ", "padded-name"),
    ("a__b", "a-b"),
])
def test_project_names_become_app_names(name: str, app: str) -> None:
    assert normalize_app_name(name) == app


@pytest.mark.parametrize("name", ["1crew", "x", "crew.name", "c" * 40, "über_crew", "_crew"])
def test_names_that_stay_invalid_are_refused_with_the_name_hint(name: str) -> None:
    with pytest.raises(InvalidInputError, match="--name"):
        normalize_app_name(name)


def test_dotenv_is_read_like_the_crewai_cli_with_one_pair_of_quotes_removed() -> None:
    text = """
# a comment
MODEL="openai/gpt-4o-mini"
OPENAI_API_KEY = sk-abc=def
SINGLE='it''s'
EMPTY=
INLINE=value # kept, like the crewai CLI
export EXPORTED=yes
NESTED="'inner'"
ONE_QUOTE="open
"""
    assert parse_dotenv(text) == {
        "MODEL": "openai/gpt-4o-mini",
        "OPENAI_API_KEY": "sk-abc=def",
        "SINGLE": "it''s",
        "EMPTY": "",
        "INLINE": "value # kept, like the crewai CLI",
        "EXPORTED": "yes",
        "NESTED": "'inner'",
        "ONE_QUOTE": '"open',
    }


def test_a_line_without_equals_is_an_error_naming_the_line() -> None:
    with pytest.raises(InvalidInputError, match="line 3 is not KEY=VALUE"):
        parse_dotenv("A=1\n\nnot a pair\n")


@pytest.mark.parametrize("line", ["lower=1", "1ABC=x", "A-B=x", "=x"])
def test_bad_config_names_in_dotenv_are_refused(line: str) -> None:
    with pytest.raises(InvalidInputError, match="line 1"):
        parse_dotenv(line)


def test_missing_dotenv_is_no_values(tmp_path: Path) -> None:
    assert read_dotenv(tmp_path) == {}
    (tmp_path / ".env").write_text("A=1\n")
    assert read_dotenv(tmp_path) == {"A": "1"}


def write_pyproject(root: Path, text: str) -> None:
    (root / "pyproject.toml").write_text(text)


def test_find_project_reads_the_name_of_a_crewai_project(tmp_path: Path) -> None:
    write_pyproject(tmp_path, '[project]\nname = "demo_crew"\ndependencies = ["crewai==1.15.30"]\n')
    project = find_project(tmp_path)
    assert (project.name, project.app, project.root) == ("demo_crew", "demo-crew", tmp_path)


def test_a_tool_crewai_table_is_enough(tmp_path: Path) -> None:
    write_pyproject(tmp_path, '[project]\nname = "x-y"\n[tool.crewai]\ntype = "crew"\n')
    assert find_project(tmp_path).app == "x-y"


@pytest.mark.parametrize(("text", "message"), [
    (None, "no pyproject.toml"),
    ("[project\n", "not valid TOML"),
    ('[project]\nversion = "1"\n', r"no \[project\].name"),
    ('[project]\nname = "web"\ndependencies = ["flask"]\n', "not a CrewAI project"),
])
def test_not_a_crewai_project(tmp_path: Path, text: str | None, message: str) -> None:
    if text is not None:
        write_pyproject(tmp_path, text)
    with pytest.raises(NotAProjectError, match=message):
        find_project(tmp_path)


def test_findings_show_code_message_and_fix() -> None:
    lines = format_findings([
        Finding("missing_tasks_yaml", "error", "Cannot find config/tasks.yaml",
                fix="Create it.", detail="Why it matters."),
        Finding("hatch_wheel_target_missing", "warning", "Hatchling", fix="Add:\n  [x]"),
    ])
    assert lines == [
        "ERROR missing_tasks_yaml: Cannot find config/tasks.yaml",
        "  Why it matters.",
        "  fix: Create it.",
        "WARNING hatch_wheel_target_missing: Hatchling",
        "  fix: Add:",
        "         [x]",
    ]


def test_app_for_uuid() -> None:
    apps = [{"name": "a", "uuid": "1111-AAAA"}, {"name": "b", "uuid": "2222"}]
    assert app_for_uuid(apps, "1111-aaaa") == "a"
    assert app_for_uuid(apps, " 2222 ") == "b"
    assert app_for_uuid(apps, "3333") is None
