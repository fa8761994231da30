"""PeeweeSink(mode="buffered", writer="process"): a real child process writes the batches."""

from __future__ import annotations

import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import peewee
import pytest

from auditaspect import EventType, PeeweeSink, audited, verify
from test_crash import unmeasured_env


@audited(EventType.RESOURCE_MODIFIED)
def touch(resource_id: str) -> None:
    return None


def stored(path: Path) -> list[str]:
    """The resource ids in the log, in id order, read as an auditor would."""
    conn = sqlite3.connect(path)
    try:
        return [
            row[0]
            for row in conn.execute(
                "SELECT json_extract(details, '$.resource_id') FROM audit_log ORDER BY id"
            )
        ]
    finally:
        conn.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def child_pid(sink: PeeweeSink) -> int:
    process = sink._process
    assert process is not None
    assert process._child is not None
    return process._child.pid


def test_writer_process_writes_every_event_in_one_chain(tmp_path):
    """Batches written by the child process: all there after flush(), one verified chain."""
    path = tmp_path / "process.db"
    with PeeweeSink(f"sqlite:///{path}", mode="buffered", writer="process", batch_size=50) as sink:
        for i in range(1000):
            touch(f"r{i}")
        assert sink.flush(timeout=60)
        assert [f"r{i}" for i in range(1000)] == stored(path)
        assert 1000 == sink.stats.written
        pid = child_pid(sink)
        assert pid != os.getpid()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "close() leaves no writer process behind"
    assert verify(f"sqlite:///{path}").ok


def test_a_killed_writer_process_loses_nothing(tmp_path, caplog):
    """SIGKILL the child while it holds a batch (waiting on a locked database): the
    parent spills what it had not answered for (and says the child was killed), a
    new child replays it, and every event is stored exactly once."""
    path = tmp_path / "killed.db"
    sink = PeeweeSink(f"sqlite:///{path}", mode="buffered", writer="process", batch_size=20)
    sink.connect()
    try:
        for i in range(200):
            touch(f"a{i}")
        sink.flush(timeout=60)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the child's next batch waits on this lock
        for i in range(100):
            touch(f"b{i}")
        time.sleep(0.5)
        os.kill(child_pid(sink), signal.SIGKILL)
        blocker.execute("ROLLBACK")
        blocker.close()
        for i in range(100):
            touch(f"c{i}")
        time.sleep(1.2)  # past the probe interval: the next batch starts a new child
        for i in range(100):
            touch(f"d{i}")
    finally:
        sink.close()
    ids = stored(path)
    expected = [
        f"{prefix}{i}"
        for prefix, n in (("a", 200), ("b", 100), ("c", 100), ("d", 100))
        for i in range(n)
    ]
    assert sorted(expected) == sorted(ids)
    assert len(ids) == len(set(ids))
    assert sink.stats.spilled > 0
    assert 0 == sink.stats.lost
    assert "it was killed by SIGKILL" in caplog.text
    assert verify(f"sqlite:///{path}").ok


def test_forked_child_starts_its_own_writer_process(tmp_path):
    """After fork the child writes through a writer process of its own; the parent's goes on."""
    path = tmp_path / "fork.db"
    sink = PeeweeSink(f"sqlite:///{path}", mode="buffered", writer="process").connect()
    touch("parent-1")
    sink.flush(timeout=60)
    parent_writer, written = child_pid(sink), sink.stats.written
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        code = 1
        try:
            for i in range(5):
                touch(f"child-{i}")
            sink.flush(timeout=60)
            code = (
                0 if child_pid(sink) != parent_writer and sink.stats.written == written + 5 else 2
            )
            sink.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)
    touch("parent-2")
    sink.close()
    assert sorted(["parent-1", "parent-2", *(f"child-{i}" for i in range(5))]) == sorted(
        stored(path)
    )
    assert verify(f"sqlite:///{path}").ok


APP = textwrap.dedent(
    """
    import sys, time
    from auditaspect import PeeweeSink, audited

    @audited("resource_modified")
    def touch(resource_id):
        return None

    sink = PeeweeSink(sys.argv[1], mode="buffered", writer="process", flush_interval=30)
    sink.connect()
    for i in range(3000):
        touch(f"r{i}")
    print(sink._process._child.pid if sys.argv[2] == "flush" and sink.flush() else "queued",
          flush=True)
    time.sleep(120)
    """
)


def test_sigterm_to_the_application_writes_what_it_queued(tmp_path):
    """SIGTERM to the application's process group: the writer process ignores it and
    writes every queued event the parent hands it on the way out."""
    path = tmp_path / "term.db"
    app = subprocess.Popen(
        [sys.executable, "-c", APP, f"sqlite:///{path}", "no-flush"],
        stdout=subprocess.PIPE,
        text=True,
        env=unmeasured_env(),
        start_new_session=True,
    )
    assert app.stdout is not None
    with app, app.stdout:
        assert "queued" == app.stdout.readline().strip()
        os.killpg(app.pid, signal.SIGTERM)
        assert 128 + signal.SIGTERM == app.wait(60)
    assert [f"r{i}" for i in range(3000)] == stored(path)


