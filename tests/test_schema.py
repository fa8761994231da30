"""Schema versioning: an audit_log from before the hash chain is upgraded in place."""

from __future__ import annotations

import sqlite3

import pytest

from auditaspect import AuditRecord, PeeweeSink, emit, verify
from auditaspect.database import close_database, open_database
from auditaspect.model import SCHEMA_VERSION, installed_version

# The audit_log of schema version 1 (auditaspect before the chain), as SQL.
V1_SQLITE = [
    """CREATE TABLE audit_log (
        id INTEGER NOT NULL PRIMARY KEY, event_id VARCHAR(64) NOT NULL,
        timestamp TIMESTAMPTZ NOT NULL, event_type VARCHAR(128) NOT NULL,
        outcome VARCHAR(16) NOT NULL, actor TEXT, plan_id TEXT, ip TEXT,
        correlation_id TEXT, target TEXT NOT NULL, details JSON NOT NULL, error TEXT)""",
    "CREATE UNIQUE INDEX audit_log_event_id ON audit_log (event_id)",
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END",
]
V1_POSTGRES = [
    """CREATE TABLE audit_log (
        id BIGSERIAL PRIMARY KEY, event_id VARCHAR(64) NOT NULL UNIQUE,
        timestamp TIMESTAMPTZ NOT NULL, event_type VARCHAR(128) NOT NULL,
        outcome VARCHAR(16) NOT NULL, actor TEXT, plan_id TEXT, ip TEXT,
        correlation_id TEXT, target TEXT NOT NULL, details JSONB NOT NULL, error TEXT)""",
]
V1_ROWS = [
    (
        f"old-{i}",
        f"2026-01-0{i + 1}T10:00:00.000000+00:00",
        "config_changed",
        "success",
        "alice",
        None,
        None,
        None,
        "legacy.set",
        f'{{"key": "k{i}", "n": {i}}}',
        None,
    )
    for i in range(3)
]
INSERT = (
    "INSERT INTO audit_log (event_id, timestamp, event_type, outcome, actor, plan_id, ip,"
    " correlation_id, target, details, error) VALUES ({})"
)


def check_upgrade(url: str) -> None:
    """Connecting a sink upgrades v1: rows kept, chained, new rows appended, all verify."""
    with PeeweeSink(url) as sink:
        assert SCHEMA_VERSION == installed_version(sink.database)
        emit("config_changed", key="new")
        rows = list(AuditRecord.select().order_by(AuditRecord.id))
        assert ["old-0", "old-1", "old-2"] == [r.event_id for r in rows[:3]]
        assert {"key": "k1", "n": 1} == rows[1].details
        assert all(r.hash for r in rows)
    report = verify(url)
    assert report.ok, report
    assert 4 == report.rows_checked
    with PeeweeSink(url):  # connecting again changes nothing
        pass
    assert verify(url).ok


def test_sqlite_v1_table_is_upgraded_in_place(tmp_path):
    """A version-1 SQLite log keeps its rows and gains a verifying chain."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in V1_SQLITE:
        conn.execute(statement)
    conn.executemany(INSERT.format(", ".join("?" * 11)), V1_ROWS)
    conn.close()
    db, _ = open_database(f"sqlite:///{path}")
    assert 1 == installed_version(db)
    close_database(db)
    check_upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_log")  # the guards are back
    conn.close()


@pytest.mark.postgres
def test_postgres_v1_table_is_upgraded_in_place(pg_url):
    """A version-1 PostgreSQL log keeps its rows and gains a verifying chain."""
    db, _ = open_database(pg_url)
    for statement in V1_POSTGRES:
        db.execute_sql(statement)
    for row in V1_ROWS:
        db.execute_sql(INSERT.format(", ".join(["%s"] * 11)), row)
    assert 1 == installed_version(db)
    close_database(db)
    check_upgrade(pg_url)


def test_a_newer_schema_is_refused(tmp_path):
    """A log written by a newer auditaspect is not touched."""
    url = f"sqlite:///{tmp_path / 'future.db'}"
    with PeeweeSink(url) as sink:
        sink.database.execute_sql("UPDATE audit_log_schema SET version = 99")
    with pytest.raises(RuntimeError, match="upgrade auditaspect"):
        PeeweeSink(url).connect()


def test_installed_version_without_a_version_row(tmp_path):
    """An empty version table falls back to reading the columns."""
    url = f"sqlite:///{tmp_path / 'v.db'}"
    with PeeweeSink(url) as sink:
        sink.database.execute_sql("DELETE FROM audit_log_schema")
        assert 2 == installed_version(sink.database)
