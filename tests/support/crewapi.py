"""A small client of the deployed-crew HTTP API for tests."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


class CrewAPI:
    def __init__(self, base: str, app: str, token: str) -> None:
        self.base = f"{base}/apps/{app}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=self.headers, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", headers=self.headers, timeout=30, **kwargs)

    def kickoff(self, inputs: dict[str, Any]) -> str:
        resp = self.post("/kickoff", json={"inputs": inputs})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["kickoff_id"])

    def wait(self, kickoff_id: str, timeout: float = 120.0,
             states: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.get(f"/status/{kickoff_id}").json()
            if body.get("state") in states:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"kickoff {kickoff_id} still {body.get('state')}: {body}")
            time.sleep(0.3)

    def run(self, inputs: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        return self.wait(self.kickoff(inputs), timeout)
