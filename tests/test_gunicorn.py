"""A real WSGI server: gunicorn with 4 workers, driven over HTTP, stopped with SIGTERM or SIGKILL.

Every request that got its 200 was audited: after SIGTERM every one of them is
a row and the chain verifies; after SIGKILL a sync sink lost none, a buffered
one at most what its workers had queued (the documented bound).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from auditaspect import verify
from test_crash import unmeasured_env

pytest.importorskip("gunicorn")

WORKERS = 4
APP = """
import os
from auditaspect import PeeweeSink, audited

sink = PeeweeSink(
    os.environ["AUDIT_URL"],
    mode=os.environ["AUDIT_MODE"],
    queue_size=int(os.environ.get("AUDIT_QUEUE", "10000")),
    batch_size=100,
)
sink.connect()


@audited("resource_modified")
def modify(resource_id):
    return None


def app(environ, start_response):
    modify(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(
    tmp_path: Path, url: str, mode: str, *, preload: bool, queue: int = 10_000
) -> tuple[subprocess.Popen[bytes], int]:
    (tmp_path / "audit_app.py").write_text(textwrap.dedent(APP), encoding="utf-8")
    port = free_port()
    env = {**unmeasured_env(), "AUDIT_URL": url, "AUDIT_MODE": mode, "AUDIT_QUEUE": str(queue)}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        str(WORKERS),
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(tmp_path),
        "--graceful-timeout",
        "30",
        "--log-level",
        "warning",
    ]
    if preload:
        command.append("--preload")
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as stderr:
        server = subprocess.Popen(
            [*command, "audit_app:app"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, for SIGKILL of every worker
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, port
        except OSError:
            if server.poll() is not None:
                raise AssertionError(log.read_text(encoding="utf-8")) from None
            time.sleep(0.1)
    server.kill()
    raise AssertionError("gunicorn did not start within 60 s")


def drive(port: int, *, threads: int = 8, per_thread: int = 150) -> tuple[int, threading.Event]:
    """Send requests from several threads; return how many got their 200."""
    ok = [0] * threads
    stop = threading.Event()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for i in range(per_thread):
                if stop.is_set():
                    return
                try:
                    conn.request("GET", f"/r-{n}-{i}")
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    return  # the server went away: this request is not promised
                if response.status == 200:
                    ok[n] += 1
        finally:
            conn.close()

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    return sum(ok), stop


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    finally:
        conn.close()


def _rows_or_zero(path: Path) -> int:
    try:
        return count_rows(path)
    except sqlite3.Error:  # not created yet, or locked this instant
        return 0


def wait_exit(server: subprocess.Popen[bytes], timeout: float = 60) -> int:
    try:
        return server.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        raise AssertionError("gunicorn did not stop after SIGTERM") from None


@pytest.mark.parametrize("preload", [False, True], ids=["app-per-worker", "preload"])
@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_sigterm_loses_no_successful_request(tmp_path, mode, preload):
    """4 workers, concurrent requests, SIGTERM: rows == successful requests, chain intact."""
    db = tmp_path / "gunicorn.db"
    server, port = start_gunicorn(tmp_path, f"sqlite:///{db}", mode, preload=preload)
    try:
        succeeded, _ = drive(port)
    finally:
        server.send_signal(signal.SIGTERM)
        wait_exit(server)
    assert succeeded > 0
    assert succeeded == count_rows(db)
    assert verify(f"sqlite:///{db}").ok


@pytest.mark.parametrize(("mode", "queue"), [("sync", 10_000), ("buffered", 200)])
def test_sigkill_loses_at_most_the_documented_bound(tmp_path, mode, queue):
    """SIGKILL of the master and every worker mid-load: a sync sink loses nothing; a buffered
    one at most what its workers held (queue_size + batch_size each)."""
    db = tmp_path / "killed.db"
    server, port = start_gunicorn(tmp_path, f"sqlite:///{db}", mode, preload=False, queue=queue)
    result: dict[str, int] = {}

    def load() -> None:
        result["ok"], _ = drive(port, per_thread=400)

    loader = threading.Thread(target=load)
    loader.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _rows_or_zero(db) < 200:  # mid-load
        time.sleep(0.05)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(30)
    loader.join(120)
    succeeded = result["ok"]
    rows = count_rows(db)
    bound = 0 if mode == "sync" else WORKERS * (queue + 100)
    assert succeeded - rows <= bound, (succeeded, rows)
    assert rows <= succeeded + WORKERS  # at most one in flight per worker beyond the 200s
    assert verify(f"sqlite:///{db}").ok
