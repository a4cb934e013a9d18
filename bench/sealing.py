"""What sealing config at rest costs: the migration of an unsealed database, and reads.

    .venv/bin/python -m bench.sealing [APPS] [RELEASES_PER_APP] [KEYS_PER_APP]

A state.db as it was before sealing (the schema up to the sealing migration, plain
config rows and snapshots) is made in a temp dir, then opened (the migration seals it),
then one app's config and releases are read as the service reads them.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from crewship.store.apps import AppStore
from crewship.store.migrations import MIGRATIONS
from crewship.store.releases import ConfigStore, ReleaseStore
from crewship.store.state import Database


def unsealed(path: Path, apps: int, releases: int, keys: int) -> None:
    before = next(i for i, step in enumerate(MIGRATIONS) if not isinstance(step, str))
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:before], start=1):
        assert isinstance(script, str)
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    conn.execute("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'a', 1, 'x')")
    for app in range(1, apps + 1):
        conn.execute("INSERT INTO apps (id, name, uuid, owner_id, created_at) "
                     "VALUES (?, ?, ?, 1, 'x')", (app, f"app{app}", f"uuid-{app}"))
        config = {f"KEY_{k}": f"value-{app}-{k}-{'x' * 40}" for k in range(keys)}
        conn.executemany("INSERT INTO config (app_id, key, value) VALUES (?, ?, ?)",
                         [(app, k, v) for k, v in config.items()])
        conn.executemany(
            "INSERT INTO releases (app_id, version, kind, commit_sha, config_json, "
            "config_digest, created_by, created_at, status) "
            "VALUES (?, ?, 'push', 'c', ?, 'd', 'a', 'x', 'superseded')",
            [(app, v, json.dumps(config)) for v in range(1, releases + 1)])
    conn.commit()
    conn.close()


def main(argv: list[str]) -> int:
    apps, releases, keys = (int(a) for a in (argv + ["50", "40", "20"][len(argv):])[:3])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        unsealed(path, apps, releases, keys)
        started = time.perf_counter()
        db = Database(path)
        migration = time.perf_counter() - started
        app = AppStore(db).get("app1")
        assert app is not None
        started = time.perf_counter()
        for _ in range(100):
            ConfigStore(db).get(app)
        config_ms = (time.perf_counter() - started) * 10
        started = time.perf_counter()
        for _ in range(20):
            ReleaseStore(db).all(app)
        releases_ms = (time.perf_counter() - started) * 50
        db.close()
    print(f"migration: {apps} apps x {keys} keys, {apps * releases} releases sealed in "
          f"{migration:.2f} s")
    print(f"config of one app ({keys} keys): {config_ms:.2f} ms; its {releases} releases: "
          f"{releases_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
