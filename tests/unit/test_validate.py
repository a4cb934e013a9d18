"""The server-side pre-deploy checks, on small project trees written in tmp_path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from builder.project import Finding, json_crew_errors, parse_jsonc, strip_jsonc
from builder.validate import MISSING_LOCKFILE, Validation, validate

LOCK = 'version = 1\nrevision = 3\nrequires-python = ">=3.10"\n'
HATCH = '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def pyproject(name: str = "demo_crew", extra: str = "") -> str:
    return (f'[project]\nname = "{name}"\nversion = "0.1.0"\n'
            'requires-python = ">=3.10,<3.14"\ndependencies = ["crewai[tools]>=1.15.30,<2.0.0"]\n'
            f"{HATCH}{extra}")


def classic_crew(root: Path) -> Path:
    return write(root, {
        "pyproject.toml": pyproject(extra='[tool.crewai]\ntype = "crew"\n'),
        "uv.lock": LOCK,
        "src/demo_crew/__init__.py": "",
        "src/demo_crew/main.py": "def run():\n    pass\n",
        "src/demo_crew/crew.py": "class DemoCrew:\n    pass\n",
        "src/demo_crew/config/agents.yaml": "researcher:\n  role: r\n",
        "src/demo_crew/config/tasks.yaml": "research_task:\n  description: d\n",
    })


CREW_JSONC = """{
  // Display name for this crew
  "name": "Demo",
  "agents": ["researcher", "writer",],  // trailing comma
  "tasks": [
    {"name": "research", "description": "Research {topic} // not a comment",
     "expected_output": "notes", "agent": "researcher"},
    /* block
       comment */
    {"description": "Write", "expected_output": "text", "agent": "writer",},
  ],
  "process": "sequential",
  "inputs": {"topic": "AI"}
}
"""
AGENT = '{\n  // role\n  "role": "R", "goal": "G", "backstory": "B", "llm": "openai/gpt-4o",\n}\n'


def json_crew(root: Path) -> Path:
    extra = ('[tool.hatch.build.targets.wheel]\nonly-include = ["agents", "crew.jsonc"]\n'
             '[tool.crewai]\ntype = "crew"\ndefinition = "crew.jsonc"\n')
    return write(root, {
        "pyproject.toml": pyproject(extra=extra),
        "uv.lock": LOCK,
        "crew.jsonc": CREW_JSONC,
        "agents/researcher.jsonc": AGENT,
        "agents/writer.json": '{"role": "W", "goal": "G", "backstory": "B"}',
    })


def python_flow(root: Path) -> Path:
    return write(root, {
        "pyproject.toml": pyproject("demo_flow", '[tool.crewai]\ntype = "flow"\n'),
        "uv.lock": LOCK,
        "src/demo_flow/__init__.py": "",
        "src/demo_flow/main.py": "def kickoff():\n    pass\n",
        "src/demo_flow/crews/content_crew/config/agents.yaml": "a: {}\n",
    })


def declarative_flow(root: Path) -> Path:
    extra = ('[tool.hatch.build.targets.wheel]\npackages = ["src/demo_flow"]\n'
             '[tool.crewai]\ntype = "flow"\ndefinition = "src/demo_flow/flow.yaml"\n')
    return write(root, {
        "pyproject.toml": pyproject("demo_flow", extra),
        "uv.lock": LOCK,
        "src/demo_flow/flow.yaml": "schema: crewai.flow/v1\nname: demo\nmethods: {}\n",
    })


def entrypoint_project(root: Path) -> Path:
    return write(root, {
        "pyproject.toml": pyproject("my-app", '[tool.crewship]\nentrypoint = "svc.app:build"\n'),
        "uv.lock": LOCK,
        "src/svc/__init__.py": "",
        "src/svc/app.py": "def build():\n    pass\n",
    })


def codes(result: Validation) -> list[str]:
    return [f.code for f in result.findings]


def only(result: Validation, code: str) -> Finding:
    found = [f for f in result.findings if f.code == code]
    assert len(found) == 1, codes(result)
    return found[0]


# -- the valid layouts --------------------------------------------------------------------

def test_classic_crew_is_valid(tmp_path: Path) -> None:
    result = validate(classic_crew(tmp_path))
    assert result.ok
    assert result.findings == ()
    assert result.info is not None
    assert (result.info.kind, result.info.package) == ("crew", "demo_crew")
    assert result.info.requires_python == ">=3.10,<3.14"
    assert result.info.definition is None
    assert result.info.entrypoint is None


def test_json_crew_is_valid(tmp_path: Path) -> None:
    result = validate(json_crew(tmp_path))
    assert result.findings == ()
    assert result.info is not None
    assert (result.info.kind, result.info.definition) == ("json_crew", "crew.jsonc")


def test_python_flow_is_valid(tmp_path: Path) -> None:
    result = validate(python_flow(tmp_path))
    assert result.findings == ()
    assert result.info is not None
    assert result.info.kind == "flow"


def test_declarative_flow_needs_no_main_py(tmp_path: Path) -> None:
    result = validate(declarative_flow(tmp_path))
    assert "missing_flow_main" not in codes(result)
    assert result.findings == ()
    assert result.info is not None
    assert result.info.kind == "declarative_flow"
    assert result.info.definition == "src/demo_flow/flow.yaml"


def test_entrypoint_project_is_valid(tmp_path: Path) -> None:
    result = validate(entrypoint_project(tmp_path))
    assert result.findings == ()
    assert result.info is not None
    assert (result.info.kind, result.info.entrypoint) == ("entrypoint", "svc.app:build")
    assert result.info.package == "my_app"


def test_entrypoint_wins_over_crewai_type(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    write(tmp_path, {"pyproject.toml": pyproject(
        extra='[tool.crewai]\ntype = "crew"\n[tool.crewship]\nentrypoint = "demo_crew.crew:x"\n')})
    result = validate(tmp_path)
    assert result.ok
    assert result.info is not None
    assert result.info.kind == "entrypoint"


# -- pyproject and lockfile -----------------------------------------------------------------

def test_missing_pyproject(tmp_path: Path) -> None:
    result = validate(tmp_path)
    assert codes(result) == ["missing_pyproject"]
    assert result.info is None
    assert only(result, "missing_pyproject").fix.startswith("Run `crewai create crew")


def test_invalid_pyproject(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project\nname = ", "uv.lock": LOCK})
    result = validate(tmp_path)
    assert codes(result) == ["invalid_pyproject"]
    assert only(result, "invalid_pyproject").message == "pyproject.toml is not valid TOML"


@pytest.mark.parametrize("project", ['[project]\nversion = "1"\n', '[project]\nname = "  "\n'])
def test_missing_project_name(tmp_path: Path, project: str) -> None:
    write(tmp_path, {"pyproject.toml": project, "uv.lock": LOCK})
    assert codes(validate(tmp_path)) == ["missing_project_name"]


def test_missing_lockfile_carries_the_cli_message_and_fix(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    (tmp_path / "uv.lock").unlink()
    finding = only(validate(tmp_path), "missing_lockfile")
    assert finding == MISSING_LOCKFILE
    assert finding.severity == "error"
    assert finding.message == ("Expected to find at least one of these files: "
                               "uv.lock or poetry.lock")
    assert finding.fix == ("Run `uv lock` (recommended) or `poetry lock` in your project "
                           "directory, commit the lockfile, then redeploy.")


def test_poetry_lock_only_is_refused(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    (tmp_path / "uv.lock").unlink()
    write(tmp_path, {"poetry.lock": "# poetry\n"})
    finding = only(validate(tmp_path), "missing_lockfile")
    assert "poetry.lock" in finding.message
    assert "uv.lock" in finding.message
    assert "uv lock" in finding.fix


# -- package layout ------------------------------------------------------------------------

def test_missing_src_dir(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": pyproject(), "uv.lock": LOCK})
    assert codes(validate(tmp_path)) == ["missing_src_dir", "hatch_wheel_target_missing"]


def test_missing_package_dir_names_siblings_and_egg_info(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": pyproject(), "uv.lock": LOCK,
                     "src/other/crew.py": "", "src/demo.egg-info/PKG-INFO": ""})
    result = validate(tmp_path)
    assert codes(result) == ["missing_package_dir", "hatch_wheel_target_missing"]
    finding = only(result, "missing_package_dir")
    assert finding.message == "Cannot find src/demo_crew/"
    assert "other" in finding.fix
    assert "demo.egg-info" in finding.fix
    assert 'packages = ["src/demo_crew"]' in only(result, "hatch_wheel_target_missing").fix


def test_hatch_target_configured_is_enough(tmp_path: Path) -> None:
    extra = '[tool.hatch.build.targets.wheel]\npackages = ["src/x"]\n'
    write(tmp_path, {"pyproject.toml": pyproject(extra=extra), "uv.lock": LOCK})
    assert codes(validate(tmp_path)) == ["missing_src_dir"]


def test_stale_egg_info_is_a_warning(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    write(tmp_path, {"src/demo_crew.egg-info/PKG-INFO": ""})
    result = validate(tmp_path)
    assert result.ok
    assert only(result, "stale_egg_info").severity == "warning"


def test_missing_crew_py(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    (tmp_path / "src/demo_crew/crew.py").unlink()
    finding = only(validate(tmp_path), "missing_crew_py")
    assert finding.message == "Cannot find src/demo_crew/crew.py"


def test_missing_config_dir(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    for name in ("agents.yaml", "tasks.yaml"):
        (tmp_path / "src/demo_crew/config" / name).unlink()
    (tmp_path / "src/demo_crew/config").rmdir()
    assert codes(validate(tmp_path)) == ["missing_config_dir"]


@pytest.mark.parametrize("name", ["agents", "tasks"])
def test_missing_config_yaml(tmp_path: Path, name: str) -> None:
    classic_crew(tmp_path)
    (tmp_path / f"src/demo_crew/config/{name}.yaml").unlink()
    finding = only(validate(tmp_path), f"missing_{name}_yaml")
    assert finding.message == f"Cannot find src/demo_crew/config/{name}.yaml"


def test_missing_flow_main(tmp_path: Path) -> None:
    python_flow(tmp_path)
    (tmp_path / "src/demo_flow/main.py").unlink()
    assert codes(validate(tmp_path)) == ["missing_flow_main"]


def test_declarative_flow_with_missing_definition(tmp_path: Path) -> None:
    declarative_flow(tmp_path)
    (tmp_path / "src/demo_flow/flow.yaml").unlink()
    assert codes(validate(tmp_path)) == ["invalid_flow_definition"]


def test_errors_come_in_the_cli_order(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": pyproject(), "src/demo_crew/__init__.py": "",
                     "src/x.egg-info/PKG-INFO": ""})
    assert codes(validate(tmp_path)) == [
        "missing_lockfile", "stale_egg_info", "missing_crew_py", "missing_config_dir"]


# -- JSON crews ------------------------------------------------------------------------------

@pytest.mark.parametrize("definition", ["/etc/passwd", "../crew.jsonc", "nope.jsonc", "agents",
                                        "~/crew.jsonc", ""])
def test_invalid_crew_definition(tmp_path: Path, definition: str) -> None:
    json_crew(tmp_path)
    write(tmp_path, {"pyproject.toml": pyproject(
        extra=f'[tool.crewai]\ntype = "crew"\ndefinition = "{definition}"\n')})
    result = validate(tmp_path)
    assert codes(result) == ["invalid_crew_definition"]
    assert only(result, "invalid_crew_definition").detail.startswith("[tool.crewai] definition")


def test_missing_agents_dir(tmp_path: Path) -> None:
    json_crew(tmp_path)
    for path in (tmp_path / "agents").iterdir():
        path.unlink()
    (tmp_path / "agents").rmdir()
    assert codes(validate(tmp_path)) == ["missing_agents_dir"]


@pytest.mark.parametrize(("crew", "expected"), [
    ('{"name": "x", "agents": ["researcher"], "tasks": [', "invalid JSON at line 1"),
    ('["not an object"]', "expected a JSON object"),
    ('{"agents": ["researcher"], "tasks": [{"description": "d", "expected_output": "o", '
     '"agent": "researcher"}]}', "'name' must be a non-empty string"),
    ('{"name": "x", "agents": [], "tasks": []}', "'agents' must be a non-empty list"),
    ('{"name": "x", "agents": ["ghost"], "tasks": [{"description": "d", "expected_output": "o",'
     ' "agent": "ghost"}]}', "agent 'ghost' not found in agents/"),
    ('{"name": "x", "agents": ["researcher"], "tasks": [{"description": "d", "agent": '
     '"researcher"}]}', "missing required field 'expected_output'"),
    ('{"name": "x", "agents": ["researcher"], "tasks": [{"description": "d", '
     '"expected_output": "o"}]}', "has no 'agent'"),
    ('{"name": "x", "agents": ["researcher"], "tasks": [{"description": "d", '
     '"expected_output": "o", "agent": "writer"}]}', "references agent 'writer'"),
])
def test_invalid_crew_json(tmp_path: Path, crew: str, expected: str) -> None:
    json_crew(tmp_path)
    write(tmp_path, {"crew.jsonc": crew})
    result = validate(tmp_path)
    assert codes(result) == ["invalid_crew_json"]
    finding = only(result, "invalid_crew_json")
    assert finding.message == "crew.jsonc has invalid JSON crew configuration"
    assert expected in finding.detail


def test_agent_missing_required_fields(tmp_path: Path) -> None:
    json_crew(tmp_path)
    write(tmp_path, {"agents/writer.json": '{"role": "W"}'})
    detail = only(validate(tmp_path), "invalid_crew_json").detail
    assert "agents/writer.json: missing required field 'goal'" in detail
    assert "missing required field 'backstory'" in detail


def test_hierarchical_tasks_need_no_agent(tmp_path: Path) -> None:
    errors = json_crew_errors(*_crew_files(tmp_path, '{"name": "x", "agents": ["a"], '
                              '"process": "hierarchical", "tasks": [{"description": "d", '
                              '"expected_output": "o"}]}'), "crew.jsonc")
    assert errors == []


def _crew_files(root: Path, crew: str) -> tuple[Path, Path]:
    write(root, {"crew.jsonc": crew, "agents/a.jsonc": AGENT})
    return root / "crew.jsonc", root / "agents"


def test_json_crew_missing_lockfile_still_reported(tmp_path: Path) -> None:
    json_crew(tmp_path)
    (tmp_path / "uv.lock").unlink()
    assert codes(validate(tmp_path)) == ["missing_lockfile"]


def test_jsonc_stripping_keeps_strings() -> None:
    text = '{"a": "x // y /* z */", /* c */ "b": [1, 2,], // end\n "c": "q\\"//",}'
    assert parse_jsonc(text, "t") == {"a": "x // y /* z */", "b": [1, 2], "c": 'q"//'}
    assert strip_jsonc('[1, // c\n]') .replace(" ", "").replace("\n", "") == "[1]"
    with pytest.raises(ValueError, match="unterminated block comment"):
        strip_jsonc("/* open")


# -- entrypoint --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["svc.app", "svc/app:build", "svc.app:", "-x:y", ""])
def test_invalid_entrypoint_form(tmp_path: Path, value: str) -> None:
    entrypoint_project(tmp_path)
    write(tmp_path, {"pyproject.toml": pyproject(
        "my-app", f'[tool.crewship]\nentrypoint = "{value}"\n')})
    assert codes(validate(tmp_path)) == ["invalid_entrypoint"]


def test_entrypoint_module_must_exist(tmp_path: Path) -> None:
    entrypoint_project(tmp_path)
    write(tmp_path, {"pyproject.toml": pyproject(
        "my-app", '[tool.crewship]\nentrypoint = "svc.missing:build"\n')})
    finding = only(validate(tmp_path), "invalid_entrypoint")
    assert "src/svc/missing.py" in finding.detail


def test_entrypoint_module_at_root(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": pyproject("x", '[tool.crewship]\nentrypoint = "app:b"\n'),
                     "uv.lock": LOCK, "app.py": "def b():\n    pass\n"})
    assert validate(tmp_path).findings == ()


# -- warnings ---------------------------------------------------------------------------------

def test_env_vars_not_in_dotenv(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    write(tmp_path, {
        "src/demo_crew/tools/t.py": 'import os\nk = os.environ["SERPER_API_KEY"]\n'
                                    'o = os.getenv("OPENAI_API_KEY")\nz = os.getenv("MY_OWN")\n',
        "src/demo_crew/config/agents.yaml": "a:\n  llm: ${ANTHROPIC_API_KEY}\n",
    })
    result = validate(tmp_path)
    assert result.ok
    finding = only(result, "env_vars_not_in_dotenv")
    assert finding.severity == "warning"
    assert "ANTHROPIC_API_KEY, OPENAI_API_KEY, SERPER_API_KEY" in finding.detail
    assert "MY_OWN" not in finding.detail


def test_env_vars_known_from_config_or_dotenv(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    write(tmp_path, {"src/demo_crew/t.py": 'import os\nos.environ["SERPER_API_KEY"]\n'
                                           'os.getenv("OPENAI_API_KEY")\n',
                     ".env": "# c\nexport SERPER_API_KEY=x\n"})
    assert "env_vars_not_in_dotenv" in codes(validate(tmp_path))
    assert validate(tmp_path, {"OPENAI_API_KEY"}).findings == ()


def test_env_vars_in_json_crew(tmp_path: Path) -> None:
    json_crew(tmp_path)
    write(tmp_path, {"agents/writer.json": '{"role": "W", "goal": "G", "backstory": "B", '
                                           '"llm": {"api_key": "${GROQ_API_KEY}"}}'})
    assert "GROQ_API_KEY" in only(validate(tmp_path), "env_vars_not_in_dotenv").detail


def test_old_crewai_pin(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    write(tmp_path, {"uv.lock": LOCK + '\n[[package]]\nname = "crewai"\nversion = "1.9.2"\n'})
    result = validate(tmp_path)
    assert result.ok
    finding = only(result, "old_crewai_pin")
    assert finding.severity == "warning"
    assert "1.9.2" in finding.message


def test_recent_crewai_pin_is_fine(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    write(tmp_path, {"uv.lock": LOCK + '\n[[package]]\nname = "crewai"\nversion = "1.15.30"\n'})
    assert validate(tmp_path).findings == ()


# -- speed ----------------------------------------------------------------------------------

def test_validation_is_fast_on_a_large_tree(tmp_path: Path) -> None:
    classic_crew(tmp_path)
    for d in range(60):
        for f in range(100):
            write(tmp_path, {f"src/demo_crew/gen{d}/m{f}.py": "import os\nos.getenv('X')\n"})
            write(tmp_path, {f"data/d{d}/f{f}.txt": "x"})
    start = time.monotonic()
    result = validate(tmp_path)
    assert time.monotonic() - start < 2.0
    assert result.ok
