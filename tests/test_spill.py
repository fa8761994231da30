"""Failure policy: spill to a private file, replay exactly once, never lose silently."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat

import peewee
import pytest

from auditaspect import AuditEvent, AuditRecord, EventType, PeeweeSink, audited, verify
from auditaspect.spill import SpillFile


@audited(EventType.CONFIG_CHANGED)
def set_config(key: str, value: str) -> None:
    return None


class Lock:
    """SQLite's write lock held by another connection: a real 'database is locked'."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "audit.db")


def quick_db(path: str) -> peewee.SqliteDatabase:
    """A database that gives up on a lock after 50 ms (the default is 5 s)."""
    return peewee.SqliteDatabase(path, timeout=0.05, pragmas={"journal_mode": "wal"})


def test_failed_writes_spill_then_replay_exactly_once(path):
    """Locked database: events go to a 0600 spill file and come back once it frees up."""
    db = quick_db(path)
    with db.connection_context(), PeeweeSink(db) as sink:
        lock = Lock(path)
        try:
            for i in range(5):
                set_config(f"k{i}", "v")
        finally:
            lock.release()
        spill = sink.spill.path
        assert 5 == sink.stats.spilled
        assert 0o600 == stat.S_IMODE(os.stat(spill).st_mode)
        with open(spill, encoding="utf-8") as handle:
            assert 5 == len(handle.readlines())
        sink._retry_at = 0  # the probe interval has passed
        set_config("after", "v")  # succeeds, then replays
        assert (1, 5) == (sink.stats.written, sink.stats.replayed)
        keys = sorted(r.details["key"] for r in AuditRecord.select())
    assert ["after", "k0", "k1", "k2", "k3", "k4"] == keys
    assert 0 == os.path.getsize(spill)
    assert verify(f"sqlite:///{path}").ok
    db.close()


def test_after_a_failure_events_spill_without_waiting(path):
    """While the probe interval runs, events spill at once: only one write waited."""
    db = quick_db(path)
    with db.connection_context(), PeeweeSink(db) as sink:
        lock = Lock(path)
        try:
            for i in range(20):
                set_config(f"k{i}", "v")
        finally:
            lock.release()
        assert (1, 20) == (sink.stats.failed, sink.stats.spilled)
    db.close()


def test_spilled_events_are_replayed_on_the_next_start(path):
    """A sink that closed while the database was unwritable leaves the events for the next."""
    db = quick_db(path)
    with db.connection_context():
        sink = PeeweeSink(db).connect()
        lock = Lock(path)
        try:
            set_config("a", "1")
            set_config("b", "2")
            sink.close()  # tries to replay, cannot: they stay spilled
        finally:
            lock.release()
    assert 2 == sink.stats.spilled
    assert 0 == sink.stats.replayed
    with PeeweeSink(f"sqlite:///{path}") as second:
        assert 2 == second.stats.replayed
        assert 2 == AuditRecord.select().count()
    db.close()


def test_replay_skips_events_the_database_already_has(path):
    """Replaying an event that was written after all does not write it twice."""
    with PeeweeSink(f"sqlite:///{path}") as sink:
        event = AuditEvent(event_type="x", details={"n": 1})
        sink.write(event)
        sink.spill.append([event, AuditEvent(event_type="y")])
        assert 1 == sink.replay()
        assert ["x", "y"] == [r.event_type for r in AuditRecord.select().order_by(AuditRecord.id)]
        assert 0 == sink.replay()
    assert verify(f"sqlite:///{path}").ok


def test_replay_of_a_still_locked_database_raises_and_keeps_the_file(path):
    """replay() on demand reports the database error and leaves the spill intact."""
    db = quick_db(path)
    with db.connection_context(), PeeweeSink(db) as sink:
        sink.spill.append([AuditEvent(event_type="x")])
        lock = Lock(path)
        try:
            with pytest.raises(peewee.OperationalError, match="locked"):
                sink.replay()
        finally:
            lock.release()
        assert sink.spill.pending()
        assert 1 == sink.replay()
    db.close()


