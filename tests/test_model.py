"""AuditRecord and the audit_log schema: columns, indexes, append-only guards."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import peewee
import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditaspect import AppendOnlyError, AuditEvent, AuditRecord, PeeweeSink
from auditaspect.model import UTCDateTimeField, create_schema, format_timestamp


def test_schema_has_the_event_columns_and_indexes(sink):
    """Columns follow AuditEvent; timestamp, event_type, actor and plan_id are indexed."""
    db = sink.database
    columns = [c.name for c in db.get_columns("audit_log")]
    assert [
        "id",
        "event_id",
        "timestamp",
        "event_type",
        "outcome",
        "actor",
        "plan_id",
        "ip",
        "correlation_id",
        "target",
        "details",
        "error",
        "prev_hash",
        "hash",
        "key_id",
    ] == columns
    indexed = {tuple(ix.columns) for ix in db.get_indexes("audit_log")}
    for column in ("timestamp", "event_type", "actor", "plan_id", "event_id"):
        assert (column,) in indexed


def test_create_schema_is_idempotent(sink):
    """Creating the schema again keeps the table and its rows."""
    sink.write(AuditEvent(event_type="x"))
    create_schema(sink.database)
    assert 1 == AuditRecord.select().count()


def _row(sink: PeeweeSink) -> AuditRecord:
    sink.write(AuditEvent(event_type="x", actor="alice"))
    return AuditRecord.get()


def test_model_refuses_update_and_delete(sink):
    """Every peewee path that changes or removes rows is refused."""
    row = _row(sink)
    row.actor = "mallory"
    with pytest.raises(AppendOnlyError, match="append-only"):
        row.save()
    with pytest.raises(AppendOnlyError):
        row.delete_instance()
    with pytest.raises(AppendOnlyError):
        AuditRecord.update(actor="mallory")
    with pytest.raises(AppendOnlyError):
        AuditRecord.delete()
    with pytest.raises(AppendOnlyError):
        AuditRecord.replace(event_id="x")
    with pytest.raises(AppendOnlyError):
        AuditRecord.replace_many([])
    assert "alice" == AuditRecord.get().actor


def test_model_refuses_every_insert(sink):
    """create(), save(), insert(), insert_many(), insert_from(), replace() and
    on_conflict_*() are refused: a row written around the sink has no chain
    link (issue 12, case 6)."""
    record = AuditRecord(
        event_id="manual-1",
        timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
        event_type="x",
        outcome="success",
        target="t",
        details={"a": 1},
    )
    attempts = [
        record.save,
        lambda: record.save(force_insert=True),
        lambda: AuditRecord.create(event_id="m2", event_type="x"),
        lambda: AuditRecord.insert(event_id="m3").on_conflict_replace(),
        lambda: AuditRecord.insert(event_id="m3").on_conflict_ignore(),
        lambda: AuditRecord.insert_many([{"event_id": "m4"}]),
        lambda: AuditRecord.insert_from(AuditRecord.select(), [AuditRecord.event_id]),
        lambda: AuditRecord.bulk_create([record]),
        lambda: AuditRecord.get_or_create(event_id="m5"),
        lambda: AuditRecord.replace(event_id="x"),
    ]
    for attempt in attempts:
        with pytest.raises(AppendOnlyError, match="append-only"):
            attempt()
    assert 0 == AuditRecord.select().count()


def test_database_triggers_refuse_raw_update_and_delete(sink, tmp_path):
    """Even raw SQL on a separate connection cannot UPDATE or DELETE rows."""
    _row(sink)
    path = sink.database.database
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_log SET actor = 'mallory'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
    finally:
        conn.close()
    assert "alice" == AuditRecord.get().actor


def test_timestamp_field_round_trip():
    """Timestamps are stored as UTC ISO text and read back aware."""
    field = UTCDateTimeField()
    value = datetime(2026, 5, 6, 7, 8, 9, 123, tzinfo=timezone.utc)
    stored = field.db_value(value)
    assert "2026-05-06T07:08:09.000123+00:00" == stored
    assert value == field.python_value(stored)
    assert value == field.python_value(value.replace(tzinfo=timezone.utc))
    assert field.python_value(None) is None
    assert "raw" == field.db_value("raw")
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2026, 1, 1))


@given(st.lists(st.datetimes(timezones=st.timezones()), min_size=1, max_size=5))
def test_stored_timestamp_text_is_isoformat_in_utc(values):
    """The stored text is ``isoformat(timespec="microseconds")`` of the UTC time,
    whatever second was formatted before (the text of the last second is kept)."""
    for value in values:
        utc = value.astimezone(timezone.utc)
        assert utc.isoformat(timespec="microseconds") == format_timestamp(value)
        # The same second again, another microsecond: only the fraction changes.
        later = utc.replace(microsecond=(utc.microsecond + 1) % 1_000_000)
        assert later.isoformat(timespec="microseconds") == format_timestamp(later)


def test_model_queries_the_connected_sinks_database(db_url):
    """After connect, AuditRecord queries that sink's database."""
    with PeeweeSink(db_url) as sink:
        sink.write(AuditEvent(event_type="plan_applied"))
        assert sink.database is AuditRecord._meta.database
        rows = AuditRecord.select().where(AuditRecord.event_type == "plan_applied")
        assert 1 == rows.count()


def test_schema_on_a_plain_peewee_database(tmp_path):
    """create_schema works on any peewee SqliteDatabase the user owns."""
    db = peewee.SqliteDatabase(str(tmp_path / "own.db"))
    create_schema(db)
    assert "audit_log" in db.get_tables()
    db.close()
