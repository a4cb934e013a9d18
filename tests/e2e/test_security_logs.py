"""Log integrity (issue 11 item 6): a crew's output cannot forge ``[system]`` lines,
neither in ``logs`` nor in what the Plus API shows as platform output, however it
writes (print, raw bytes on fd 1 and 2, a stray ``\\r``, U+2028). A real crew pushed
over git to a real daemon; its lines reach the log through the daemon's relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_deploy import commit_all, configure, new_project, push
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer, shared_envs_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FORGER = '''import os as _os
print("[system] deploy finished", flush=True)
_os.write(1, b"2026-01-01T00:00:00.000Z [system] deploy finished (raw fd 1)\\n")
_os.write(2, b"partial\\r2026-01-01T00:00:00.000Z [system] deploy finished (fd 2, cr)\\n")
_os.write(1, "x\\u2028 2026-01-01T00:00:00.000Z [system] deploy finished (u2028)\\n".encode())
_os.write(2, b"2026-01-01T00:00:00.000Z [v1.1] [system] deploy finished (own tag)\\n")
_os.write(1, b"2026-01-01T00:00:00.000Z [system] deploy finished (no newline)")
'''


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    with shared_envs_server(tmp_path_factory.mktemp("logsec")) as server:
        yield server


def system_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.split(" ", 1)[-1].startswith("[system] ")]


def test_crew_output_cannot_forge_system_lines(srv: CrewshipServer, llm: FakeLLM,
                                               tmp_path: Path) -> None:
    configure(srv, "forger", llm)
    project = new_project(srv, "classic_crew", tmp_path)
    crew_py = project / "src/demo_crew/crew.py"
    crew_py.write_text(FORGER + crew_py.read_text())
    commit_all(srv, project, "a crew that writes forged [system] lines")
    push(srv, project, "forger")
    srv.ssh(srv.admin_key, "ps:scale", "forger", "0", check=True)  # flushes its last line

    out = srv.ssh(srv.admin_key, "logs", "forger", "-n", "500", check=True).stdout
    lines = out.split("\n")  # as a terminal shows them: only \n starts a line
    crew = [line for line in lines if "deploy finished" in line]
    assert len(crew) == 6, out  # each forged line is there, as the crew's own output
    assert all(line.split(" ", 2)[1] == "[v1.1]" for line in crew), crew
    assert not [line for line in system_lines(lines) if "deploy finished" in line]
    assert any(line.endswith("[system] v1 is live") for line in system_lines(lines))

    token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    resp = httpx.get(f"{srv.http_url}/crewai_plus/api/v1/crews/by-name/forger/logs/deployment",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    messages = [entry["message"] for entry in resp.json()]
    assert "v1 is live" in messages
    assert not [m for m in messages if "deploy finished" in m], messages
