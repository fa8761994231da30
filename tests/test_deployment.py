"""Nothing lost in real deployments: exit order, deleted files, read-only disks, fork, pools.

Every scenario runs in real child processes on real files; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_crash import unmeasured_env


def run_child(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    watchdog: bool = True,
):
    """Run a Python child; a hang dumps its stacks (faulthandler) instead of blocking CI.

    ``watchdog=False`` for a script that forks: a child inherits the parent's
    faulthandler timer state without its thread, and would hang re-arming it.
    """
    prologue = "import faulthandler; faulthandler.dump_traceback_later(100, exit=True)\n"
    if not watchdog:
        prologue = ""
    return subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def count_rows(path: str | Path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    finally:
        conn.close()


AFTER_EXIT_FLUSH = """
import atexit, sys, threading

done = threading.Event()
go = threading.Event()
calls = []

def late_hook():
    # Registered before auditaspect is imported: runs after its exit-time flush.
    go.set()
    done.wait(60)
    for i in range(20):
        touch(f"hook-{i}")
        calls.append(i)
    print(len(calls), flush=True)

atexit.register(late_hook)

from auditaspect import PeeweeSink, audited

@audited("resource_modified")
def touch(resource_id):
    return None

def serve():
    # A daemon thread still serving while the interpreter exits.
    go.wait(60)
    for i in range(30):
        touch(f"daemon-{i}")
        calls.append(i)
    done.set()

threading.Thread(target=serve, daemon=True).start()
sink = PeeweeSink(f"sqlite:///{sys.argv[1]}", mode="buffered")
sink.connect()
for i in range(100):
    touch(f"main-{i}")
"""


def test_events_after_the_exit_time_flush_are_written(tmp_path):
    """A daemon thread and an atexit hook that audit after the final flush lose nothing."""
    db = tmp_path / "exit.db"
    result = run_child(AFTER_EXIT_FLUSH, str(db))
    assert 0 == result.returncode, result.stderr
    assert "50" == result.stdout.strip()
    assert 150 == count_rows(db)


DELETED_FILE = """
import os, sys
from auditaspect import PeeweeSink, audited

@audited("resource_modified")
def touch(resource_id):
    return None

path, mode = sys.argv[1], sys.argv[2]
sink = PeeweeSink(f"sqlite:///{path}", mode=mode)
sink.connect()
for i in range(10):
    touch(f"before-{i}")
sink.flush()
os.unlink(path)
for suffix in ("-wal", "-shm"):
    if os.path.exists(path + suffix):
        os.unlink(path + suffix)
for i in range(100):
    touch(f"after-{i}")
sink.close()
print(sink.stats.written, sink.stats.lost)
"""


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_a_deleted_database_file_is_noticed_and_reopened(tmp_path, mode):
    """Writes after the file was deleted go to a new file at the path, logged as critical;
    none vanish into the unlinked inode."""
    db = tmp_path / "gone.db"
    result = run_child(DELETED_FILE, str(db), mode)
    assert 0 == result.returncode, result.stderr
    assert "deleted or replaced" in result.stderr
    assert 100 == count_rows(db)


READ_ONLY = """
import sys
from auditaspect import PeeweeSink, audited

@audited("resource_modified")
def touch(resource_id):
    return None

db, spill = sys.argv[1], sys.argv[2]
try:
    sink = PeeweeSink(f"sqlite:///{db}", spill_path=spill or None).connect()
except Exception as exc:
    print("ERROR", type(exc).__name__, exc, flush=True)
    sys.exit(3)
for i in range(5):
    touch(f"r{i}")
print("spilled", sink.stats.spilled, "lost", sink.stats.lost, flush=True)
"""


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def run_on_read_only(directory: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a child in its own mount namespace where ``directory`` is a read-only filesystem."""
    prologue = "import faulthandler; faulthandler.dump_traceback_later(100, exit=True)\n"
    command = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            command,
            "sh",
            str(directory),
            sys.executable,
            "-c",
            prologue + textwrap.dedent(script),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=unmeasured_env(),
        check=False,
    )


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m)")
def test_a_read_only_database_starts_in_spill_mode(tmp_path):
    """A database on a read-only filesystem: connect() starts in spill mode; when the spill
    file is on it too, it fails with one clear line."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    result = run_on_read_only(
        read_only, READ_ONLY, str(read_only / "audit.db"), str(tmp_path / "s.spill")
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "spilled 5 lost 0" == result.stdout.strip()
    assert "events spill to" in result.stderr
    result = run_on_read_only(read_only, READ_ONLY, str(read_only / "audit.db"), "")
    assert 3 == result.returncode, result.stdout + result.stderr
    [line] = result.stdout.strip().splitlines()
    assert line.startswith("ERROR AuditError cannot open the audit database sqlite:")
    assert "cannot write the spill file" in line
    assert "Read-only file system" in line


FORKS = """
import faulthandler, os, sys, threading, time
from auditaspect import PeeweeSink, audited

