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


def _events_in_order(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, actor FROM audit_log ORDER BY id").fetchall()
    finally:
        conn.close()


def test_two_sinks_on_one_file_take_turns_in_one_chain(tmp_path):
    """Two sinks on one file, writing in turn: each finds the head moved by the
    other, falls back to reading it under the lock, and the chain stays whole."""
    from auditaspect import verify

    path = tmp_path / "turns.db"
    first = PeeweeSink(f"sqlite:///{path}").connect()
    second = PeeweeSink(f"sqlite:///{path}").connect()
    try:
        for number in range(30):
            for name, sink in (("first", first), ("second", second)):
                sink.write(AuditEvent(event_type="x", actor=f"{name}-{number}"))
        # Same sink twice in a row: its remembered head is right, one statement.
        first.write(AuditEvent(event_type="x", actor="first-again"))
        first.write(AuditEvent(event_type="x", actor="first-last"))
    finally:
        first.close()
        second.close()
    rows = _events_in_order(path)
    assert list(range(1, 63)) == [row_id for row_id, _ in rows]
    assert "second-29" == rows[59][1]
    assert ["first-again", "first-last"] == [actor for _, actor in rows[60:]]
    assert (True, 62) == (verify(f"sqlite:///{path}").ok, verify(f"sqlite:///{path}").rows_checked)
    assert 62 == first.stats.written + second.stats.written


def test_a_process_writing_between_two_writes_is_chained_after(tmp_path):
    """Another process appends between two of this sink's writes: the second
    write notices the head it remembered is gone and chains after the other's rows."""
    import subprocess
    import sys

    from auditaspect import verify

    path = tmp_path / "shared.db"
    url = f"sqlite:///{path}"
    with PeeweeSink(url) as sink:
        sink.write(AuditEvent(event_type="x", actor="here-1"))
        child = (
            "import sys\nfrom auditaspect import AuditEvent, PeeweeSink\n"
            "with PeeweeSink(sys.argv[1]) as s:\n"
            "    for i in range(5): s.write(AuditEvent(event_type='x', actor=f'there-{i}'))\n"
        )
        subprocess.run([sys.executable, "-c", child, url], check=True, timeout=60)
        sink.write(AuditEvent(event_type="x", actor="here-2"))
        assert 0 == sink.stats.spilled
    actors = [actor for _, actor in _events_in_order(path)]
    assert ["here-1", *[f"there-{i}" for i in range(5)], "here-2"] == actors
    assert verify(url).ok


def test_append_numbered_after_a_stale_head_writes_nothing(tmp_path):
    """The one-statement append refuses rows not numbered after the last row,
    whole, whether the append trigger or only the primary key is there."""
    from auditaspect.rows import CompiledInsert, prepare_row

    path = tmp_path / "stale.db"
    with PeeweeSink(f"sqlite:///{path}") as sink:
        for _ in range(3):
            sink.write(AuditEvent(event_type="x"))
        insert = CompiledInsert(sink.database)
        rows = [prepare_row(AuditEvent(event_type="x"), Redactor()) for _ in range(2)]
        cursor = sink.database.cursor()
        for first_id in (2, 3):  # after row 1 or 2: ids taken
            params = [
                insert.params(row, first_id + i, "0" * 64, "1" * 64, "sha256")
                for i, row in enumerate(rows)
            ]
            assert insert.append_next(cursor, params) is False
        sink.database.execute_sql("DROP TRIGGER audit_log_append")
        assert insert.append_next(cursor, params) is False
        assert 3 == len(_events_in_order(path))
        refused = [insert.params(rows[0], i, "0" * 64, "1" * 64, "sha256") for i in (4, 5)]
        # A content error is not a stale head; it is raised as peewee's, as the
        # locked path's errors are.
        with pytest.raises(peewee.IntegrityError, match="event_id"):
            insert.append_next(cursor, refused)


def test_the_first_write_after_connect_is_one_statement(tmp_path):
    """connect() remembers the log's last row: the first write appends in one
    statement (no BEGIN IMMEDIATE and head read), and chains onto that row."""
    from auditaspect import verify

    path = tmp_path / "head.db"
    with PeeweeSink(f"sqlite:///{path}") as sink:
        for _ in range(3):
            sink.write(AuditEvent(event_type="x"))
    statements: list[str] = []
    with PeeweeSink(f"sqlite:///{path}") as sink:
        sink.database.connection().set_trace_callback(statements.append)
        sink.write(AuditEvent(event_type="y", actor="after-connect"))
        sink.database.connection().set_trace_callback(None)
    # (SQLite traces the statement again for each step of the append trigger.)
    assert statements, statements
    assert all(s.startswith("INSERT INTO") for s in statements), statements
    assert verify(f"sqlite:///{path}").ok
    assert [(4, "after-connect")] == _events_in_order(path)[3:]


def test_an_event_a_receiver_broke_is_counted_lost_not_raised(tmp_path, caplog):
    """A receiver that corrupts the frozen event (object.__setattr__) before the
    sink sees it: the sink cannot make a row of it, says so as critical and
    counts it lost; a strict sink raises AuditWriteError instead."""
    event = AuditEvent(event_type="x")
    object.__setattr__(event, "timestamp", "not a datetime")
    with PeeweeSink(f"sqlite:///{tmp_path / 'broken.db'}") as sink:
        sink.write(event)
        assert (1, 1, 0) == (sink.stats.lost, sink.stats.failed, sink.stats.written)
    assert "LOST audit event" in caplog.text
    strict = PeeweeSink(f"sqlite:///{tmp_path / 'strict.db'}", strict=True)
    with strict, pytest.raises(AuditWriteError, match="cannot be stored"):
        strict.write(event)
