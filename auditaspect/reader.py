"""Reading the log without a sink: :func:`open_log`.

An auditor reads the log on a machine that may not be the application's, with
no sink, no subscription and no right to write. :func:`open_log` gives a
handle whose model (:attr:`AuditLog.Record`, a read-only copy of
:class:`~auditaspect.AuditRecord`) is bound to that one database, so it works
side by side with a sink (or another handle) on another database::

    with open_log("sqlite:///audit.db") as log:
        for row in log.rows(log.Record.event_type == "auth_failure"):
            print(row.timestamp, row.actor)

Opening changes nothing: no schema, no spill replay, no pragma that writes
(SQLite is opened with ``mode=ro``; see
:func:`~auditaspect.database.open_readonly`).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import peewee

from .checkpoints import Checkpoint, checkpoint
from .database import close_database, open_database, open_readonly
from .model import TABLE_NAME, AuditRecord
from .verification import VerifyReport, verify

__all__ = ["AuditLog", "open_log"]

PAGE = 1000


class AuditLog:
    """One audit log, open for reading (see :func:`open_log`).

    ``Record`` is a model of ``audit_log`` bound to this database only; it
    refuses every write, like :class:`~auditaspect.AuditRecord`.
    """

    def __init__(self, database: peewee.Database, owned: bool) -> None:
        self.database = database
        self._owned = owned

        class Record(AuditRecord):
            class Meta:
                table_name = TABLE_NAME

        Record.bind(database, bind_refs=False, bind_backrefs=False)
        self.Record: type[AuditRecord] = Record

    def select(self, *fields: Any) -> Any:
        """``Record.select(...)``: an ordinary peewee query on this log."""
        return self.Record.select(*fields)

    def rows(self, *conditions: Any, page: int = PAGE) -> Iterator[AuditRecord]:
        """Every row matching ``conditions``, in id order, ``page`` rows at a time.

        Keyset pagination: memory does not grow with the log, and rows at any
        id (a forged one at ``id <= 0`` too) are included.
        """
        query = self.Record.select()
        if conditions:
            query = query.where(*conditions)
        last: int | None = None
        while True:
            window = query if last is None else query.where(self.Record.id > last)
            batch = list(window.order_by(self.Record.id).limit(page))
            if not batch:
                return
            yield from batch
            last = batch[-1].id

    def verify(self, **options: Any) -> VerifyReport:
        """:func:`~auditaspect.verify` on this log (same keyword options)."""
        return verify(self.database, **options)

    def checkpoint(self, *, signing_key: Any = None) -> Checkpoint:
        """:func:`~auditaspect.checkpoint` of this log."""
        return checkpoint(self.database, signing_key=signing_key)

    def close(self) -> None:
        """Close the database if :func:`open_log` opened it. Safe to call twice."""
        if self._owned:
            close_database(self.database)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_log(
    database: peewee.Database | str | None = None,
    *,
    readonly: bool = True,
    immutable: bool = False,
) -> AuditLog:
    """Open an audit log for reading: a URL (as for the sink) or a peewee ``Database``.

    ``readonly`` (the default) opens SQLite with ``mode=ro`` and no pragma
    that writes, and PostgreSQL sessions read-only; ``immutable=True`` reads
    a SQLite file as a snapshot that nothing writes (a copy, a read-only
    medium). Nothing is created: a missing file or a database without
    ``audit_log`` is a ``ValueError`` that says so. Use it as a context
    manager, or call :meth:`AuditLog.close`.
    """
    try:
        if readonly:
            db, owned = open_readonly(database, immutable=immutable)
        else:
            db, owned = open_database(database)
    except (peewee.DatabaseError, peewee.ImproperlyConfigured) as exc:
        raise ValueError(f"cannot read the audit log: {exc}") from None
    try:
        present = TABLE_NAME in db.get_tables()
    except (peewee.DatabaseError, peewee.ImproperlyConfigured) as exc:
        if owned:
            close_database(db)
        raise ValueError(f"cannot read the audit log: {exc}") from None
    if not present:
        if owned:
            close_database(db)
        raise ValueError(f"no {TABLE_NAME} table: is this the audit database?")
    return AuditLog(db, owned)
