"""Turning "a peewee Database or a URL" into a peewee Database.

Shared by the sink and the tools that read the log, so that a URL means the
same database, opened the same way, everywhere.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from typing import Any
from urllib.parse import quote, unquote, urlparse

import peewee
from playhouse import db_url

__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "close_database",
    "database_origin",
    "mask_url",
    "open_database",
    "open_readonly",
    "resolve_url",
]

ENV_URL = "AUDITASPECT_DATABASE_URL"
DEFAULT_URL = "sqlite:///audit.db"
# WAL lets readers work while the sink writes; synchronous=NORMAL keeps every
# commit across a process crash (a power cut may lose the last few commits).
SQLITE_PRAGMAS: tuple[tuple[str, Any], ...] = (("journal_mode", "wal"), ("synchronous", "normal"))
# A locked database must not stall audited calls for long.
SQLITE_BUSY_TIMEOUT = 5.0


def resolve_url(url: str | None) -> str:
    """Return ``url``, else ``$AUDITASPECT_DATABASE_URL``, else ``sqlite:///audit.db``."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def mask_url(text: str, url: str | None = None) -> str:
    """``text`` with the password of ``url`` (or of every URL in ``text``) shown as ``***``.

    For every message and log line that names a database: a URL from
    ``$AUDITASPECT_DATABASE_URL`` may carry a password.
    """
    if url is not None:
        password = _password(url)
        if password:
            # As written in the URL, and as a driver would print it (decoded).
            for spelling in {password, unquote(password), quote(unquote(password), safe="")}:
                text = text.replace(spelling, "***")
    return _URL_PASSWORD.sub(r"\1***\2", text)


_URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*(@)")


class _MaskPasswords(logging.Filter):
    """Every log line of the package shows URLs without their password."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            masked = mask_url(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


logging.getLogger("auditaspect").addFilter(_MaskPasswords())


def _password(url: str) -> str | None:
    try:
        return urlparse(url).password
    except ValueError:
        return None


def sqlite_path(url: str) -> str | None:
    """Return the file path of a ``sqlite:///`` URL (``None`` for other URLs).

    ``sqlite+pool:///`` names a file the same way, and is opened the same way.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("sqlite", "sqlite+pool"):
        return None
    path = unquote(parsed.path)
    # sqlite:///audit.db is relative, sqlite:////var/audit.db absolute.
    return path[1:] if path.startswith("/") else path


def _create_private(path: str) -> None:
    """Create the database file readable and writable by its owner only.

    SQLite gives the -wal and -shm files the database file's mode, so they
    are private too. An existing file keeps the mode it has.
    """
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError:  # a read-only disk or directory: connecting will say so
        return
    os.close(fd)


def _switch_to_wal(path: str) -> None:
    """Put a SQLite file in WAL mode before peewee opens it, waiting out other openers.

    Switching a file to WAL takes a lock that SQLite's busy timeout does not
    wait for: processes opening a new file at the same moment (the workers of
    a first deployment) failed to connect with "database is locked", and one
    of them then spilled every event. Here the switch is tried again until the
    busy timeout; a file in WAL mode already costs one query. On any other
    error, and after the busy timeout, it gives up without a word: peewee's
    own switch when it connects then raises what is wrong.
    """
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    delay = 0.001
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error:  # pragma: no cover - connecting will say why
        return
    try:
        while True:
            try:
                # A refused switch may also answer with the mode it kept.
                if conn.execute("PRAGMA journal_mode = wal").fetchone()[0] == "wal":
                    return
            except sqlite3.Error as exc:
                # Not a lock (not a database, a read-only disk): connecting will say so.
                if not isinstance(exc, sqlite3.OperationalError) or "locked" not in str(exc):
                    return
            if time.monotonic() + delay > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    finally:
        conn.close()


# Pool limits for postgresql:// URLs (playhouse.pool): a thread holds one
# connection while it writes; connections idle for 5 minutes are recycled.
POOL_MAX_CONNECTIONS = 32
POOL_STALE_TIMEOUT = 300
# A thread that finds every connection in use waits this long for one (then
# the write fails and spills) instead of failing at once.
POOL_WAIT_TIMEOUT = 5.0


def _open_postgres(url: str) -> peewee.Database:
    """Open a pooled PostgreSQL database, preferring psycopg 3."""
    if getattr(peewee, "psycopg", None) is None and getattr(peewee, "psycopg2", None) is None:
        raise ImportError(
            "PostgreSQL needs a driver: pip install 'auditaspect[postgres]' (psycopg 3)"
        )
    scheme = urlparse(url).scheme
    if scheme in ("postgres", "postgresql"):
        url = url.replace(f"{scheme}://", "postgresql+pool://", 1)
    options: dict[str, Any] = {"prefer_psycopg3": True}
    if "+pool" in urlparse(url).scheme:
        options.update(
            max_connections=POOL_MAX_CONNECTIONS,
            stale_timeout=POOL_STALE_TIMEOUT,
            timeout=POOL_WAIT_TIMEOUT,
        )
    database: peewee.Database = db_url.connect(url, **options)
    return database


