"""Fuzzing the front doors of a running server (issue 11 item 7).

1,000 generated SSH command lines (real command names and junk, quotes, unicode, very
long arguments, NUL bytes, shell syntax) go through the real SSH server on one asyncssh
connection (a channel each), and 300 malformed HTTP requests (bad JSON, wrong types,
huge numbers, deep nesting, bad UTF-8, oversized and chunked bodies, bad headers) at its
HTTP server. None may get an internal error or a 500, and the database's content (every
table, minus the last-use timestamps that signing in is meant to update) and the repos
must be byte-for-byte what they were. The seed is fixed, loopback only; the counts are
printed and written to ``test-artifacts/fuzz-counts.json``.

Every generated argument carries a "poison" character (upper case, non-ASCII, a quote,
NUL, shell syntax...), so no line is a valid request that could rightly change state:
any change would be bad input getting through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shlex
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from gitserver.server import REGISTRY  # importing the server registers every command
from tests.support.server import HOST, REPO_ROOT, CrewshipServer

pytestmark = [pytest.mark.e2e]

SEED = int(os.environ.get("CREWSHIP_FUZZ_SEED", "20261101"))   # another seed explores more
SSH_LINES = 1000
HTTP_REQUESTS = 300
VOLATILE = {"last_used_at", "last_seen_at"}   # updated by signing in, on purpose
POISON = ["A", "Z", "é", "ß", "Ω", "😀", "\u202e", "\u0301", "'", '"', "\\", "\x00", "$",
          ";", "|", "&", "`", "*", "?", "~", "#", " ", "\t", "\n", "%", "\uff4d", "\ufeff"]
SHELLISH = ["$(id)", "`id`", "; rm -rf /", "&& echo pwned", "| cat /etc/passwd", "../../etc",
            "${HOME}", "'unterminated", '"unterminated', "\\", "a b", "*", "?", "~root"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    server = CrewshipServer(tmp_path_factory.mktemp("fuzz"),
                            env={"CREWSHIP_METRICS_TOKEN": "fuzz-scrape"})
    server.start()
    yield server
    server.close()


# ------------------------------------------------------------------- fingerprints
def fingerprint(data_dir: Path) -> str:
    """SHA-256 over every row of every table (volatile timestamps and the audit trail
    left out) and every file under repos/."""
    digest = hashlib.sha256()
    with sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            if table == "audit":  # refused attempts are recorded there on purpose (issue 19)
                continue
            cursor = db.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
            names = [d[0] for d in cursor.description]
            for row in cursor:
                kept = {n: v for n, v in zip(names, row, strict=True) if n not in VOLATILE}
                digest.update(f"{table}:{json.dumps(kept, default=str)}\n".encode())
    for path in sorted((data_dir / "repos").rglob("*")):
        digest.update(str(path.relative_to(data_dir)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------- SSH lines
def junk(rng: random.Random) -> str:
    """One argument that is never valid input: it always holds a poison character."""
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 20))) + "é"
    if kind == 1:
        return "A" * rng.randrange(1000, 20000)
    if kind == 2:
        return "9" * rng.randrange(13, 400)
    if kind == 3:
        return rng.choice(SHELLISH)
    if kind == 4:
        return "--" + rng.choice(POISON) + rng.choice(["json", "user", "force", "x"])
    if kind == 5:
        return rng.choice(["-1", "v", "vX", "0x10", "1e9", "ten"]) + rng.choice(POISON)
    base = "".join(rng.choice("abcdefghij-_.=/0123456789") for _ in range(rng.randrange(0, 12)))
    cut = rng.randrange(len(base) + 1)
    return base[:cut] + rng.choice(POISON) + base[cut:]


# Bad input aimed at a real app ("target"): each must be refused and change nothing.
TARGETED = ["alerts:add target 'http://[::1'", "alerts:add target ftp://x", "alerts:remove target "
            "99999999999999", "config:set target", "config:set target lower=1",
            "config:unset target lower", "rollback target vZ", "rollback target v999",
            "ps:scale target 11", "ps:scale target ²", "ps:limits target --memory 1z",
            "kickoff target '[1]'", "kickoff target '{'", "access:add target nobody",
            "access:remove target nobody", "logs target -n -5", "releases target -n x",
            "kickoffs target --state NOPE", "status target extra", "apps:create target",
            "git-upload-pack 'target.git/../x'", "api-tokens:revoke 99999999",
            "users:remove nobody", "users:remove admin", "keys:remove nothing",
            "tokens target extra", "apps:destroy target"]


def ssh_line(rng: random.Random, names: list[str]) -> str:
    head = rng.choice(names) if rng.random() < 0.85 else junk(rng)
    args = [junk(rng) for _ in range(rng.randrange(1, 5))]
    style = rng.randrange(3)
    if style == 0:      # argv survives shlex as given
        return " ".join([shlex.quote(head), *(shlex.quote(a) for a in args)])
    if style == 1:      # raw: quotes and backslashes as they come
        return " ".join([head, *args])
    return f"{head} {' '.join(shlex.quote(a) for a in args)} {rng.choice(SHELLISH)}"


async def run(conn: asyncssh.SSHClientConnection, line: str) -> asyncssh.SSHCompletedProcess:
    """``line`` on a new channel, its stdin closed at once (``keys:add`` reads it)."""
    process = await conn.create_process(line)
    with contextlib.suppress(BrokenPipeError, OSError):
        process.stdin.write_eof()
    return await process.wait(check=False)


async def send_ssh_lines(srv: CrewshipServer, lines: list[str],
                         kinds: Counter[str]) -> Counter[str]:
    """Each line on its own channel of one connection; ``kinds`` tallies the errors."""
    counts: Counter[str] = Counter()
    key = asyncssh.read_private_key(str(srv.admin_key))
    async with asyncssh.connect(HOST, srv.ssh_port, username="git", client_keys=[key],
                                known_hosts=None, agent_path=None) as conn:
        for line in lines:
            counts["sent"] += 1
            try:
                result = await asyncio.wait_for(run(conn, line), 15)
            except asyncssh.ChannelOpenError:
                counts["refused_channel"] += 1
                continue
            except TimeoutError:
                counts["hung"] += 1
                print("HUNG:", repr(line[:300]))
                continue
            stderr = str(result.stderr or "")
            if result.exit_status != 0:
                counts["errors"] += 1
                kinds[stderr.split("(", 1)[0].split("'", 1)[0].strip()[:50]] += 1
            if "internal error" in stderr or "Traceback" in stderr:
                counts["internal_errors"] += 1
                print("INTERNAL:", repr(line[:200]), stderr[:300])
            if result.exit_status is None:
                counts["no_exit_status"] += 1
    return counts


# -------------------------------------------------------------------- HTTP requests
def deep(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


BODIES: list[bytes] = [
    b"{", b'{"inputs": ', b"[1, 2", b"null", b"[]", b'"text"', b"42", b"true",
    b'{"inputs": 5}', b'{"inputs": "x"}', b'{"inputs": []}', b'{"inputs": null, "meta": 1}',
    b'{"deploy": []}', b'{"deploy": {"name": 5}}', b'{"deploy": {"name": "x", "env": 3}}',
    b'{"deploy": {"name": "x", "repo_clone_url": 7}}', b'{"inputs": NaN}',
    b'{"inputs": 1e999999}', b'{"inputs": ' + b"9" * 6000 + b"}", b'{"inputs": -Infinity}',
    b'{"inputs": "\xff\xfe"}', b"\xff\xfe\x00{", b'{"inputs": "\\ud800"}',
    b'{"inputs": {"a": 1}, "taskWebhookUrl": 5}', b'{"inputs": [], "crewWebhookUrl": "x"}',
    b'{"inputs": {}, "crewWebhookUrl": "http://[::1"}',
    b'{"inputs": {}, "stepWebhookUrl": "http://a:99999"}',
    b'{"deploy": {"name": "fz", "repo_clone_url": "ssh://h:99999/a.git"}}',
    b'{"deploy": {"name": "fz", "repo_clone_url": "ssh://[x/a.git"}}',
    deep(100), deep(5000), deep(200000), b"[" * 300000, b"\x00" * 100,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
]


def http_plan(rng: random.Random, app_token: str, user_token: str, uuid: str,
              cookie: str) -> list[dict[str, Any]]:
    auths = [{}, {"Authorization": f"Bearer {app_token}"},
             {"Authorization": f"Bearer {user_token}"}, {"Authorization": "Bearer csu_x"},
             {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer " + "é" * 10}]
    api = "/crewai_plus/api/v1"
    targets = [("POST", "/apps/target/kickoff"), ("POST", "/apps/target/stop/nope"),
               ("GET", "/apps/target/status/" + "x" * 300), ("GET", "/apps/target/kickoffs"),
               ("GET", "/apps/target/"), ("GET", "/apps/target/inputs"),
               ("POST", "/apps/NOT-VALID/kickoff"), ("POST", f"{api}/crews"),
               ("POST", f"{api}/crews/zip"), ("POST", f"{api}/crews/{uuid}/zip_update"),
               ("POST", f"{api}/crews/by-name/target/deploy"), ("POST", f"{api}/crews/x/deploy"),
               ("GET", f"{api}/crews/by-name/%00/status"), ("DELETE", f"{api}/crews/nope"),
               ("POST", "/dashboard/login"), ("POST", "/dashboard/logout"),
               ("GET", "/metrics"), ("GET", f"/crewai_plus/deployments/{uuid}"),
               ("PUT", "/apps/target/kickoff"), ("GET", "/dashboard/apps/%E2%80%AE"),
               ("POST", "/dashboard/apps/target/kickoff"), ("POST", "/dashboard/apps/target/scale"),
               ("POST", "/dashboard/apps/target/rollback"),
               ("GET", "/dashboard/apps/target/kickoffs/" + "x" * 300)]
    queries = ["", "?limit=-1", "?limit=99999999999999999999", "?state=%00", "?limit=x&state=é"]
    plan = []
    for _ in range(HTTP_REQUESTS):
        method, path = rng.choice(targets)
        headers: dict[str, str] = dict(rng.choice(auths))
        if rng.random() < 0.7:   # mostly the right credential, so the body gets parsed
            right = app_token if path.startswith("/apps/") else user_token
            headers = {"Authorization": f"Bearer {right}"}
        kind = rng.randrange(10)
        body: bytes | None = rng.choice(BODIES)
        ctype = rng.choice(["application/json", "multipart/form-data",
                            "multipart/form-data; boundary=xyz",
                            "application/x-www-form-urlencoded", "text/plain", "é/é"])
        if kind == 0:
            body = b"x" * rng.randrange(2 * 1024 * 1024, 3 * 1024 * 1024)   # oversized
        elif kind == 1:
            body = b"--xyz\r\nContent-Disposition: form-data; name=\"zip_file\"; " \
                   b"filename=\"a.zip\"\r\n\r\nPK\x03\x04" + bytes(rng.randrange(256)
                                                                   for _ in range(200))
        elif kind == 2:
            body = ("token=" + "".join(rng.choice(POISON) for _ in range(50)) + "&csrf=%ff"
                    ).encode()
        if rng.random() < 0.2:
            headers["Cookie"] = f"crewship_session={cookie}"
        if rng.random() < 0.1:
            headers["Origin"] = rng.choice(["http://[::1", "null", "http://evil.example", "é"])
        plan.append({"method": method, "path": path + rng.choice(queries), "headers": headers,
                     "content_type": ctype, "body": body, "chunked": rng.random() < 0.3})
    return plan


def send_http(srv: CrewshipServer, client: httpx.Client, request: dict[str, Any]) -> int:
    headers = {k: v.encode() for k, v in request["headers"].items()}   # UTF-8 bytes as sent
    headers["Content-Type"] = request["content_type"].encode()
    body = request["body"]
    content: Any = body
    if request["chunked"] and body is not None:
        content = iter([body[i:i + 8192] for i in range(0, len(body), 8192)])
    try:
        resp = client.request(request["method"], request["path"], headers=headers,
                              content=content)
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
        return 0  # the server answered early and closed: counted as refused, not 500
    return resp.status_code


def raw_http(srv: CrewshipServer, payload: bytes) -> int:
    with socket.create_connection((HOST, srv.http_port), timeout=10) as sock:
        sock.sendall(payload)
        data = sock.recv(4096)
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


RAW = [b"POST /apps/target/kickoff HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
       b"POST /apps/target/kickoff HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
       b"POST /apps/target/kickoff HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
       b"POST /apps/target/kickoff HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
       b"zz\r\nxx\r\n0\r\n\r\n",
       b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
       b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\r\n\r\n",
       b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
       b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 60]


def test_fuzzing_the_front_doors_changes_nothing_and_never_500s(srv: CrewshipServer) -> None:
    rng = random.Random(SEED)
    srv.ssh(srv.admin_key, "apps:create", "target", check=True)
    app_token = srv.ssh(srv.admin_key, "tokens", "target", check=True).stdout.strip()
    user_token = srv.ssh(srv.admin_key, "api-tokens:create", check=True).stdout.strip()
    uuid = srv.ssh_json(srv.admin_key, "status", "target")["uuid"]
    login = httpx.post(f"{srv.http_url}/dashboard/login", data={"token": user_token}, timeout=10)
    cookie = login.cookies["crewship_session"]
    before = fingerprint(srv.data_dir)

    names = [*sorted(REGISTRY.commands), "git-upload-pack", "git-receive-pack"]
    lines = TARGETED + [ssh_line(rng, names) for _ in range(SSH_LINES - len(TARGETED))]
    kinds: Counter[str] = Counter()
    ssh_counts = asyncio.run(send_ssh_lines(srv, lines, kinds))

    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=srv.http_url, timeout=30) as client:
        for request in http_plan(rng, app_token, user_token, uuid, cookie):
            statuses[send_http(srv, client, request)] += 1
    for payload in RAW:
        statuses[raw_http(srv, payload)] += 1
    after = fingerprint(srv.data_dir)

    crashed = [e for e in srv.logs() if e.get("event") in ("request_crashed", "command_crashed")]
    tracebacks = srv.log_text().count("Traceback")
    counts = {"ssh": dict(ssh_counts), "http": {"sent": sum(statuses.values()),
                                                "statuses": {str(k): v for k, v in
                                                             sorted(statuses.items())},
                                                "errors": sum(v for k, v in statuses.items()
                                                              if k >= 400 or k == 0),
                                                "500s": statuses[500]},
              "ssh_error_kinds": dict(kinds.most_common(15)),
              "crashes_logged": len(crashed), "tracebacks": tracebacks,
              "state_unchanged": before == after}
    print(json.dumps(counts, indent=2))
    (REPO_ROOT / "test-artifacts").mkdir(exist_ok=True)
    (REPO_ROOT / "test-artifacts" / "fuzz-counts.json").write_text(json.dumps(counts, indent=2))

    assert ssh_counts["sent"] == SSH_LINES
    assert len(names) > 30                      # the real command table, not only git
    assert sum(statuses.values()) == HTTP_REQUESTS + len(RAW)
    assert ssh_counts["internal_errors"] == 0, crashed[:3]
    assert ssh_counts["no_exit_status"] == 0
    assert ssh_counts["hung"] == 0
    assert statuses[500] == 0, crashed[:3]
    assert not any(500 <= s < 600 and s != 503 for s in statuses), statuses
    assert crashed == []
    assert tracebacks == 0, srv.log_text()[-3000:]
    assert before == after, "bad input changed the database or the repos"
    # the server still serves: the doors were not jammed open or shut
    assert srv.ssh(srv.admin_key, "whoami", check=True).stdout.startswith("admin")
    assert httpx.get(f"{srv.http_url}/apps/target/inputs", timeout=10,
                     headers={"Authorization": f"Bearer {app_token}"}).status_code in (200, 503)
