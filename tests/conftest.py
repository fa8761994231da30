"""Fixtures shared by the suite: clean global state, a real SQLite file, the example domain."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from blinker.base import ANY_ID

from auditaspect import AuditEvent, AuditRecord, PeeweeSink, signals
from auditaspect.redaction import get_redactor, set_redactor

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def source_tree_problem() -> str | None:
    """Say why the imported auditaspect is not an installed copy, or None when it is."""
    import auditaspect

    imported = Path(auditaspect.__file__).resolve()
    if imported.is_relative_to(ROOT / "auditaspect"):
        return (
            f"the tests imported the working-tree copy of auditaspect ({imported.parent}), "
            "not the installed package: run them through tox, or install the package and "
            "run pytest from outside the repository root"
        )
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test the working tree: the suite must exercise the installed wheel."""
    problem = source_tree_problem()
    if problem:
        raise pytest.UsageError(problem)


def _all_signals() -> list[Any]:
    return list(signals.namespace.values())


@pytest.fixture(autouse=True)
def _clean_global_state() -> Iterator[None]:
    """Disconnect receivers a test connected, restore the redactor, unbind the model."""
    before = {id(sig): set(sig.receivers) for sig in _all_signals()}
    redactor = get_redactor()
    yield
    for sig in _all_signals():
        for key in set(sig.receivers) - before.get(id(sig), set()):
            # The receiver object may be gone (weakly held); its id is enough.
            sig._disconnect(key, ANY_ID)
    set_redactor(redactor)
    AuditRecord.bind(None)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A URL of a fresh SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def sink(db_url: str) -> Iterator[PeeweeSink]:
    """A connected synchronous sink on a fresh SQLite file."""
    with PeeweeSink(db_url) as connected:
        yield connected


class Captured(list[AuditEvent]):
    """Events a test receiver got, with their senders."""

    def __init__(self) -> None:
        super().__init__()
        self.senders: list[Any] = []

    def __call__(self, sender: Any, *, event: AuditEvent) -> None:
        self.senders.append(sender)
        self.append(event)


@pytest.fixture
def captured() -> Captured:
    """Every event sent on ``signals.audit_event`` during the test."""
    receiver = Captured()
    signals.audit_event.connect(receiver, weak=False)
    return receiver


POSTGRES_ENV = "AUDITASPECT_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a real PostgreSQL server, from $AUDITASPECT_TEST_POSTGRES_URL.

    Under CI (CI=true) a missing or unreachable server fails the test; on a
    developer machine it skips, saying how to start one.
    """
    import os

    import peewee

    url = os.environ.get(POSTGRES_ENV)
    problem = None
    if not url:
        problem = f"{POSTGRES_ENV} is not set"
    else:
        from auditaspect.database import close_database, open_database

        try:
            db, _ = open_database(url)
            db.connect()
            close_database(db)
        except (peewee.OperationalError, ImportError) as exc:
            problem = f"PostgreSQL at {url} is not reachable: {exc}"
    if problem:
        hint = f"start one with: export {POSTGRES_ENV}=$(scripts/pg-test-server start)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{problem} (CI needs it; {hint})")
        pytest.skip(f"{problem}; {hint}")
    assert url is not None
    return url


@pytest.fixture(scope="session")
def django_client():
    """Django set up in this process with tests/djangoblog (no audit database, no sink)."""
    import os

    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        saved = os.environ.pop("AUDIT_URL", None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "djangoblog.settings"
        try:
            django.setup()
        finally:
            if saved is not None:
                os.environ["AUDIT_URL"] = saved
            # Loaded now; left set, child processes (a Celery worker) would try it too.
            del os.environ["DJANGO_SETTINGS_MODULE"]
    from django.test import Client

    return Client(REMOTE_ADDR="10.0.0.4")


REDIS_ENV = "AUDITASPECT_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The URL of a real Redis server, from $AUDITASPECT_TEST_REDIS_URL.

    Like PostgreSQL: under CI a missing or unreachable server fails the test,
    on a developer machine it skips with the command that starts one.
    """
    import os
    import socket
    from urllib.parse import urlsplit

    url = os.environ.get(REDIS_ENV)
    problem = None
    if not url:
        problem = f"{REDIS_ENV} is not set"
    else:
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname or "", parts.port or 6379), timeout=5):
                pass
        except OSError as exc:
            problem = f"Redis at {url} is not reachable: {exc}"
    if problem:
        hint = f"start one with: export {REDIS_ENV}=$(scripts/redis-test-server start)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{problem} (CI needs it; {hint})")
        pytest.skip(f"{problem}; {hint}")
    assert url is not None
    return url


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A PostgreSQL URL whose database has a fresh, empty audit_log for this test."""
    from auditaspect.database import close_database, open_database

    db, _ = open_database(postgres_server)
    db.execute_sql("DROP TABLE IF EXISTS audit_log, audit_log_schema CASCADE")
    close_database(db)
    return postgres_server
