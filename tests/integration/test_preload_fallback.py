"""A preloaded parent that cannot be made: instances start cold and the app's log says why
once (runtime/preload.py). Real processes: the parent runs with the daemon's interpreter,
which has no crewai, so it reports that and exits; the fake runner then starts cold."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from runtime.backend import InstanceSpec, PreloadSpec
from runtime.process import ProcessBackend
from tests.integration.test_process_backend import APP, Rig, eventually, healthz, rig, run

RUNNER = Path(__file__).resolve().parents[2] / "runtime" / "runner"
__all__ = ["rig"]


def test_without_crewai_instances_start_cold_and_the_reason_is_logged_once(rig: Rig) -> None:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(rig.root)}
    preload = PreloadSpec(key="env-without-crewai", python=sys.executable, runner=RUNNER,
                          releases=rig.root, env_path=Path(sys.prefix), env=base)
    make = rig.spec(1)

    def with_preload(index: int, port: int) -> InstanceSpec:
        return dataclasses.replace(make(index, port), preload=preload)

    async def body() -> None:
        backend = ProcessBackend(rig.layout, preload=True)
        sup = rig.supervisor(backend)
        try:
            await sup.deploy(APP, 1, with_preload, scale=2)
            rig.remember(sup)
            for endpoint in sup.endpoints(APP):
                assert await healthz(endpoint) == 200
            records = rig.records()
            assert len(records) == 2
            assert all(r["preload"] is None for r in records)  # both cold
            lines = rig.log.tail(200)
            refused = [line for line in lines if "instances start cold" in line]
            assert len(refused) == 1, lines
            assert "cannot import crewai" in refused[0]
            assert any("[preload] preload: cannot import crewai" in line for line in lines)
            state = next(rig.layout.root.glob("preload/demo/*/state.json"))
            assert json.loads(state.read_text())["ok"] is False
            parent = json.loads(next(rig.layout.root.glob("preload/demo/*.json")).read_text())
            await eventually(lambda: not Path(f"/proc/{parent['pid']}").exists()
                             or "Z" in Path(f"/proc/{parent['pid']}/stat").read_text())
        finally:
            await sup.aclose(stop_instances=True)
            await backend.aclose()

    run(body())
