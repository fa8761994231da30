"""PeeweeSink in sync mode: subscription, writing, transactions, failures."""

from __future__ import annotations

import gc
import logging
import sqlite3
import weakref
from pathlib import Path

import peewee
import pytest

from auditaspect import (
    AuditEvent,
    AuditRecord,
    AuditWriteError,
    EventType,
    PeeweeSink,
    Redactor,
    audited,
    emit,
    signals,
)


@audited(EventType.CONFIG_CHANGED)
def set_config(key: str, value: str) -> None:
    return None


def test_decorated_call_is_committed_before_it_returns(sink):
    """In sync mode the row is readable from another connection right after the call."""
    set_config("color", "blue")
    conn = sqlite3.connect(sink.database.database)
    try:
        (count,) = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    finally:
        conn.close()
    assert 1 == count
    assert 1 == sink.stats.written


def test_row_matches_the_event(sink, captured):
    """Every column of the row holds the event's value."""
    set_config("color", "blue")
    [event] = captured
    row = AuditRecord.get()
    assert event.event_id == row.event_id
    assert event.timestamp == row.timestamp
    assert ("config_changed", "success", event.target) == (row.event_type, row.outcome, row.target)
    assert {"key": "color", "value": "blue"} == row.details


def test_event_types_limits_what_is_recorded(db_url):
    """A sink with event_types records only those types."""
    with PeeweeSink(db_url, event_types=[EventType.AUTH_FAILURE, "custom"]) as sink:
        set_config("a", "b")
        emit("auth_failure", user="x")
        emit("custom")
        sink.write(AuditEvent(event_type="plan_applied"))  # ignored by write too
        assert ["auth_failure", "custom"] == [r.event_type for r in AuditRecord.select()]
        assert frozenset({"auth_failure", "custom"}) == sink.event_types


def test_sink_redacts_hand_built_events(sink):
    """An event built by hand (not redacted yet) is redacted before it is written."""
    sink.write(
        AuditEvent(
            event_type="x",
            actor="Bearer abcdefghijklmnopqrstu",
            details={"password": "hunter2", "nested": {"api_key": "k"}},
            error="failed with token=abcdef",
        )
    )
    row = AuditRecord.get()
    assert {"password": "[REDACTED]", "nested": {"api_key": "[REDACTED]"}} == row.details
    assert "abcdefghijklmnopqrstu" not in row.actor
    assert "abcdef" not in row.error


def test_sink_uses_its_own_redactor(db_url):
    """redactor= applies that redactor's rules and mask."""
    with PeeweeSink(db_url, redactor=Redactor(extra_keys=["color"], mask="***")) as sink:
        set_config("color", "blue")
        assert {"key": "color", "value": "blue"} == AuditRecord.get().details
        sink.write(AuditEvent(event_type="x", details={"color": "red"}))
        assert {"color": "***"} == AuditRecord.get(AuditRecord.event_type == "x").details


def test_row_joins_the_callers_transaction(tmp_path):
    """With the same Database object, a rolled-back change leaves no audit row."""
    db = peewee.SqliteDatabase(str(tmp_path / "app.db"))

    class Setting(peewee.Model):
        key = peewee.TextField()

        class Meta:
            database = db

    db.create_tables([Setting])

    @audited(EventType.CONFIG_CHANGED)
    def change(key: str) -> None:
        Setting.create(key=key)

    with PeeweeSink(db):
        with db.atomic():
            change("kept")

        def rolled_back() -> None:
            with db.atomic():
                change("rolled-back")
                raise RuntimeError("abort the transaction")

        with pytest.raises(RuntimeError, match="abort"):
            rolled_back()
        assert ["kept"] == [s.key for s in Setting.select()]
        assert [{"key": "kept"}] == [r.details for r in AuditRecord.select()]
    db.close()


