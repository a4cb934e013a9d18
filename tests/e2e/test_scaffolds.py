"""Every project ``crewai create`` makes runs unchanged on crewship (issue 18 item 5).

No fixture here is written by us: the crewai CLI from PyPI, pinned to the fixtures'
crewai version, scaffolds a classic crew, a JSON crew (its interactive prompts answered
with their defaults, ``CREWAI_DMN=1``), a Python flow and a declarative flow. Each is
locked with ``uv lock``, committed as it is, pushed with git over OpenSSH and kicked off
with the inputs its own ``main.py`` uses (or none), against the fake LLM. Their locks
differ only in the project's name, so the four apps share one dependency environment.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_deploy import commit_all, configure
from tests.support import crewenv
from tests.support.crewapi import CrewAPI
from tests.support.fakellm import ANSWER_PREFIX, FakeLLM
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PIN = re.search(r'"crewai==([^"]+)"', (crewenv.FIXTURES / "classic_crew/pyproject.toml").read_text())
CREWAI_VERSION = PIN.group(1) if PIN else ""
# app name -> the arguments of `crewai create` and the environment it runs in
SCAFFOLDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "classic": (["crew", "classic", "--classic", "--skip-provider"], {}),
    "jsoncrew": (["crew", "jsoncrew", "--skip-provider"], {"CREWAI_DMN": "1"}),
    "pyflow": (["flow", "pyflow", "--skip-provider"], {}),
    "declflow": (["flow", "declflow", "--declarative", "--skip-provider"], {}),
}
PUSH_TIMEOUT = 900  # the first push installs crewai[tools] (about 180 packages) once


def crewai_cli(tmp: Path) -> Path:
    """The ``crewai`` CLI of a crewai env pinned like the fixtures (the cached test env)."""
    _, python = crewenv.prepare("classic_crew", tmp)
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                              "print(m.version('crewai-cli'))"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
    assert version == CREWAI_VERSION, f"the CLI is {version}, the fixtures pin {CREWAI_VERSION}"
    return python.parent / "crewai"


def scaffold(cli: Path, srv: CrewshipServer, where: Path, app: str) -> Path:
    args, extra = SCAFFOLDS[app]
    env = {**os.environ, "HOME": str(where), "CREWAI_DISABLE_TELEMETRY": "true", **extra}
    made = subprocess.run([str(cli), "create", *args], cwd=where, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    project = where / app
    assert made.returncode == 0, made.stdout + made.stderr
    assert (project / "pyproject.toml").is_file(), made.stdout
    crewenv.lock(project)
    if not (project / ".git").is_dir():
        srv.git(None, "init", "-q", cwd=project)
    srv.git(None, "checkout", "-q", "-B", "main", cwd=project)
    commit_all(srv, project, f"crewai create {' '.join(args)}")
    return project


def main_py_inputs(project: Path) -> dict[str, Any]:
    """The ``inputs`` dict that the scaffold's own ``main.run()`` kicks its crew off with."""
    package = next((project / "src").iterdir())
    tree = ast.parse((package / "main.py").read_text())
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    literal = next(n.value for n in ast.walk(run) if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "inputs" for t in n.targets))
    assert isinstance(literal, ast.Dict)
    inputs: dict[str, Any] = {}
    for key, value in zip(literal.keys, literal.values, strict=True):
        assert isinstance(key, ast.Constant)
        if ast.unparse(value) == "str(datetime.now().year)":
            inputs[str(key.value)] = str(datetime.now().year)
        else:
            inputs[str(key.value)] = ast.literal_eval(value)
    return inputs


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("scaffolds")) as server:
        yield server


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crewai_cli(tmp_path_factory.mktemp("cli"))


def deploy(srv: CrewshipServer, llm: FakeLLM, cli: Path, where: Path, app: str) -> tuple[Path, CrewAPI]:
    api = configure(srv, app, llm)
    project = scaffold(cli, srv, where, app)
    pushed = srv.git(srv.admin_key, "push", srv.git_url(app), "main", cwd=project, check=False,
                     timeout=PUSH_TIMEOUT)
    assert pushed.returncode == 0, pushed.stderr
    assert f"=====> {app} v1 is live" in pushed.stderr
    return project, api


