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

import zlib
from datetime import datetime, timezone
from typing import Any, NoReturn

import peewee
from playhouse.migrate import SchemaMigrator, migrate

from .errors import AppendOnlyError
from .events import dumps_details

__all__ = [
    "SCHEMA_VERSION",
    "AuditRecord",
    "SchemaVersion",
    "UTCDateTimeField",
    "create_schema",
    "dumps_details",
    "installed_version",
]

TABLE_NAME = "audit_log"


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


class SchemaVersion(peewee.Model):
    """The one-row table that records which version of ``audit_log`` is installed."""

    version = peewee.IntegerField()

    class Meta:
        table_name = f"{TABLE_NAME}_schema"
        database = None


#: The schema this release writes. History: 1 = the event columns only;
#: 2 = adds ``prev_hash`` and ``hash`` (the tamper-evident chain).
SCHEMA_VERSION = 2
# Transaction-scoped advisory lock ids on PostgreSQL (stable across hosts).
SCHEMA_LOCK_ID = zlib.crc32(b"auditaspect:audit_log:schema")

_SQLITE_GUARDS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS {TABLE_NAME}_no_{verb.lower()} "
    f"BEFORE {verb} ON {TABLE_NAME} "
    f"BEGIN SELECT RAISE(ABORT, '{TABLE_NAME} is append-only: {verb} refused'); END"
    for verb in ("UPDATE", "DELETE")
)
_POSTGRES_GUARDS = (
    f"""CREATE OR REPLACE FUNCTION {TABLE_NAME}_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{TABLE_NAME} is append-only: %% refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$""",
    f"CREATE OR REPLACE TRIGGER {TABLE_NAME}_no_update_delete BEFORE UPDATE OR DELETE "
    f"ON {TABLE_NAME} FOR EACH ROW EXECUTE FUNCTION {TABLE_NAME}_append_only()",
    f"CREATE OR REPLACE TRIGGER {TABLE_NAME}_no_truncate BEFORE TRUNCATE "
    f"ON {TABLE_NAME} FOR EACH STATEMENT EXECUTE FUNCTION {TABLE_NAME}_append_only()",
)


def _is_postgres(database: peewee.Database) -> bool:
    return isinstance(database, peewee.PostgresqlDatabase)


def install_guards(database: peewee.Database) -> None:
    """Install the triggers that make the database refuse UPDATE, DELETE (and TRUNCATE)."""
    statements = _POSTGRES_GUARDS if _is_postgres(database) else _SQLITE_GUARDS
    for statement in statements:
        database.execute_sql(statement)  # type: ignore[no-untyped-call]


def drop_guards(database: peewee.Database) -> None:
    """Remove the append-only triggers (only schema upgrades do this, in a transaction)."""
    if _is_postgres(database):
        names = (f"{TABLE_NAME}_no_update_delete", f"{TABLE_NAME}_no_truncate")
        template = "DROP TRIGGER IF EXISTS {} ON " + TABLE_NAME
    else:
        names = (f"{TABLE_NAME}_no_update", f"{TABLE_NAME}_no_delete")
        template = "DROP TRIGGER IF EXISTS {}"
    for name in names:
        database.execute_sql(template.format(name))  # type: ignore[no-untyped-call]


def schema_lock(database: peewee.Database) -> Any:
    """A transaction holding the log's write lock (``BEGIN IMMEDIATE`` / advisory lock)."""
    if database.in_transaction() or _is_postgres(database):
        return database.atomic()
    return database.atomic(lock_type="IMMEDIATE")


def installed_version(database: peewee.Database) -> int:
    """Return the installed schema version (0: no ``audit_log`` table at all)."""
    tables = database.get_tables()
    if TABLE_NAME not in tables:
        return 0
    if SchemaVersion._meta.table_name in tables:
        row = database.execute_sql(  # type: ignore[no-untyped-call]
            f"SELECT max(version) FROM {SchemaVersion._meta.table_name}"
        ).fetchone()
        if row and row[0]:
            return int(row[0])
    columns = {c.name for c in database.get_columns(TABLE_NAME)}
    return 2 if "hash" in columns else 1


def create_schema(database: peewee.Database) -> int:
    """Create or upgrade ``audit_log``, its indexes and its append-only triggers.

    Returns the version that was installed before (0 for a new table). An
    older table is upgraded in place with ``playhouse.migrate`` and keeps its
    rows; rows from before version 2 have no chain yet, and the sink chains
    them when it connects. Safe to call on every start and from several
    processes at once (the upgrade runs under the log's write lock).
    """
    models = [AuditRecord, SchemaVersion]
    with database.bind_ctx(models, bind_refs=False, bind_backrefs=False), schema_lock(database):
        if _is_postgres(database):
            database.execute_sql(  # type: ignore[no-untyped-call]
                "SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,)
            )
        found = installed_version(database)
        if found and found < 2:
            migrator = SchemaMigrator.from_database(database)
            migrate(
                migrator.add_column(
                    TABLE_NAME, "prev_hash", peewee.CharField(max_length=64, null=True)
                ),
                migrator.add_column(TABLE_NAME, "hash", peewee.CharField(max_length=64, null=True)),
            )
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"{TABLE_NAME} has schema version {found}, newer than this auditaspect "
                f"understands ({SCHEMA_VERSION}); upgrade auditaspect"
            )
        database.create_tables(models, safe=True)
        install_guards(database)
        if found != SCHEMA_VERSION:
            SchemaVersion.delete().execute()
            SchemaVersion.create(version=SCHEMA_VERSION)
    return found
