"""Security: nothing on 127.0.0.1 runs a crew or reads its inputs without the instance's
secret (issue 10 item 3), with a real crew pushed to a real daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.runner import SIGNATURE_HEADER, sign
from tests.e2e.test_deploy import configure, new_project, push
from tests.support.crewenv import cache_root
from tests.support.fakellm import FakeLLM
from tests.support.server import CrewshipServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("channel"),
                            env={"CREWSHIP_ENVS_DIR": str(cache_root() / "server-envs")})
    server.start()
    yield server
    server.close()


def test_a_direct_request_to_a_runner_without_the_secret_gets_401_and_leaves_no_trace(
        srv: CrewshipServer, llm: FakeLLM, tmp_path: Path) -> None:
    api = configure(srv, "guarded", llm)
    push(srv, new_project(srv, "classic_crew", tmp_path), "guarded")
    (instance,) = srv.ssh_json(srv.admin_key, "status", "guarded")["instances"]
    runner = f"http://127.0.0.1:{instance['port']}"
    before = len(llm.chat_requests())
    body = json.dumps({"kickoff_id": "sneaky", "inputs": {"topic": "x", "audience": "y"}})
    wrong = b"not-the-instance-secret-0123456789"
    attempts = [
        httpx.post(f"{runner}/runs", content=body),
        httpx.post(f"{runner}/runs", content=body,
                   headers={SIGNATURE_HEADER: sign(wrong, "POST", "/runs", body.encode())}),
        httpx.post(f"{runner}/runs", content=body, headers={SIGNATURE_HEADER: "1:2:3"}),
        httpx.get(f"{runner}/inputs"),
        httpx.get(f"{runner}/runs"),
        httpx.get(f"{runner}/runs/sneaky"),
        httpx.get(f"{runner}/healthz"),
    ]
    assert [r.status_code for r in attempts] == [401] * len(attempts)
    assert all("X-Crewship-Proof" not in r.headers for r in attempts)
    assert len(llm.chat_requests()) == before  # the crew never ran
    assert api.get("/kickoffs").json()["kickoffs"] == []  # and no trace in the history
    secret_dir = srv.data_dir / "secrets"
    assert secret_dir.stat().st_mode & 0o777 == 0o700
    secret = (secret_dir / instance["id"]).read_text()
    assert secret not in (srv.data_dir / "logs" / "guarded" / "app.log").read_text()
    assert secret not in srv.log_text()
    assert api.run({"topic": "the front door", "audience": "still works"})["state"] == "SUCCESS"