def prompts(llm: FakeLLM, since: int) -> str:
    return json.dumps(llm.chat_requests()[since:])


def test_classic_crew_scaffold(srv: CrewshipServer, llm: FakeLLM, cli: Path, tmp_path: Path) -> None:
    project, api = deploy(srv, llm, cli, tmp_path, "classic")
    inputs = main_py_inputs(project)
    assert sorted(inputs) == ["current_year", "topic"]
    assert api.get("/inputs").json() == {"inputs": ["current_year", "topic"], "optional_inputs": {}}
    done = api.run(inputs)
    assert done["state"] == "SUCCESS", done
    assert ANSWER_PREFIX in done["result"]
    assert [t["task_id"] for t in done["tasks"]] == ["research_task", "reporting_task"]
    # output_file='report.md' is written beside the project: in the app's home, not the release
    assert ANSWER_PREFIX in (srv.data_dir / "homes/classic/work/report.md").read_text()

    # a trigger's kickoff: crewAI adds the payload to the first task (run_with_trigger)
    seen = len(llm.chat_requests())
    resp = api.post("/kickoff", json={"inputs": inputs, "crewai_trigger_payload": {"mail": "M-77"}})
    assert resp.status_code == 200, resp.text
    assert api.wait(resp.json()["kickoff_id"])["state"] == "SUCCESS"
    assert "Trigger Payload: {'mail': 'M-77'}" in prompts(llm, seen)
    assert api.post("/kickoff", json={"inputs": {"topic": "x"}}).status_code == 422


def test_json_crew_scaffold(srv: CrewshipServer, llm: FakeLLM, cli: Path, tmp_path: Path) -> None:
    project, api = deploy(srv, llm, cli, tmp_path, "jsoncrew")
    assert (project / "crew.jsonc").is_file()
    assert api.get("/inputs").json()["inputs"] == []
    done = api.run({})
    assert done["state"] == "SUCCESS", done
    assert ANSWER_PREFIX in done["result"]


def test_python_flow_scaffold(srv: CrewshipServer, llm: FakeLLM, cli: Path, tmp_path: Path) -> None:
    _, api = deploy(srv, llm, cli, tmp_path, "pyflow")
    fields = {"topic": "", "outline": "", "draft": "", "final_post": ""}
    assert api.get("/inputs").json() == {"inputs": [], "optional_inputs": fields}
    seen = len(llm.chat_requests())
    resp = api.post("/kickoff", json={})  # main.py's kickoff() passes no inputs
    assert resp.status_code == 200, resp.text
    done = api.wait(resp.json()["kickoff_id"], timeout=180)
    assert done["state"] == "SUCCESS", done
    assert "AI Agents" in prompts(llm, seen)  # the topic plan_content sets without a trigger
    assert ANSWER_PREFIX in (srv.data_dir / "homes/pyflow/work/output/post.md").read_text()

    seen = len(llm.chat_requests())
    resp = api.post("/kickoff", json={"inputs": {}, "crewai_trigger_payload": {"topic": "tide pools"}})
    assert api.wait(resp.json()["kickoff_id"], timeout=180)["state"] == "SUCCESS"
    assert "tide pools" in prompts(llm, seen)  # plan_content(crewai_trigger_payload=...)


def test_declarative_flow_scaffold(srv: CrewshipServer, llm: FakeLLM, cli: Path, tmp_path: Path) -> None:
    _, api = deploy(srv, llm, cli, tmp_path, "declflow")
    assert api.get("/inputs").json() == {"inputs": [], "optional_inputs": {"topic": "AI agents"}}
    done = api.run({})
    assert done["state"] == "SUCCESS", done
    assert done["result"] == "AI agents"  # flow.yaml's default, returned by `expr: state.topic`
    assert api.run({"topic": "moss"})["result"] == "moss"