@audited("resource_modified")
def touch(resource_id):
    return None

path, mode, children = sys.argv[1], sys.argv[2], int(sys.argv[3])
sink = PeeweeSink(f"sqlite:///{path}", mode=mode).connect()
stop = threading.Event()

def busy():
    i = 0
    while not stop.is_set():
        touch(f"t-{threading.get_ident()}-{i}")
        i += 1

threads = [threading.Thread(target=busy, daemon=True) for _ in range(3)]
for t in threads:
    t.start()
pids = []
for n in range(children):
    time.sleep(0.01)
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(30, exit=True)  # a hung child says where
        for i in range(10):
            touch(f"child-{n}-{i}")
        sink.flush()
        os._exit(0)
    pids.append(pid)
failures = 0
deadline = time.monotonic() + 90
for pid in pids:
    while True:  # bounded: a hung child is a failure, not a hung test
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            failures += status != 0
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            failures += 1
            break
        time.sleep(0.01)
stop.set()
for t in threads:
    t.join(30)
sink.close()
with PeeweeSink(f"sqlite:///{path}") as again:  # replays what a busy moment spilled
    again.flush(60)
print(failures)
"""


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_fork_while_threads_write_never_deadlocks_the_child(tmp_path, mode):
    """Forking 20 children while three threads write: every child finishes and writes its rows.

    Unmeasured: coverage's tracer has its own lock, which a fork can copy held
    just as it could SQLite's (see test_crash.unmeasured_env).
    """
    db = tmp_path / "fork.db"
    result = run_child(
        FORKS, str(db), mode, "20", env=unmeasured_env(), timeout=300, watchdog=False
    )
    assert 0 == result.returncode, result.stderr
    assert "0" == result.stdout.strip(), result.stderr[-4000:]
    conn = sqlite3.connect(str(db))
    children = conn.execute(
        "SELECT count(*) FROM audit_log WHERE details LIKE '%child-%'"
    ).fetchone()[0]
    conn.close()
    assert 200 == children


MULTIPROCESSING = """
import multiprocessing, sys
from auditaspect import PeeweeSink, audited

@audited("resource_modified")
def touch(resource_id):
    return None

def open_sink(path):
    # Once per process; no close(), no flush(): the child leaves through os._exit.
    PeeweeSink(f"sqlite:///{path}", mode="buffered", flush_interval=10).connect()

def calls(n):
    for i in range(n):
        touch(f"{multiprocessing.current_process().name}-{i}")
    return n

def work(path, n):
    open_sink(path)
    calls(n)

if __name__ == "__main__":
    path, method = sys.argv[1], sys.argv[2]
    ctx = multiprocessing.get_context(method)
    procs = [ctx.Process(target=work, args=(path, 100)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    with ctx.Pool(2, initializer=open_sink, initargs=(path,)) as pool:
        done = sum(pool.map(calls, [50] * 4))
        pool.close()
        pool.join()
    print(300 + done)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_flush_their_buffered_events(tmp_path, method):
    """Process and Pool children (fork and spawn) exit through os._exit: their buffered events
    are flushed all the same."""
    db = tmp_path / "mp.db"
    script = tmp_path / "mp_child.py"
    script.write_text(textwrap.dedent(MULTIPROCESSING), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), str(db), method],
        capture_output=True,
        text=True,
        timeout=300,
        env=unmeasured_env(),  # forked children under coverage: see the fork test
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert int(result.stdout.strip()) == count_rows(db)


FIRST_START = """
import sys, time
from auditaspect import AuditEvent, PeeweeSink

path, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:  # every process imported: connect at one moment
    pass
with PeeweeSink(f"sqlite:///{path}") as sink:
    for _ in range(5):
        sink.write(AuditEvent(event_type="first_start"))
    stats = sink.stats
print(stats.written, stats.spilled, stats.failed)
"""


def test_processes_opening_a_new_file_at_once_all_write(tmp_path):
    """Workers of a first deployment (gunicorn's, say) open a SQLite file that does
    not exist yet at the same moment: each connects and writes its rows at once.

    Switching a new file to WAL takes a lock SQLite's busy timeout does not wait
    for; it used to fail one worker's connect with "database is locked" in most
    such starts, and that worker spilled every event until the next replay."""
    import time

    from auditaspect import verify

    for trial in range(6):
        path = tmp_path / f"first-{trial}.db"
        start = f"{time.time() + 1.5:.3f}"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", FIRST_START, str(path), start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [child.communicate(timeout=120) for child in children]
        for (out, err), child in zip(results, children, strict=True):
            assert 0 == child.returncode, err
            assert "5 0 0" == out.strip(), (trial, out, err)
        assert 20 == count_rows(path)
        assert verify(f"sqlite:///{path}").ok