STORM_APP = textwrap.dedent(
    """
    import signal, sys
    from auditaspect import PeeweeSink, audited

    # The application survives the storm; its writer processes must too.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)

    @audited("resource_modified")
    def touch(resource_id):
        return None

    print("ready", flush=True)
    spilled = 0
    for i in range(int(sys.argv[2])):
        sink = PeeweeSink(sys.argv[1], mode="buffered", writer="process", handle_sigterm=False)
        with sink:
            touch(f"r{i}")
            sink.flush(timeout=60)
        spilled += sink.stats.spilled
    print(spilled, flush=True)
    sys.stdin.read()  # the test stops the storm before the application exits
    """
)


def test_writer_processes_started_during_a_signal_storm_survive_it(tmp_path):
    """SIGTERM, SIGINT and SIGHUP sent to the application's group while it starts
    writer processes: none dies of them, however early in its start one lands.

    Each writer process leaves the group at once (its own session), but before
    that it is in the group for a moment, and then until it ignores the signals
    it would die of them. Twenty starts under a signal every 0.2 ms hit that
    moment several times (seen before the fix: 4 to 8 of 20 writer processes
    killed by SIGTERM before they read their config, their batches spilled).
    """
    path = tmp_path / "storm.db"
    starts = 20
    app = subprocess.Popen(
        [sys.executable, "-c", STORM_APP, f"sqlite:///{path}", str(starts)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=unmeasured_env(),
        start_new_session=True,
    )
    assert app.stdin is not None
    assert app.stdout is not None
    with app, app.stdout:
        assert "ready" == app.stdout.readline().strip()
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        sent = 0
        deadline = time.monotonic() + 120
        while not select.select([app.stdout], [], [], 0)[0] and time.monotonic() < deadline:
            os.killpg(app.pid, signals[sent % 3])
            sent += 1
            time.sleep(0.0002)
        assert "0" == app.stdout.readline().strip()  # no batch spilled
        app.stdin.close()
        assert 0 == app.wait(60)
    assert [f"r{i}" for i in range(starts)] == stored(path)


def test_writer_process_leaves_with_a_killed_application(tmp_path):
    """kill -9 of the application: the writer process sees its pipe close and exits."""
    path = tmp_path / "orphan.db"
    app = subprocess.Popen(
        [sys.executable, "-c", APP, f"sqlite:///{path}", "flush"],
        stdout=subprocess.PIPE,
        text=True,
        env=unmeasured_env(),
    )
    assert app.stdout is not None
    with app, app.stdout:
        writer = int(app.stdout.readline())
        assert alive(writer)
        app.kill()
        app.wait(60)
    deadline = time.monotonic() + 20
    while alive(writer) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(writer)
    assert 3000 == len(stored(path))


def test_writer_process_needs_buffered_mode_and_a_url(tmp_path):
    """Misuse is a one-line error at construction."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with pytest.raises(ValueError, match="needs mode='buffered'"):
        PeeweeSink(url, writer="process")
    with pytest.raises(ValueError, match="'thread' or 'process'"):
        PeeweeSink(url, mode="buffered", writer="processes")  # type: ignore[arg-type]
    database = peewee.PostgresqlDatabase("audit", host="127.0.0.1")
    with pytest.raises(ValueError, match="needs the database as a URL"):
        PeeweeSink(database, mode="buffered", writer="process")
    # A SQLite Database object names its file: the child opens that.
    sqlite = peewee.SqliteDatabase(str(tmp_path / "b.db"))
    try:
        with PeeweeSink(sqlite, mode="buffered", writer="process") as sink:
            touch("x")
            assert sink.flush(timeout=60)
    finally:
        sqlite.close()  # the application's database: the sink leaves it open
    assert ["x"] == stored(tmp_path / "b.db")


@pytest.mark.parametrize(
    ("executable", "why"),
    # /bin/true exits at once: before or after the parent sends its config.
    [("/nonexistent/python", "cannot start"), ("/bin/true", "it exited with status 0")],
)
def test_a_writer_process_that_cannot_run_spills_and_close_replays(
    tmp_path, monkeypatch, caplog, executable, why
):
    """No interpreter, or one that exits at once: the batches are spilled (logged,
    counted), and close() writes them in-process: nothing lost."""
    path = tmp_path / "nostart.db"
    monkeypatch.setattr(sys, "executable", executable)
    sink = PeeweeSink(f"sqlite:///{path}", mode="buffered", writer="process").connect()
    try:
        assert sink.flush(timeout=30)  # nothing sent yet: nothing to wait for
        for i in range(30):
            touch(f"r{i}")
        assert sink.flush(timeout=60)
        assert 30 == sink.stats.spilled
        assert [] == stored(path)
        assert re.search(why, caplog.text)
    finally:
        sink.close()
    assert [f"r{i}" for i in range(30)] == stored(path)
    assert 30 == sink.stats.replayed
    assert verify(f"sqlite:///{path}").ok
