"""PeeweeSink(mode="buffered"): the guarantees of the background writer, on real SQLite."""

from __future__ import annotations

import os
import sqlite3
import threading

import peewee
import pytest

from auditaspect import AuditRecord, EventType, PeeweeSink, audited


@audited(EventType.RESOURCE_MODIFIED)
def touch(resource_id: str) -> None:
    return None


def count_rows(path: str) -> int:
    """Count rows from a separate connection, as an auditor would."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    finally:
        conn.close()


def test_flush_makes_every_earlier_event_visible(db_url, tmp_path):
    """After flush(), another connection sees every event sent before it."""
    with PeeweeSink(db_url, mode="buffered", flush_interval=10) as sink:
        for i in range(250):
            touch(f"r{i}")
        assert sink.flush(timeout=30)
        assert 250 == count_rows(str(tmp_path / "audit.db"))


def test_close_loses_nothing(db_url, tmp_path):
    """close() writes everything still queued."""
    sink = PeeweeSink(db_url, mode="buffered", flush_interval=10, batch_size=1000).connect()
    for i in range(1234):
        touch(f"r{i}")
    sink.close()
    assert 1234 == count_rows(str(tmp_path / "audit.db"))
    assert 1234 == sink.stats.written


def test_back_pressure_with_a_tiny_queue_and_a_locked_database(tmp_path):
    """A full queue blocks the caller while the database is locked; nothing is dropped."""
    path = str(tmp_path / "slow.db")
    sink = PeeweeSink(f"sqlite:///{path}", mode="buffered", queue_size=2, batch_size=1).connect()
    touch("warm-up")
    sink.flush()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer now waits on SQLite's lock
    returned: list[int] = []

    def caller() -> None:
        for i in range(20):
            touch(f"r{i}")
            returned.append(i)

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(1.0)
    try:
        assert thread.is_alive(), "the caller should be blocked on the full queue"
        assert len(returned) <= 4  # two queued, one in the writer's hands, one in flight
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(30)
    sink.close()
    assert 21 == count_rows(path)
    assert (0, 0) == (sink.stats.spilled, sink.stats.lost)


def test_events_from_many_threads_arrive_exactly_once(db_url):
    """Eight threads writing at once: every event once, none twice, none lost."""
    with PeeweeSink(db_url, mode="buffered", batch_size=64) as sink:

        def worker(n: int) -> None:
            for i in range(300):
                touch(f"t{n}-{i}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sink.flush()
        ids = [r.details["resource_id"] for r in AuditRecord.select(AuditRecord.details)]
    assert 2400 == len(ids)
    assert 2400 == len(set(ids))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns that forking a process with threads may deadlock: that
# is exactly the situation this test proves the sink survives.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_writes_its_own_events(tmp_path):
    """After fork the child gets a fresh writer and connection; parent's queue stays."""
    path = str(tmp_path / "fork.db")
    sink = PeeweeSink(f"sqlite:///{path}", mode="buffered", flush_interval=10).connect()
    touch("parent-before-fork")  # queued in the parent, not yet flushed
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            for i in range(5):
                touch(f"child-{i}")
            sink.close()
            code = 0 if sink.stats.written == 5 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)
    sink.close()
    conn = sqlite3.connect(path)
    try:
        rows = [
            r[0]
            for r in conn.execute("SELECT json_extract(details, '$.resource_id') FROM audit_log")
        ]
    finally:
        conn.close()
    assert sorted(["parent-before-fork", *(f"child-{i}" for i in range(5))]) == sorted(rows)


def test_buffered_inside_a_transaction_waits_for_commit(tmp_path):
    """In buffered mode an event from inside a caller transaction is queued on commit only."""
    db = peewee.SqliteDatabase(str(tmp_path / "app.db"))
    with PeeweeSink(db, mode="buffered") as sink:

        def change(name: str, fail: bool) -> None:
            with db.atomic():
                touch(name)
                if fail:
                    raise RuntimeError("rollback")

        change("committed", False)
        with pytest.raises(RuntimeError):
            change("rolled-back", True)
        sink.flush()
        assert [{"resource_id": "committed"}] == [r.details for r in AuditRecord.select()]
    db.close()


def test_buffered_refuses_strict_and_memory_databases(tmp_path):
    """strict needs sync mode; ':memory:' is one database per thread."""
    with pytest.raises(ValueError, match="strict=True needs mode='sync'"):
        PeeweeSink(f"sqlite:///{tmp_path / 'x.db'}", mode="buffered", strict=True)
    with pytest.raises(ValueError, match=":memory:"):
        PeeweeSink(peewee.SqliteDatabase(":memory:"), mode="buffered").connect()
