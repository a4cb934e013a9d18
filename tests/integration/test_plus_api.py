"""The Plus API (``/crewai_plus/api/v1``) of a real server, driven with httpx: auth,
bad uploads and bad fields (each a 4xx in the crewai client's shapes, nothing stored),
unknown crews, and a ZIP deploy that fails its build fast (no lockfile)."""

from __future__ import annotations

import io
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.server import CrewshipServer

API = "/crewai_plus/api/v1"
PROJECT = {
    "pyproject.toml": b'[project]\nname = "lockless_crew"\nversion = "0.1.0"\n'
                      b'dependencies = ["crewai==1.15.30"]\n\n[tool.crewai]\ntype = "crew"\n',
    "src/lockless_crew/__init__.py": b"",
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("plus"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def api(srv: CrewshipServer) -> Iterator[httpx.Client]:
    token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    with httpx.Client(base_url=srv.http_url, timeout=5,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def zip_bytes(entries: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            archive.writestr(info, data)
    return buf.getvalue()


def upload(api: httpx.Client, content: bytes | None, fields: dict[str, str],
           path: str = f"{API}/crews/zip") -> httpx.Response:
    files = {"zip_file": ("demo.zip", content, "application/zip")} if content is not None else None
    if files is None:
        files = {"other": ("x.txt", b"x", "text/plain")}
    return api.post(path, data=fields, files=files, timeout=60)


def nothing_stored(srv: CrewshipServer, api: httpx.Client) -> None:
    assert api.get(f"{API}/crews").json() == []
    assert list((srv.data_dir / "repos").iterdir()) == []
    assert list((srv.data_dir / "tmp").iterdir()) == []


def test_every_route_needs_a_valid_api_token(srv: CrewshipServer) -> None:
    for headers in ({}, {"Authorization": "Bearer csu_not-a-token"}, {"Authorization": "Basic x"}):
        resp = httpx.get(f"{srv.http_url}{API}/crews", headers=headers, timeout=5)
        assert resp.status_code == 401
        assert "api-tokens:create" in resp.json()["error"]
        assert resp.json()["message"]
    resp = httpx.post(f"{srv.http_url}{API}/crews/zip", files={"zip_file": ("a.zip", b"x")},
                      timeout=5)
    assert resp.status_code == 401


def test_organizations_are_empty(api: httpx.Client) -> None:
    assert api.get(f"{API}/me/organizations").json() == []


# Built when the case runs, not at collection (the 20,001-entry archive takes a second).
@pytest.mark.parametrize(("case", "content", "words"), [
    ("zip slip", lambda: zip_bytes({**PROJECT, "../../evil.py": b"x"}), "leaves the project"),
    ("absolute", lambda: zip_bytes({**PROJECT, "/tmp/evil.py": b"x"}), "absolute path"),
    ("symlink", lambda: zip_bytes({**PROJECT, "link": b"/etc/passwd"},
                                  {"link": stat.S_IFLNK | 0o777}), "symlink"),
    ("not a zip", lambda: b"%PDF-1.4 definitely not a zip", "not a ZIP archive"),
    ("too many", lambda: zip_bytes({f"f/{i}": b"" for i in range(20_001)}), "20001 entries"),
])
def test_bad_uploads_are_422_on_zip_file_and_store_nothing(
        srv: CrewshipServer, api: httpx.Client, case: str, content: Callable[[], bytes],
        words: str) -> None:
    resp = upload(api, content(), {"name": "bad_crew", "env[MODEL]": "x"})
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert list(body) == ["zip_file"]
    assert words in body["zip_file"][0]
    nothing_stored(srv, api)


def test_a_zip_bomb_is_refused(srv: CrewshipServer, api: httpx.Client) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pyproject.toml", b"x")
        with archive.open("zeros", "w", force_zip64=True) as out:
            for _ in range(201):
                out.write(b"\0" * (1024 * 1024))
    resp = upload(api, buf.getvalue(), {"name": "bomb_crew"})
    assert resp.status_code == 422
    assert "unpacks to 201 MB" in resp.json()["zip_file"][0]
    nothing_stored(srv, api)


def test_missing_and_bad_fields(srv: CrewshipServer, api: httpx.Client) -> None:
    good = zip_bytes(PROJECT)
    assert upload(api, good, {}).json() == {"name": ["is missing"]}
    assert "is missing" in upload(api, None, {"name": "x_crew"}).json()["zip_file"][0]
    bad_env = upload(api, good, {"name": "env_crew", "env[lower]": "x"})
    assert bad_env.status_code == 422
    assert "invalid config name" in bad_env.json()["env"][0]
    bad_name = upload(api, good, {"name": "9 lives!"})
    assert bad_name.status_code == 422
    assert "valid crewship app name" in bad_name.json()["name"][0]
    assert api.post(f"{API}/crews", json={}).json()["deploy"][0].startswith("is missing")
    no_url = api.post(f"{API}/crews", json={"deploy": {"name": "git_crew"}})
    assert no_url.status_code == 422
    assert no_url.json() == {"repo_clone_url": ["is missing"]}
    # No DNS or connection is made here: IP literals and syntax (tests never leave 127.0.0.1).
    scheme = api.post(f"{API}/crews", json={"deploy": {
        "name": "git_crew", "repo_clone_url": "ftp://10.1.2.3/acme/crew.git"}})
    assert scheme.status_code == 422
    assert "use https://, http://, ssh:// or user@host:path" in scheme.json()["repo_clone_url"][0]
    private = api.post(f"{API}/crews", json={"deploy": {
        "name": "git_crew", "repo_clone_url": f"ssh://git@192.168.1.5:{srv.ssh_port}/git-crew.git"}})
    assert "resolves to a private address" in private.json()["repo_clone_url"][0]
    data_dir = api.post(f"{API}/crews", json={"deploy": {
        "name": "git_crew", "repo_clone_url": str(srv.data_dir / "repos")}})
    assert "CREWSHIP_ALLOW_LOCAL_CLONE=1" in data_dir.json()["repo_clone_url"][0]
    not_json = api.post(f"{API}/crews", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["error"]
    nothing_stored(srv, api)


@pytest.mark.parametrize("path", [
    f"{API}/crews/00000000-0000-0000-0000-000000000000/status",
    f"{API}/crews/by-name/ghost_crew/status",
    f"{API}/crews/by-name/ghost_crew/logs/deployment",
])
def test_unknown_crews_are_404(api: httpx.Client, path: str) -> None:
    resp = api.get(path)
    assert resp.status_code == 404
    assert resp.json()["error"]
    assert api.delete(path.rsplit("/status", 1)[0]).status_code in (404, 405)
    assert api.post(f"{API}/crews/00000000-0000-0000-0000-000000000000/deploy").status_code == 404
    zipped = upload(api, zip_bytes(PROJECT), {},
                    path=f"{API}/crews/00000000-0000-0000-0000-000000000000/zip_update")
    assert zipped.status_code == 404


def wait_status(api: httpx.Client, path: str, wanted: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = api.get(path).json()
        if body["status"] == wanted:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_a_zip_deploy_that_fails_its_build_reports_why(srv: CrewshipServer,
                                                       api: httpx.Client) -> None:
    started = time.monotonic()
    resp = upload(api, zip_bytes(PROJECT), {"name": "lockless_crew", "project_id": "p-1",
                                            "env[MODEL]": '"gpt-4o"', "env[OTHER]": "'a b'"})
    assert time.monotonic() - started < 5
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["status"] == "Deploy Enqueued"
    assert created["deployment_id"] == created["uuid"]
    failed = wait_status(api, f"{API}/crews/{created['uuid']}/status", "Failed")
    assert failed["name"] == "lockless-crew"
    assert failed["zip_deployment"] is True
    assert failed["source_type"] == "zip"
    assert "missing_lockfile" in failed["error_message"]
    assert "uv lock" in failed["error_suggested_fix"]
    by_name = api.get(f"{API}/crews/by-name/lockless_crew/status").json()
    assert by_name["uuid"] == created["uuid"]
    logs = api.get(f"{API}/crews/by-name/lockless_crew/logs/deployment").json()
    assert {"timestamp", "level", "message"} <= set(logs[0])
    assert any("missing_lockfile" in line["message"] for line in logs)
    assert any(line["level"] == "ERROR" for line in logs)
    config = srv.ssh_json(srv.admin_key, "config", "lockless-crew", "--show")
    assert config == {"MODEL": "gpt-4o", "OTHER": "a b"}  # one pair of quotes removed
    # Like a failed push, the branch is put back: the failed commit is not the head.
    branches = srv.git(None, "--git-dir", str(srv.repo_path("lockless-crew")), "branch",
                       cwd=srv.root).stdout
    assert "main" not in branches
    page = api.get(f"/crewai_plus/deployments/{created['uuid']}")
    assert page.status_code == 200
    assert "lockless-crew" in page.text
    assert "Failed" in page.text
    assert api.get("/crewai_plus/deployments/nope").status_code == 404
    listed = api.get(f"{API}/crews").json()
    assert listed == [{"name": "lockless-crew", "uuid": created["uuid"], "status": "Failed"}]
    taken = upload(api, zip_bytes(PROJECT), {"name": "lockless_crew"})
    assert taken.status_code == 422
    assert "has already been taken" in taken.json()["name"][0]
    assert api.delete(f"{API}/crews/by-name/lockless_crew").status_code == 204
    assert api.get(f"{API}/crews/{created['uuid']}/status").status_code == 404
    nothing_stored(srv, api)


def test_zip_update_and_access_go_through_the_platform(
        srv: CrewshipServer, api: httpx.Client) -> None:
    bob = srv.add_user("bob")
    bob_token = srv.ssh(bob, "api-tokens:create", check=True).stdout.strip()
    bob_api = httpx.Client(base_url=srv.http_url, timeout=5,
                           headers={"Authorization": f"Bearer {bob_token}"})
    with bob_api:
        created = upload(bob_api, zip_bytes(PROJECT), {"name": "bobs_crew"}).json()
        wait_status(bob_api, f"{API}/crews/{created['uuid']}/status", "Failed")
        updated = upload(bob_api, zip_bytes(PROJECT), {"env[MODEL]": "m"},
                         path=f"{API}/crews/{created['uuid']}/zip_update")
        assert updated.status_code == 201, updated.text
        assert updated.json()["status"] == "Deploy Enqueued"
        wait_status(bob_api, f"{API}/crews/{created['uuid']}/status", "Failed")
        releases = srv.ssh_json(bob, "releases", "bobs-crew")
        assert [r["created_by"] for r in releases] == ["bob", "bob"]
        # The admin's crews include bob's; another user without access sees nothing.
        carol = srv.add_user("carol")
        carol_token = srv.ssh(carol, "api-tokens:create", check=True).stdout.strip()
        carol_headers = {"Authorization": f"Bearer {carol_token}"}
        assert httpx.get(f"{srv.http_url}{API}/crews/{created['uuid']}/status",
                         headers=carol_headers, timeout=5).status_code == 404
        assert httpx.delete(f"{srv.http_url}{API}/crews/by-name/bobs_crew",
                            headers=carol_headers, timeout=5).status_code == 404
        assert bob_api.delete(f"{API}/crews/{created['uuid']}").status_code == 204
