"""The ``audit_log`` table: :class:`AuditRecord`, its indexes and its guards.

:class:`AuditRecord` is an ordinary peewee model, so the log is queried with
ordinary peewee queries once a sink has connected (which binds the model to
the sink's database)::

    AuditRecord.select().where(AuditRecord.event_type == "plan_applied")

The table is append-only. The model refuses updates and deletes, and the
database refuses them too: :func:`create_schema` installs triggers that abort
any ``UPDATE`` or ``DELETE`` on ``audit_log``, whoever issues it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, NoReturn

import peewee

from .errors import AppendOnlyError

__all__ = ["AuditRecord", "UTCDateTimeField", "create_schema", "dumps_details"]

TABLE_NAME = "audit_log"


# Built once: json.dumps() with options builds a new encoder on every call.
_DETAILS_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
)


def dumps_details(details: Any) -> str:
    """Serialise details canonically: sorted keys, compact, UTF-8, no NaN.

    The same text is stored (on SQLite) and hashed into the chain.
    """
    return _DETAILS_ENCODER.encode(details)


class UTCDateTimeField(peewee.Field):
    """A timezone-aware UTC timestamp.

    ``TIMESTAMPTZ`` on PostgreSQL; on SQLite an ISO 8601 string with
    microseconds and ``+00:00``, which sorts in time order. Always read back
    as an aware UTC ``datetime``.
    """

    field_type = "TIMESTAMPTZ"

    def db_value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return format_timestamp(value)
        return value

    def python_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return datetime.fromisoformat(value).astimezone(timezone.utc)
        if isinstance(value, datetime):
            return value.astimezone(timezone.utc)
        return value


def format_timestamp(value: datetime) -> str:
    """Return the stored text of an aware timestamp (UTC, microseconds)."""
    if value.tzinfo is not timezone.utc:
        if value.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="microseconds")


def _refuse(what: str) -> NoReturn:
    raise AppendOnlyError(f"audit_log is append-only: {what} is refused")


class AuditRecord(peewee.Model):
    """One row of ``audit_log``: an :class:`~auditaspect.AuditEvent`, stored.

    ``id`` is an auto-increment integer in insertion order; the other columns
    are the event's fields, ``details`` as peewee's ``JSONField`` (TEXT holding
    JSON on SQLite, JSONB on PostgreSQL). Update and delete are refused with
    :class:`~auditaspect.AppendOnlyError`.
    """

    id = peewee.BigAutoField()
    event_id = peewee.CharField(max_length=64, unique=True)
    timestamp = UTCDateTimeField(index=True)
    event_type = peewee.CharField(max_length=128, index=True)
    outcome = peewee.CharField(max_length=16)
    actor = peewee.TextField(null=True, index=True)
    plan_id = peewee.TextField(null=True, index=True)
    ip = peewee.TextField(null=True)
    correlation_id = peewee.TextField(null=True)
    target = peewee.TextField()
    details = peewee.JSONField(dumps=dumps_details)
    error = peewee.TextField(null=True)
    prev_hash = peewee.CharField(max_length=64, null=True)
    hash = peewee.CharField(max_length=64, null=True)

    class Meta:
        table_name = TABLE_NAME
        database = None
        legacy_table_names = False

    def save(self, force_insert: bool = False, only: Any = None) -> int:
        """Insert a new row; saving a row that already exists is refused."""
        if self.id is not None and not force_insert:
            _refuse("UPDATE through save()")
        return int(super().save(force_insert=force_insert, only=only))

    def delete_instance(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: audit rows are never deleted."""
        _refuse("DELETE through delete_instance()")

    @classmethod
    def update(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: audit rows are never changed."""
        _refuse("UPDATE")

    @classmethod
    def delete(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: audit rows are never deleted."""
        _refuse("DELETE")

    @classmethod
    def replace(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: ``REPLACE`` deletes the row it conflicts with."""
        _refuse("REPLACE")

    @classmethod
    def replace_many(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: ``REPLACE`` deletes the rows it conflicts with."""
        _refuse("REPLACE")


_SQLITE_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS {TABLE_NAME}_no_{verb.lower()} "
    f"BEFORE {verb} ON {TABLE_NAME} "
    f"BEGIN SELECT RAISE(ABORT, '{TABLE_NAME} is append-only: {verb} refused'); END"
    for verb in ("UPDATE", "DELETE")
)


def create_schema(database: peewee.Database) -> None:
    """Create ``audit_log``, its indexes and its append-only triggers if missing.

    Safe to call on every start and from several processes at once.
    """
    with database.bind_ctx([AuditRecord], bind_refs=False, bind_backrefs=False):
        database.create_tables([AuditRecord], safe=True)
    if isinstance(database, peewee.SqliteDatabase):
        for statement in _SQLITE_TRIGGERS:
            database.execute_sql(statement)  # type: ignore[no-untyped-call]
