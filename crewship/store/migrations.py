"""Numbered schema migrations; ``PRAGMA user_version`` records the last one applied.

A migration is an SQL script, or a function of the open connection and the state's
``Sealer`` (a data migration; run in one transaction).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from crewship.store.sealing import Sealer, seal_existing

Migration = str | Callable[[sqlite3.Connection, Sealer], None]


def _seal_config(conn: sqlite3.Connection, sealer: Sealer) -> None:
    """Config values at rest: seal existing rows; releases remember purged keys."""
    conn.execute("ALTER TABLE releases ADD COLUMN purged_keys TEXT NOT NULL DEFAULT ''")
    seal_existing(conn, sealer)


MIGRATIONS: list[Migration] = [
    # 1: users, keys, apps, access, pushes
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE keys (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE,
        public_key TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (user_id, name)
    );
    CREATE TABLE apps (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        uuid TEXT NOT NULL UNIQUE,
        owner_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
        deploy_branch TEXT,
        scale INTEGER NOT NULL DEFAULT 1,
        live_release INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE TABLE access (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        level INTEGER NOT NULL,
        PRIMARY KEY (app_id, user_id)
    );
    CREATE TABLE pushes (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        user_name TEXT NOT NULL,
        ref TEXT NOT NULL,
        old_sha TEXT NOT NULL,
        new_sha TEXT NOT NULL,
        outcome TEXT,
        created_at TEXT NOT NULL
    );
    """,
    # 2: releases, config, app tokens, kickoffs
    """
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        kind TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        artifact TEXT,
        config_json TEXT NOT NULL DEFAULT '{}',
        config_digest TEXT NOT NULL DEFAULT '',
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        description TEXT NOT NULL DEFAULT '',
        UNIQUE (app_id, version)
    );
    CREATE TABLE config (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (app_id, key)
    );
    CREATE TABLE app_tokens (
        app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
        token_hash TEXT NOT NULL,
        prefix TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE kickoffs (
        id TEXT PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        release INTEGER,
        instance TEXT,
        state TEXT NOT NULL,
        inputs_json TEXT NOT NULL,
        meta_json TEXT,
        result TEXT,
        result_json TEXT,
        tasks_json TEXT,
        token_usage_json TEXT,
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        execution_time REAL
    );
    CREATE INDEX kickoffs_app ON kickoffs (app_id, created_at);
    """,
    # 3: user API tokens for the HTTP side (stored hashed; revoking deletes the row)
    """
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        last_used_at TEXT
    );
    CREATE INDEX api_tokens_user ON api_tokens (user_id);
    """,
    # 4: alert receivers per app; the webhook URLs a kickoff was given (C.3)
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX alerts_app ON alerts (app_id);
    ALTER TABLE kickoffs ADD COLUMN webhooks_json TEXT;
    CREATE INDEX kickoffs_state ON kickoffs (app_id, state, created_at);
    """,
    # 5: per-app resource limits for the docker runtime (NULL: unlimited)
    """
    ALTER TABLE apps ADD COLUMN memory_limit INTEGER;
    ALTER TABLE apps ADD COLUMN cpu_limit REAL;
    """,
    # 6: the process runtime's sandbox: each app's own uid/gid (used when the daemon is root)
    """
    ALTER TABLE apps ADD COLUMN sandbox_uid INTEGER;
    CREATE UNIQUE INDEX apps_sandbox_uid ON apps (sandbox_uid);
    """,
    # 7: a crash-looped app stays crashed across daemon restarts (NULL: not crashed)
    """
    ALTER TABLE apps ADD COLUMN crashed_at TEXT;
    """,
    # 8: config values and release config snapshots encrypted at rest (issue 11 item 3)
    _seal_config,
    # 9: dashboard sessions: the cookie holds a random id, stored hashed, tied to the API
    # token it was made from (revoking the token or removing the user ends it); when each
    # user was last seen over SSH
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        api_token_id INTEGER NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions (user_id);
    CREATE INDEX sessions_token ON sessions (api_token_id);
    ALTER TABLE users ADD COLUMN last_seen_at TEXT;
    """,
    # 10: quotas per user (NULL: the server's default,
    # -1: unlimited) and the audit trail of state-changing actions
    """
    CREATE TABLE quotas (
        user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        apps INTEGER,
        instances INTEGER,
        memory INTEGER,
        set_by TEXT NOT NULL,
        set_at TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        user TEXT,
        credential TEXT,
        app TEXT,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL DEFAULT 'ok',
        summary TEXT NOT NULL
    );
    CREATE INDEX audit_at ON audit (at);
    CREATE INDEX audit_app ON audit (app, at);
    CREATE INDEX audit_user ON audit (user, at);
    """,
    # 11: human in the loop (C.5): a kickoff's humanInputWebhook (sealed JSON: it may carry a
    # token) and its requests for human input with the answers ({"waiting", "rounds"})
    """
    ALTER TABLE kickoffs ADD COLUMN human_webhook TEXT;
    ALTER TABLE kickoffs ADD COLUMN human_json TEXT;
    """,
    # 12: each kickoff's execution trace (spans from crewAI's event bus), removed with it
    """
    CREATE TABLE kickoff_traces (
        kickoff_id TEXT PRIMARY KEY REFERENCES kickoffs(id) ON DELETE CASCADE,
        spans_json TEXT NOT NULL
    );
    """,
]