def open_database(database: peewee.Database | str | None) -> tuple[peewee.Database, bool]:
    """Return ``(database, owned)`` for a peewee ``Database`` or a URL.

    A ``Database`` is used as it is (``owned`` is ``False``: the caller keeps
    managing it). A URL (``sqlite:///path``, ``postgresql://...``, or any
    scheme of ``playhouse.db_url``) is opened with the defaults auditaspect
    relies on: for SQLite, a private (0600) file, WAL, ``BEGIN IMMEDIATE`` for
    writers and a 5 s busy timeout; for PostgreSQL, a connection pool
    (``playhouse.pool``) on psycopg 3. A URL peewee cannot open is a
    ``ValueError`` that says which schemes work; PostgreSQL without a driver
    is an ``ImportError`` that names the extra to install.
    """
    if isinstance(database, peewee.Database):
        return database, False
    if database is not None and not isinstance(database, str):
        raise TypeError(
            f"database must be a peewee Database or a URL string, not {type(database).__name__}"
        )
    url = resolve_url(database)
    path = sqlite_path(url)
    try:
        if path is not None:
            if not path:
                raise ValueError(f"{url!r} names no file; use sqlite:///audit.db")
            _create_private(path)
            _switch_to_wal(path)
            return (
                peewee.SqliteDatabase(
                    path,
                    pragmas=SQLITE_PRAGMAS,
                    timeout=SQLITE_BUSY_TIMEOUT,
                    lock_type="IMMEDIATE",
                ),
                True,
            )
        if urlparse(url).scheme.startswith("postgres"):
            return _open_postgres(url), True
        return db_url.connect(url), True
    except (RuntimeError, peewee.ImproperlyConfigured) as exc:  # unknown scheme, no driver
        scheme = urlparse(url).scheme or "(none)"
        raise ValueError(
            f"cannot open audit database URL scheme {scheme!r}; "
            "use sqlite:///path.db or postgresql://user:pass@host/db"
        ) from exc


def open_readonly(
    database: peewee.Database | str | None, *, immutable: bool = False
) -> tuple[peewee.Database, bool]:
    """Like :func:`open_database`, for readers: nothing is created or changed.

    A SQLite file is opened with a ``mode=ro`` URI and no pragmas (setting
    WAL mode would write to the file); a missing file is a ``ValueError``.
    A log in WAL mode whose directory the reader cannot write (no ``-shm``
    file can be made) and that has no ``-wal`` file left is opened
    ``immutable=1``: nothing is pending, and nothing can write there
    either. With ``immutable=True`` it always is (a snapshot: rows written
    while it is open are not seen). PostgreSQL sessions are read-only
    (``default_transaction_read_only``). A ``Database`` object is used as it is.
    """
    if isinstance(database, peewee.Database):
        return database, False
    url = resolve_url(database)
    path = sqlite_path(url)
    if path is None:
        db, owned = open_database(url)
        if isinstance(db, peewee.PostgresqlDatabase):
            db.connect_params["options"] = "-c default_transaction_read_only=on"
        return db, owned
    if not path or path == ":memory:":
        raise ValueError(f"{url!r} names no file to read; use sqlite:///audit.db")
    if not os.path.isfile(path):
        raise ValueError(f"no database file {path!r}")
    db = _sqlite_readonly(path, immutable)
    if not immutable:
        try:
            db.execute_sql("SELECT count(*) FROM sqlite_master")  # type: ignore[no-untyped-call]
        except peewee.DatabaseError as exc:
            db.close()
            if not isinstance(exc, peewee.OperationalError):
                raise  # not a database at all, or a damaged one
            directory = os.path.dirname(os.path.abspath(path))
            if os.access(directory, os.W_OK):  # pragma: no cover - locked or damaged
                raise  # not the read-only directory case: say what it is
            if os.path.exists(f"{path}-wal"):
                raise ValueError(
                    f"cannot read {path} read-only ({exc}): a writer left {path}-wal and the "
                    "directory is not writable; read it where the -shm file can be made, "
                    "or copy the database with its -wal file"
                ) from None
            db = _sqlite_readonly(path, immutable=True)
    return db, True


def _sqlite_readonly(path: str, immutable: bool) -> peewee.Database:
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro" + ("&immutable=1" if immutable else "")
    return peewee.SqliteDatabase(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT)


def close_database(database: peewee.Database) -> None:
    """Close a database opened by :func:`open_database`, pooled connections included.

    A pool's ``close()`` only returns the calling thread's connection to the
    pool; an owner that is done with the database closes them all.
    """
    close_all = getattr(database, "close_all", None)
    if close_all is not None:
        if not database.is_closed():
            database.close()
        close_all()
    elif not database.is_closed():
        database.close()


def database_origin(database: peewee.Database, table: str) -> str:
    """A stable name for one table of one database, without credentials.

    ``sqlite:/abs/path/audit.db#audit_log`` or
    ``postgresql://host:port/dbname#audit_log``: what a spill record carries so
    that it is replayed only into the database it was meant for.
    """
    name = database.database or ""
    if isinstance(database, peewee.SqliteDatabase):
        if name.startswith("file:"):  # a URI (read-only openers)
            name = unquote(urlparse(name).path)
        where = name if name == ":memory:" else os.path.realpath(name)
        return f"sqlite:{where}#{table}"
    params = getattr(database, "connect_params", {}) or {}
    host = params.get("host") or "localhost"
    port = params.get("port") or ""
    kind = (
        "postgresql" if isinstance(database, peewee.PostgresqlDatabase) else type(database).__name__
    )
    return f"{kind}://{host}:{port}/{name}#{table}"
