"""The docker runtime's locked-down container, checked from inside and from dockerd.

A container of the local base image runs a probe (stdlib python) through the real
``DockerBackend``: it must find the root filesystem read-only, HOME and /tmp writable,
no capabilities, no new privileges, a pids limit, and no trace of the data dir.
Needs dockerd and ``crewship-base:bookworm`` (``.ci/docker-setup``).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from builder.image import IMAGE_HOME, IMAGE_UID
from crewship.config import Layout
from runtime.backend import InstanceSpec, free_port
from runtime.container import CONTAINER_HOME, CONTAINER_UID, PIDS_LIMIT
from runtime.docker import DockerBackend, connect
from tests.conftest import DOCKER_BASE_IMAGE

pytestmark = [pytest.mark.docker]
APP = "locked-down"

PROBE = '''
import errno, json, os, sys, time
from pathlib import Path

def attempt(action):
    try:
        action()
    except OSError as exc:
        return "refused: " + errno.errorcode.get(exc.errno or 0, str(exc))
    return "ALLOWED"

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]

data = sys.argv[1]
report = {
    "write_root": attempt(lambda: Path("/probe-write").write_text("x")),
    "write_usr": attempt(lambda: Path("/usr/probe-write").write_text("x")),
    "write_etc": attempt(lambda: Path("/etc/probe-write").write_text("x")),
    "read_data_dir": attempt(lambda: os.listdir(data)),
    "read_state_db": attempt(lambda: Path(data, "state.db").read_bytes()),
    "chown": attempt(lambda: os.chown("/tmp", 0, 0)) if os.getuid() == 0 else "n/a",
    "home": attempt(lambda: Path(os.environ.get("HOME", "/home/crew"), "x").write_text("ok")),
    "home_dir": attempt(lambda: Path("/home/crew/x").write_text("ok")),
    "tmp": attempt(lambda: Path("/tmp/x").write_text("ok")),
    "cap_eff": status("CapEff"),
    "cap_bnd": status("CapBnd"),
    "no_new_privs": status("NoNewPrivs"),
}
print("PROBE " + json.dumps(report), flush=True)
time.sleep(60)
'''


def inspect_when_probed(client: Any, layout: Layout, container: str,
                        timeout: float = 60.0) -> tuple[dict[str, Any], dict[str, Any]]:
    log = layout.app_logs(APP) / "app.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        for line in text.splitlines():
            if "PROBE " in line:
                report = json.loads(line.split("PROBE ", 1)[1])
                return report, client.api.inspect_container(container)
        time.sleep(0.1)
    raise AssertionError(f"no probe output: {log.read_text() if log.exists() else ''}")


def test_the_image_and_the_container_agree_on_the_crews_uid_and_home() -> None:
    assert (CONTAINER_UID, CONTAINER_HOME) == (IMAGE_UID, IMAGE_HOME)


def test_a_crew_container_is_locked_down_and_never_sees_the_data_dir(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    (layout.root / "state.db").write_text("secret state")

    async def body() -> None:
        client = connect()
        backend = DockerBackend(layout, client)
        spec = InstanceSpec(APP, 1, 1, ["python3", "-c", PROBE, str(layout.root)],
                            {"HOME": CONTAINER_HOME}, Path("/"), free_port(),
                            image=DOCKER_BASE_IMAGE)
        ref = await backend.start(spec)
        try:
            report, attrs = await asyncio.to_thread(
                inspect_when_probed, client, layout, f"crewship-{ref.id}")
        finally:
            await backend.stop(ref, grace=1.0)
            await backend.aclose()
        host = attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["PidsLimit"] == PIDS_LIMIT
        # the one host path a crew container sees: its runner secret, one file, read-only
        assert all(b.endswith(":/run/crewship/secret:ro") for b in host.get("Binds") or []), host
        assert all(m["Type"] != "bind" or (m["Destination"] == "/run/crewship/secret"
                                           and m["RW"] is False) for m in attrs["Mounts"] or [])
        assert set(host["Tmpfs"]) == {"/tmp", CONTAINER_HOME}

        for probe in ("write_root", "write_usr", "write_etc"):
            assert report[probe] == "refused: EROFS", report
        assert report["read_data_dir"] == "refused: ENOENT", report
        assert report["read_state_db"] == "refused: ENOENT", report
        assert report["chown"] == "n/a", report   # never root in there
        assert attrs["Config"]["User"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
        assert report["home_dir"] == "ALLOWED", report
        assert report["tmp"] == "ALLOWED", report
        assert int(report["cap_eff"], 16) == 0
        assert int(report["cap_bnd"], 16) == 0
        assert report["no_new_privs"] == "1"

    asyncio.run(asyncio.wait_for(body(), 120))