def test_spill_holds_only_redacted_events(path):
    """A spilled event is redacted like a row: no secret in the spill file."""
    db = quick_db(path)
    with db.connection_context(), PeeweeSink(db) as sink:
        lock = Lock(path)
        try:
            sink.write(
                AuditEvent(
                    event_type="x",
                    details={"password": "hunter2"},
                    actor="sk-live-abcdefghijklmnopqrstu",
                )
            )
        finally:
            lock.release()
        with open(sink.spill.path, encoding="utf-8") as handle:
            text = handle.read()
        assert "hunter2" not in text
        assert "abcdefghijklmnopqrstu" not in text
        assert "[REDACTED]" in text
    db.close()


def test_unreadable_spill_lines_are_skipped_and_logged(path, caplog):
    """A torn line (a crash mid-append) is logged; the other lines are replayed."""
    with PeeweeSink(f"sqlite:///{path}") as sink:
        sink.spill.append([AuditEvent(event_type="x")])
        with open(sink.spill.path, "a", encoding="utf-8") as handle:
            handle.write('{"event_type": "torn\n\n')
        with caplog.at_level(logging.ERROR, logger="auditaspect"):
            assert 1 == sink.replay()
    assert "unreadable line 2" in caplog.text


def test_strict_sink_never_spills(path):
    """strict=True raises to the caller and writes nothing to the spill file."""
    from auditaspect import AuditWriteError

    db = quick_db(path)
    with db.connection_context(), PeeweeSink(db, strict=True) as sink:
        lock = Lock(path)
        try:
            with pytest.raises(AuditWriteError):
                set_config("a", "b")
            with pytest.raises(AuditWriteError):  # strict does not skip to spilling
                set_config("a", "b")
        finally:
            lock.release()
        assert (2, 0) == (sink.stats.failed, sink.stats.spilled)
        assert not sink.spill.pending()
    db.close()


def test_an_unwritable_spill_file_counts_the_event_as_lost(path, tmp_path, caplog):
    """If neither the database nor the spill file works, the loss is counted and critical."""
    db = quick_db(path)
    spill = tmp_path / "missing-dir" / "spill.jsonl"
    with db.connection_context(), PeeweeSink(db, spill_path=spill) as sink:
        lock = Lock(path)
        try:
            with caplog.at_level(logging.CRITICAL, logger="auditaspect"):
                set_config("a", "b")
        finally:
            lock.release()
        assert (1, 0, 1) == (sink.stats.failed, sink.stats.spilled, sink.stats.lost)
    assert "LOST 1 audit event" in caplog.text
    db.close()


def test_failure_inside_a_caller_transaction_spills_only_on_commit(path):
    """A failed write inside the caller's transaction is spilled only if it commits."""
    db = peewee.SqliteDatabase(path, timeout=0.05)
    with db.connection_context(), PeeweeSink(db) as sink:
        sink._retry_at = float("inf")  # the database counts as failing: spill path
        with db.atomic():
            set_config("kept", "1")
            assert 0 == sink.stats.spilled  # not yet: the transaction is open
        assert 1 == sink.stats.spilled

        def rolled_back() -> None:
            with db.atomic():
                set_config("dropped", "1")
                raise RuntimeError("rollback")

        with pytest.raises(RuntimeError):
            rolled_back()
        assert 1 == sink.stats.spilled
        with open(sink.spill.path, encoding="utf-8") as handle:
            assert ["kept"] == [json.loads(line)["details"]["key"] for line in handle]
        sink._retry_at = 0
    db.close()


def test_spill_file_round_trip(tmp_path):
    """Spilled events come back equal, in order; the file is private and emptied."""
    spill = SpillFile(tmp_path / "s.jsonl")
    events = [AuditEvent(event_type="x", details={"n": i}, actor="a") for i in range(3)]
    spill.append(events)
    assert "SpillFile(" in repr(spill)
    got: list[AuditEvent] = []
    assert 3 == spill.drain(lambda batch: got.extend(batch) or len(batch))
    assert [e.to_dict() for e in events] == [e.to_dict() for e in got]
    assert not spill.pending()
    assert 0 == spill.drain(lambda batch: 1 / 0)  # nothing to do: write is not called
