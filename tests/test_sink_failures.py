"""The sink's failure paths, in process on real files: spill mode, a deleted file, odd spills."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading

import pytest

from auditaspect import AuditError, AuditEvent, PeeweeSink, audited
from auditaspect.spill import SpillFile, SpillRefusedError


@audited("resource_modified")
def touch(resource_id: str) -> None:
    return None


def rows(path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    finally:
        conn.close()


def test_an_unreachable_database_starts_in_spill_mode_and_recovers(tmp_path, caplog):
    """A database whose directory does not exist yet: connect() spills; once it exists, the
    next probe creates the schema and replays."""
    missing = tmp_path / "later"
    with caplog.at_level(logging.ERROR, logger="auditaspect"):
        sink = PeeweeSink(f"sqlite:///{missing / 'audit.db'}", spill_path=tmp_path / "s.spill")
        sink.connect()
    assert "events spill to" in caplog.text
    for i in range(3):
        touch(f"r{i}")
    assert 3 == sink.stats.spilled
    missing.mkdir()
    sink._retry_at = 0  # the probe interval has passed
    touch("after")
    assert sink.flush(timeout=30)
    sink.close()
    assert 4 == rows(missing / "audit.db")


def test_neither_database_nor_spill_is_one_clear_error(tmp_path):
    """No database and no spill file: connect() raises AuditError naming both."""
    missing = tmp_path / "nowhere"
    sink = PeeweeSink(f"sqlite:///{missing / 'a.db'}", spill_path=missing / "s.spill")
    with pytest.raises(AuditError, match=r"cannot open the audit database sqlite:.*spill file"):
        sink.connect()


def test_a_deleted_file_is_reopened_for_every_thread(tmp_path, caplog):
    """After the file is deleted, each thread's next write goes to the new file."""
    path = tmp_path / "audit.db"
    with PeeweeSink(f"sqlite:///{path}") as sink:
        touch("main-before")
        worker_done = threading.Event()

        def worker() -> None:
            touch("worker-before")
            sink.database.close()
            worker_done.set()

        def worker_after() -> None:
            touch("worker-after")
            sink.database.close()  # peewee: a thread closes the connection it opened

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)
        assert worker_done.is_set()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.unlink(f"{path}{suffix}")
        with caplog.at_level(logging.CRITICAL, logger="auditaspect"):
            touch("main-after")
        second = threading.Thread(target=worker_after)
        second.start()
        second.join(30)
        touch("main-again")
    assert "deleted or replaced" in caplog.text
    assert 3 == rows(path)


def test_a_spill_path_that_is_not_a_file_is_refused(tmp_path):
    """A directory (or any non-regular file) at the spill path is refused, not written."""
    where = tmp_path / "a-directory"
    where.mkdir()
    with pytest.raises(IsADirectoryError):
        SpillFile(where).append([AuditEvent(event_type="x")])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SpillRefusedError, match="not a regular file"):
        SpillFile(fifo).probe()


def test_a_replay_another_process_holds_is_left_to_it(tmp_path):
    """A renamed-aside replay file locked by another replayer is skipped, then replayed later."""
    spill = SpillFile(tmp_path / "s.spill", origin="o")
    spill.append([AuditEvent(event_type="x")])
    [claimed] = spill._claim()
    holder = os.open(claimed, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert 0 == spill.drain(lambda batch: len(batch))
    finally:
        os.close(holder)
    assert spill.pending()
    assert 1 == spill.drain(lambda batch: len(batch))
    assert not spill.pending()
    assert 0 == spill._replay_file(str(tmp_path / "gone"), lambda batch: 0, 10)
