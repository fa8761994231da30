"""Real servers for the integration tests: start one on a free port, talk HTTP to it.

Servers run unmeasured (see test_crash.unmeasured_env): a SIGTERM inside
coverage's tracer can deadlock the child; the integrations' code is measured
through the frameworks' in-process test clients instead.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from test_crash import unmeasured_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    command: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    port: int | None = None,
    ready: str | None = None,
    timeout: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``; wait for ``port`` to accept (or ``ready`` in its log); stop it after.

    Stopped with SIGTERM (its whole process group), SIGKILL after 30 s. A
    server that dies or never gets ready fails the test with its log.
    """
    # The log goes to the temporary directory, never into cwd (which may be
    # the checkout's examples/).
    log = Path(tempfile.gettempdir()) / f"auditaspect-server-{time.monotonic_ns()}.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**unmeasured_env(), **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise AssertionError(f"{command[0]} exited: {log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{command} not ready: {log.read_text(errors='replace')}")
            if port is not None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    pass
            elif ready is not None and ready in log.read_text(errors="replace"):
                break
            time.sleep(0.1)
        yield server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)


def request(
    port: int,
    method: str,
    path: str,
    *,
    form: dict[str, str] | None = None,
    json_data: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = None
        sent = dict(headers or {})
        if form is not None:
            body = urllib.parse.urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        elif json_data is not None:
            body = json.dumps(json_data)
            sent["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def json_body(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


def audit_rows(path: Path, columns: str) -> list[tuple[Any, ...]]:
    """``SELECT columns FROM audit_log ORDER BY id`` on a SQLite file, with plain sqlite3."""
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(f"SELECT {columns} FROM audit_log ORDER BY id").fetchall()
    finally:
        conn.close()


def database_bytes(path: Path) -> bytes:
    """Every byte of a SQLite database as stored: the file, its -wal and -journal."""
    data = b""
    for suffix in ("", "-wal", "-journal"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            data += part.read_bytes()
    return data
