"""Rows: what an event becomes before the sink appends it."""

from __future__ import annotations

import gc
from datetime import datetime, timezone

from auditaspect import AuditEvent, Redactor, emit, signals
from auditaspect.rows import DETAILS, EVENT_ID, prepare_row, row_event


def test_a_row_is_plain_data_the_collector_does_not_track():
    """A queued row holds only text and bytes: nothing for the garbage collector."""
    row = prepare_row(AuditEvent(event_type="x", details={"a": [1, {"b": 2}]}), Redactor())
    assert all(isinstance(value, (str, bytes, type(None))) for value in row)
    # Nothing in it for the collector to traverse (CPython then stops tracking
    # the tuple itself at a collection it survives).
    assert not any(gc.is_tracked(value) for value in row)


def test_row_event_gives_back_the_stored_event():
    """The spill file's event from a row is the redacted event as stored."""
    redactor = Redactor()
    event = AuditEvent(
        event_type="config_changed",
        timestamp=datetime(2026, 11, 30, 21, 0, 0, 123456, tzinfo=timezone.utc),
        outcome="failure",
        actor="alice",
        ip="203.0.113.7",
        target="svc.set",
        error="ValueError: no",
        details={"password": "hunter2", "n": 3},
    )
    row = prepare_row(event, redactor)
    back = row_event(row)
    assert event.event_id == back.event_id == row[EVENT_ID]
    assert event.timestamp == back.timestamp
    assert ("failure", "alice", "203.0.113.7", "svc.set", "ValueError: no") == (
        back.outcome,
        back.actor,
        back.ip,
        back.target,
        back.error,
    )
    assert {"password": redactor.mask, "n": 3} == back.details
    assert prepare_row(back, redactor)[: DETAILS + 2] == row


def test_pipeline_events_are_whole_events():
    """Events the pipeline builds without __init__ compare, print and evolve like any."""
    seen = []

    def receiver(sender, *, event):
        seen.append(event)

    signals.audit_event.connect(receiver)
    try:
        event = emit("config_changed", actor="alice", key="a")
    finally:
        signals.audit_event.disconnect(receiver)
    assert [event] == seen
    rebuilt = AuditEvent(
        **{k: v for k, v in event.to_dict().items() if k != "timestamp"}, timestamp=event.timestamp
    )
    assert rebuilt == event
    assert "alice" == event.actor
    assert event.timestamp.tzinfo is timezone.utc
    assert "config_changed" in repr(event)


def test_pipeline_checks_the_outcome_by_value():
    """An outcome spelled at run time is accepted; anything else is a ValueError."""
    import pytest

    spelled = "".join(["suc", "cess"])  # equal to "success", not the same object
    assert "success" == emit("x", outcome=spelled).outcome
    with pytest.raises(ValueError, match="outcome must be"):
        emit("x", outcome="maybe")


def test_sqlite_inserts_any_number_of_rows_in_statements_of_at_most_the_limit(tmp_path):
    """The locked path's INSERT on SQLite: every row, in order, one statement per
    APPEND_LIMIT rows (each statement's text the one-row values repeated)."""
    import peewee

    from auditaspect.model import create_schema
    from auditaspect.rows import CompiledInsert

    db = peewee.SqliteDatabase(str(tmp_path / "rows.db"))
    create_schema(db)
    db.execute_sql("DROP TRIGGER audit_log_append")  # numbered freely here: only the SQL is tested
    insert = CompiledInsert(db)
    redactor = Redactor()
    limit = insert.APPEND_LIMIT
    statements: list[str] = []
    db.connection().set_trace_callback(statements.append)
    next_id = 1
    for count in (1, 2, limit, limit + 1, 2 * limit + 3):
        rows = [prepare_row(AuditEvent(event_type=f"n{count}"), redactor) for _ in range(count)]
        params = [insert.params(row, next_id + i, "p", "h", "k") for i, row in enumerate(rows)]
        statements.clear()
        with db.atomic():
            insert.execute(db.cursor(), params)
        inserts = [s for s in dict.fromkeys(statements) if s.startswith("INSERT")]
        assert -(-count // limit) == len(inserts)
        stored = db.execute_sql(
            "SELECT id, event_id FROM audit_log WHERE id >= ? ORDER BY id", (next_id,)
        ).fetchall()
        assert [(next_id + i, row[EVENT_ID]) for i, row in enumerate(rows)] == stored
        next_id += count
    db.close()
