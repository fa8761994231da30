"""open_database: URLs, environment, defaults and file permissions."""

from __future__ import annotations

import os
import stat

import peewee
import pytest

from auditaspect.database import DEFAULT_URL, ENV_URL, open_database, resolve_url, sqlite_path


def test_resolve_url_order(monkeypatch):
    """An explicit URL wins, then the environment variable, then the default."""
    monkeypatch.delenv(ENV_URL, raising=False)
    assert DEFAULT_URL == resolve_url(None)
    monkeypatch.setenv(ENV_URL, "sqlite:///env.db")
    assert "sqlite:///env.db" == resolve_url(None)
    assert "sqlite:///x.db" == resolve_url("sqlite:///x.db")


def test_sqlite_paths():
    """Three slashes is relative, four absolute; other schemes have no path."""
    assert "audit.db" == sqlite_path("sqlite:///audit.db")
    assert "/var/audit.db" == sqlite_path("sqlite:////var/audit.db")
    assert sqlite_path("postgresql://u@h/db") is None


def test_sqlite_url_opens_a_private_wal_database(tmp_path):
    """A new SQLite file is created 0600, in WAL mode, with IMMEDIATE writers."""
    path = tmp_path / "new.db"
    db, owned = open_database(f"sqlite:///{path}")
    assert owned is True
    assert isinstance(db, peewee.SqliteDatabase)
    db.connect()
    assert "wal" == db.execute_sql("PRAGMA journal_mode").fetchone()[0]
    db.execute_sql("CREATE TABLE t (x)")
    db.close()
    assert 0o600 == stat.S_IMODE(os.stat(path).st_mode)


def test_existing_file_keeps_its_mode(tmp_path):
    """An existing database file is not chmod-ed behind the owner's back."""
    path = tmp_path / "shared.db"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)
    open_database(f"sqlite:///{path}")
    assert 0o640 == stat.S_IMODE(os.stat(path).st_mode)


def test_default_url_from_environment(tmp_path, monkeypatch):
    """With no argument the environment variable names the database."""
    monkeypatch.setenv(ENV_URL, f"sqlite:///{tmp_path / 'env.db'}")
    db, _ = open_database(None)
    assert str(tmp_path / "env.db") == db.database


def test_peewee_database_is_used_as_is():
    """A Database object is returned unchanged and not owned."""
    db = peewee.SqliteDatabase(":memory:")
    assert (db, False) == open_database(db)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("mongodb://host/db", ValueError, "sqlite:///path.db or postgresql://"),
        ("sqlite://", ValueError, "names no file"),
        (42, TypeError, "peewee Database or a URL"),
    ],
)
def test_bad_database_arguments_are_clear_errors(value, error, match):
    """Unusable arguments fail with a message that says what works."""
    with pytest.raises(error, match=match):
        open_database(value)


def test_memory_url_creates_no_file(tmp_path, monkeypatch):
    """sqlite:///:memory: opens an in-memory database and creates no file."""
    monkeypatch.chdir(tmp_path)
    db, owned = open_database("sqlite:///:memory:")
    assert (":memory:", True) == (db.database, owned)
    assert [] == list(tmp_path.iterdir())


def test_postgres_urls_open_a_pool_with_psycopg3():
    """postgresql:// becomes a pooled database; other postgres schemes are honoured."""
    from auditaspect.database import close_database

    pooled, _ = open_database("postgresql://u:p@127.0.0.1:1/db")
    assert "PooledPostgresqlDatabase" == type(pooled).__name__
    explicit, _ = open_database("postgresql+pool://u:p@127.0.0.1:1/db")
    assert "PooledPostgresqlDatabase" == type(explicit).__name__
    ext, _ = open_database("postgresqlext://u:p@127.0.0.1:1/db")
    assert "PostgresqlExtDatabase" == type(ext).__name__
    for db in (pooled, explicit, ext):
        close_database(db)


def test_postgres_without_a_driver_names_the_extra(monkeypatch):
    """No psycopg installed: an ImportError that says what to pip install."""
    monkeypatch.setattr(peewee, "psycopg", None)
    monkeypatch.setattr(peewee, "psycopg2", None)
    with pytest.raises(ImportError, match=r"auditaspect\[postgres\]"):
        open_database("postgresql://u@h/db")


def test_close_database_closes_plain_and_pooled(tmp_path):
    """close_database works on open, closed and pooled databases alike."""
    from playhouse.pool import PooledSqliteDatabase

    from auditaspect.database import close_database

    plain = peewee.SqliteDatabase(str(tmp_path / "a.db"))
    plain.connect()
    close_database(plain)
    assert plain.is_closed()
    close_database(plain)
    pooled = PooledSqliteDatabase(str(tmp_path / "b.db"))
    pooled.connect()
    close_database(pooled)
    assert pooled.is_closed()
    close_database(pooled)
