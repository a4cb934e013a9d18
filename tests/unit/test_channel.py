"""Signing and proving on the runner channel (runtime/runner.py's MACs, runtime/channel.py)."""

from __future__ import annotations

import time
from pathlib import Path

from runtime.channel import SecretStore, new_secret
from runtime.runner.signing import SIGNATURE_MAX_AGE, response_mac, sign, signature_valid

KEY = b"0123456789abcdef0123456789abcdef"


def test_a_signed_request_is_valid_only_as_signed() -> None:
    header = sign(KEY, "POST", "/runs", b'{"kickoff_id": "k"}')
    assert signature_valid(KEY, header, "POST", "/runs", b'{"kickoff_id": "k"}')
    assert not signature_valid(KEY, header, "POST", "/runs", b'{"kickoff_id": "x"}')
    assert not signature_valid(KEY, header, "GET", "/runs", b'{"kickoff_id": "k"}')
    assert not signature_valid(KEY, header, "POST", "/runs/k/stop", b'{"kickoff_id": "k"}')
    assert not signature_valid(b"another-secret-of-32-bytes-long!", header, "POST", "/runs",
                               b'{"kickoff_id": "k"}')


def test_no_signature_a_malformed_one_or_an_old_one_is_invalid() -> None:
    for header in ("", "garbage", "1:2:3", "nan:n:" + "0" * 64):
        assert not signature_valid(KEY, header, "GET", "/healthz", b"")
    old = sign(KEY, "GET", "/healthz", b"", now=time.time() - SIGNATURE_MAX_AGE - 5)
    assert not signature_valid(KEY, old, "GET", "/healthz", b"")


def test_the_proof_binds_the_request_the_status_and_the_body() -> None:
    header = sign(KEY, "GET", "/healthz", b"")
    proof = response_mac(KEY, header, 200, b"{}")
    assert proof == response_mac(KEY, header, 200, b"{}")
    assert proof != response_mac(KEY, header, 503, b"{}")
    assert proof != response_mac(KEY, header, 200, b'{"status": "ok"}')
    assert proof != response_mac(KEY, sign(KEY, "GET", "/healthz", b""), 200, b"{}")
    assert KEY.decode() not in header
    assert KEY.decode() not in proof


def test_secrets_are_kept_for_the_daemon_only(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    secret = new_secret()
    assert len(secret) == 64
    store.put("demo-v1.1-abc123", secret)
    assert store.get("demo-v1.1-abc123") == secret
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "secrets" / "demo-v1.1-abc123").stat().st_mode & 0o777 == 0o600
    assert store.get("../state.db") is None
    store.remove("demo-v1.1-abc123")
    assert store.get("demo-v1.1-abc123") is None
