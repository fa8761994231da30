"""Failure policy: spill to a private file, replay exactly once, never lose silently."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading

import peewee
import pytest

from auditaspect import AuditEvent, AuditRecord, EventType, PeeweeSink, audited, verify
from auditaspect.spill import SpillFile, decode_record


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
        set_config("after", "v")  # succeeds, then replays (in the background)
        assert sink.flush(timeout=30)
        assert (1, 5) == (sink.stats.written, sink.stats.replayed)
        keys = sorted(r.details["key"] for r in AuditRecord.select())
    assert ["after", "k0", "k1", "k2", "k3", "k4"] == keys
    assert not os.path.exists(spill) or 0 == os.path.getsize(spill)
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
        assert second.flush(timeout=30)
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
        sink._retry_at = float("inf")  # keep it spilled while the test reads it
        assert "hunter2" not in text
        assert "abcdefghijklmnopqrstu" not in text
        assert "[REDACTED]" in text
    db.close()


def test_unreadable_spill_lines_are_set_aside_and_logged(path, caplog):
    """A torn line (a crash mid-append) is logged and quarantined; the other lines replay."""
    with PeeweeSink(f"sqlite:///{path}") as sink:
        sink.spill.append([AuditEvent(event_type="x")])
        with open(sink.spill.path, "a", encoding="utf-8") as handle:
            handle.write('{"event_type": "torn\n\n')
        with caplog.at_level(logging.ERROR, logger="auditaspect"):
            assert 1 == sink.replay()
        with open(sink.spill.quarantine_path, encoding="utf-8") as handle:
            assert "torn" in handle.read()
    assert "set aside damaged line 2" in caplog.text


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
        with open(sink.spill.path, "rb") as handle:
            assert ["kept"] == [decode_record(line)[1].details["key"] for line in handle]
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


def _spill_lines(spill: SpillFile) -> list[bytes]:
    with open(spill.path, "rb") as handle:
        return handle.read().splitlines()


def test_a_torn_record_never_swallows_the_next_one(path):
    """A record torn mid-write (no newline, as a full disk leaves it) stays one damaged line:
    the next spilled event is intact and replayed, the torn one is set aside, not dropped."""
    with PeeweeSink(f"sqlite:///{path}") as sink:
        sink._retry_at = float("inf")  # the database counts as failing: events spill
        set_config("before", "1")
        whole = _spill_lines(sink.spill)[0]
        with open(sink.spill.path, "ab") as handle:
            handle.write(whole[: len(whole) // 2])  # torn: no newline
        set_config("after", "2")
        sink._retry_at = 0
        assert 2 == sink.replay()
        keys = sorted(r.details["key"] for r in AuditRecord.select())
        assert ["after", "before"] == keys
        with open(sink.spill.quarantine_path, "rb") as handle:
            assert 1 == len(handle.read().splitlines())


def test_a_torn_multibyte_character_does_not_stop_replay(path):
    """A record cut inside a UTF-8 character is quarantined; every other record replays."""
    with PeeweeSink(f"sqlite:///{path}") as sink:
        sink.spill.append([AuditEvent(event_type="x", actor="é" * 40) for _ in range(3)])
        with open(sink.spill.path, "rb") as handle:
            data = handle.read()
        cut = data.index("é".encode()) + 1  # between the two bytes of é
        with open(sink.spill.path, "wb") as handle:
            handle.write(data[:cut] + b"\n" + data[data.index(b"\n") + 1 :])
        assert 2 == sink.replay()
        assert 2 == AuditRecord.select().count()


def test_a_spill_path_that_is_a_symlink_is_refused(path, tmp_path, caplog):
    """A symlink at the spill path is never followed: its target is neither truncated nor
    written; the event is counted lost and logged as critical."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    link = tmp_path / "audit.db.spill.jsonl"
    link.symlink_to(victim)
    with PeeweeSink(f"sqlite:///{path}") as sink:
        sink._retry_at = float("inf")
        with caplog.at_level(logging.CRITICAL, logger="auditaspect"):
            set_config("a", "1")
        assert 1 == sink.stats.lost
        sink._spilled = False
    assert "precious\n" == victim.read_text(encoding="utf-8")
    assert "symbolic link" in caplog.text


def test_an_existing_spill_file_is_made_private(path, tmp_path):
    """A spill file someone left world-readable is made 0600 before anything is written."""
    spill = tmp_path / "audit.db.spill.jsonl"
    spill.write_bytes(b"")
    spill.chmod(0o644)
    SpillFile(spill).append([AuditEvent(event_type="x")])
    assert 0o600 == stat.S_IMODE(os.stat(spill).st_mode)


