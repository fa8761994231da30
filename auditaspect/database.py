"""Turning "a peewee Database or a URL" into a peewee Database.

Shared by the sink and the tools that read the log, so that a URL means the
same database, opened the same way, everywhere.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlparse

import peewee
from playhouse import db_url

__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "close_database",
    "database_origin",
    "open_database",
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


def sqlite_path(url: str) -> str | None:
    """Return the file path of a ``sqlite:///`` URL (``None`` for other URLs)."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
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
    except RuntimeError as exc:  # db_url's "unsupported scheme"
        scheme = urlparse(url).scheme or "(none)"
        raise ValueError(
            f"cannot open audit database URL scheme {scheme!r}; "
            "use sqlite:///path.db or postgresql://user:pass@host/db"
        ) from exc


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
        where = name if name == ":memory:" else os.path.realpath(name)
        return f"sqlite:{where}#{table}"
    params = getattr(database, "connect_params", {}) or {}
    host = params.get("host") or "localhost"
    port = params.get("port") or ""
    kind = (
        "postgresql" if isinstance(database, peewee.PostgresqlDatabase) else type(database).__name__
    )
    return f"{kind}://{host}:{port}/{name}#{table}"