def _locked(path: str) -> sqlite3.Connection:
    """Hold SQLite's write lock from another connection (a real, unmocked fault)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_failed_write_is_logged_and_counted(tmp_path, caplog):
    """A write that fails (database locked) is logged; the call still succeeds."""
    path = str(tmp_path / "locked.db")
    db = peewee.SqliteDatabase(path, timeout=0.05)
    with db.connection_context(), PeeweeSink(db) as sink:
        blocker = _locked(path)
        try:
            with caplog.at_level(logging.ERROR, logger="auditaspect"):
                set_config("a", "b")
        finally:
            blocker.rollback()
            blocker.close()
        assert (0, 1, 1) == (sink.stats.written, sink.stats.failed, sink.stats.spilled)
        assert "audit write failed" in caplog.text
        assert "database is locked" in caplog.text


def test_strict_sink_raises_audit_write_error(tmp_path):
    """strict=True turns a failed write into AuditWriteError in the caller."""
    path = str(tmp_path / "locked.db")
    db = peewee.SqliteDatabase(path, timeout=0.05)
    with db.connection_context(), PeeweeSink(db, strict=True) as sink:
        blocker = _locked(path)
        try:
            with pytest.raises(AuditWriteError, match="database is locked") as info:
                set_config("a", "b")
        finally:
            blocker.rollback()
            blocker.close()
        assert isinstance(info.value.__cause__, peewee.OperationalError)
        assert 0 == sink.stats.spilled
        assert 1 == sink.stats.failed


def test_close_unsubscribes_and_is_idempotent(db_url):
    """After close no receiver is left; closing twice is fine."""
    sink = PeeweeSink(db_url).connect()
    assert sink.connect() is sink
    assert signals.audit_event.receivers
    sink.close()
    sink.close()
    assert not signals.audit_event.receivers
    assert sink.database.is_closed()


def test_sink_is_held_strongly(db_url):
    """A connected sink keeps recording even when the user drops every reference."""
    sink = PeeweeSink(db_url).connect()
    ref = weakref.ref(sink)
    del sink
    gc.collect()
    set_config("a", "b")
    assert 1 == AuditRecord.select().count()
    still_there = ref()
    assert still_there is not None
    still_there.close()


def test_user_database_is_not_closed(tmp_path):
    """A Database the user passed in stays the user's to close."""
    db = peewee.SqliteDatabase(str(tmp_path / "own.db"))
    with PeeweeSink(db) as sink:
        sink.write(AuditEvent(event_type="x"))
    assert not db.is_closed()
    db.close()


def test_write_before_connect_is_a_clear_error(db_url):
    """Writing through an unconnected sink says to connect it."""
    with pytest.raises(RuntimeError, match=r"call \.connect\(\)"):
        PeeweeSink(db_url).write(AuditEvent(event_type="x"))


def test_default_database_comes_from_the_environment(tmp_path, monkeypatch):
    """With no database argument the sink uses $AUDITASPECT_DATABASE_URL."""
    monkeypatch.setenv("AUDITASPECT_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    with PeeweeSink() as sink:
        set_config("a", "b")
    assert Path(sink.database.database).exists()
    assert "PeeweeSink(SqliteDatabase(" in repr(sink)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "async"}, ValueError, "mode must be 'sync' or 'buffered'"),
        ({"redactor": "strict"}, TypeError, "redactor must be a Redactor"),
        ({"event_types": "plan_applied"}, TypeError, "collection of types"),
        ({"event_types": [""]}, TypeError, "event_type"),
    ],
)
def test_bad_arguments_are_clear_errors(db_url, kwargs, error, match):
    """Bad sink arguments fail at construction with a message naming the fix."""
    with pytest.raises(error, match=match):
        PeeweeSink(db_url, **kwargs)


def test_replay_before_connect_is_a_clear_error(db_url):
    """replay() on an unconnected sink says to connect it."""
    with pytest.raises(RuntimeError, match="not connected"):
        PeeweeSink(db_url).replay()


def test_replay_of_events_already_stored_writes_nothing(db_url):
    """A spill file holding only stored events replays to nothing, and empties."""
    with PeeweeSink(db_url) as sink:
        event = AuditEvent(event_type="x")
        sink.write(event)
        sink.spill.append([event])
        assert 0 == sink.replay()
        assert not sink.spill.pending()
        assert 1 == AuditRecord.select().count()


def test_failed_connect_leaves_a_users_database_open(tmp_path):
    """If connect() fails, a Database the user passed in is not closed behind their back."""
    db = peewee.SqliteDatabase(str(tmp_path / "future.db"))
    with PeeweeSink(db):
        db.execute_sql("UPDATE audit_log_schema SET version = 99")
    db.connect(reuse_if_open=True)
    with pytest.raises(RuntimeError, match="upgrade auditaspect"):
        PeeweeSink(db).connect()
    assert not db.is_closed()
    db.close()


def test_buffered_sink_can_leave_sigterm_alone(db_url):
    """handle_sigterm=False installs no signal handler."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with PeeweeSink(db_url, mode="buffered", handle_sigterm=False) as sink:
        set_config("a", "b")
        assert sink.flush(timeout=30)
        assert before == signal.getsignal(signal.SIGTERM)