def test_a_sink_never_replays_another_databases_events(tmp_path):
    """Tenant A's spilled events, in a spill file B shares, stay for A: B leaves them alone
    (whatever its event_types), and A replays them once its database is back."""
    shared = tmp_path / "shared.spill.jsonl"
    a_path, b_path = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    tenant_a = PeeweeSink(f"sqlite:///{a_path}", spill_path=shared).connect()
    tenant_a._retry_at = float("inf")  # A's database counts as failing: its events spill
    set_config("tenant-a", "plan")
    tenant_a._spilled = False  # and stay spilled when A closes
    tenant_a.close()
    with PeeweeSink(f"sqlite:///{b_path}", spill_path=shared, event_types=["other"]) as b:
        assert b.flush(timeout=30)
        assert 0 == b.replay()
        assert 0 == b.stats.replayed
    conn = sqlite3.connect(b_path)
    assert 0 == conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    conn.close()
    assert SpillFile(shared).pending()
    with PeeweeSink(f"sqlite:///{a_path}", spill_path=shared) as again:
        assert again.flush(timeout=30)
        assert 1 == again.stats.replayed
        assert ["tenant-a"] == [r.details["key"] for r in AuditRecord.select()]


def test_default_spill_files_are_per_database():
    """Two PostgreSQL databases (or tables) never share a default spill file."""
    from auditaspect.sink import _default_spill_path

    first = peewee.PostgresqlDatabase("tenant_a", host="db.internal", port=5432)
    second = peewee.PostgresqlDatabase("tenant_b", host="db.internal", port=5432)
    paths = {
        _default_spill_path(first, "postgresql://db.internal:5432/tenant_a#audit_log"),
        _default_spill_path(second, "postgresql://db.internal:5432/tenant_b#audit_log"),
        _default_spill_path(second, "postgresql://db.internal:5432/tenant_b#other_log"),
    }
    assert 3 == len(paths)


def test_replay_after_recovery_runs_off_the_calling_thread(path):
    """The call that finds the database writable again does not replay the backlog itself."""
    threads: list[str] = []
    with PeeweeSink(f"sqlite:///{path}") as sink:
        sink._retry_at = float("inf")
        for i in range(50):
            set_config(f"k{i}", "v")
        drain = sink.spill.drain

        def observed(write, **kwargs):
            threads.append(threading.current_thread().name)
            return drain(write, **kwargs)

        sink.spill.drain = observed  # type: ignore[method-assign]
        sink._retry_at = 0
        set_config("after", "v")
        assert sink.flush(timeout=30)
        assert 50 == sink.stats.replayed
    assert ["auditaspect-replay"] == threads[:1]
    assert "MainThread" not in threads[:1]


REPLAY_MEMORY = """
import resource, sys
from auditaspect import AuditEvent, PeeweeSink
from auditaspect.spill import SpillFile
path, count = sys.argv[1], int(sys.argv[2])
sink = PeeweeSink(f"sqlite:///{path}")
spill = SpillFile(path + ".spill.jsonl", origin=sink.spill.origin)
for start in range(0, count, 5000):
    spill.append([AuditEvent(event_type="x", details={"n": n, "pad": "p" * 200})
                  for n in range(start, min(count, start + 5000))])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sink.connect()
assert sink.flush(timeout=600)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sink.close()
print(sink.stats.replayed, (after - before) // 1024)
"""


def test_replay_memory_does_not_grow_with_the_backlog(tmp_path):
    """Replaying 100,000 spilled events needs about the memory of 10,000 (streamed in batches)."""
    growth = {}
    for count in (10_000, 100_000):
        db = str(tmp_path / f"m{count}.db")
        result = subprocess.run(
            [sys.executable, "-c", REPLAY_MEMORY, db, str(count)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert 0 == result.returncode, result.stderr
        replayed, grown_mb = map(int, result.stdout.split())
        assert count == replayed
        growth[count] = grown_mb
    assert growth[100_000] <= growth[10_000] + 24, growth


def test_a_spill_file_another_process_claimed_first_is_left_to_it(tmp_path):
    """Two processes replaying one spill file at once: the one that waited for the
    file's lock while the other renamed it aside finds nothing left to claim, and
    says nothing (it used to fail its replay with "No such file or directory")."""
    import threading

    from auditaspect.spill import SpillFile

    path = tmp_path / "shared.spill.jsonl"
    first, second = SpillFile(path, origin="db"), SpillFile(path, origin="db")
    first.append([AuditEvent(event_type="x") for _ in range(3)])
    got: list[object] = []
    with first._locked(first.path):  # the first process holds the lock ...
        waiting = threading.Thread(target=lambda: got.append(second.drain(lambda e: len(e))))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive()  # ... the second waits for it ...
        os.rename(first.path, f"{first.path}.replaying-other-1")  # ... and the first claims it
    waiting.join(10)
    assert [0] == got
    # The first replays its claim, all of it, once.
    seen: list[AuditEvent] = []
    assert 3 == first.drain(lambda events: seen.extend(events) or len(events))
    assert 3 == len(seen)
