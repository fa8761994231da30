"""The ``audit_log`` table: :class:`AuditRecord`, its indexes and its guards.

:class:`AuditRecord` is an ordinary peewee model, so the log is queried with
ordinary peewee queries once a sink has connected (which binds the model to
the sink's database)::

    AuditRecord.select().where(AuditRecord.event_type == "plan_applied")

The table is append-only. The model refuses every write (only a sink
appends), and the database refuses what the model cannot stop:
:func:`create_schema` installs triggers that abort any ``UPDATE`` or
``DELETE`` (and ``TRUNCATE`` on PostgreSQL), and an ``INSERT`` whose ``id`` is
not the next number of the sequence (1, 2, 3, ... without gaps), whose
``event_id`` is already stored, whose timestamp is not in the one stored
form, or that carries no chain link. That last trigger is what stops rows
with ``id <= 0`` or a huge ``id`` and SQLite's ``INSERT OR REPLACE`` (which
deletes the row it conflicts with without firing DELETE triggers).
"""

from __future__ import annotations

import logging
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
    "compile_insert",
    "create_schema",
    "dumps_details",
    "installed_version",
]

TABLE_NAME = "audit_log"
logger = logging.getLogger("auditaspect")


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


# The last whole second formatted, and its text: audited calls come many a
# second, and isoformat() of an aware datetime costs an audited call about a
# microsecond. Replaced whole (one tuple), so threads never see half of it.
_last_second: tuple[tuple[int, ...], str] = ((), "")


def format_timestamp(value: datetime) -> str:
    """Return the stored text of an aware timestamp (UTC, microseconds):
    ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``, what ``isoformat(timespec="microseconds")``
    writes for it. A naive timestamp is a ``ValueError``."""
    global _last_second
    if value.tzinfo is not timezone.utc:
        if value.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        value = value.astimezone(timezone.utc)
    second = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    known, text = _last_second
    if second != known:
        text = value.isoformat(timespec="seconds")[:19]
        _last_second = (second, text)
    return f"{text}.{value.microsecond:06d}+00:00"


def _refuse(what: str) -> NoReturn:
    raise AppendOnlyError(f"audit_log is append-only: {what} is refused")


class AuditRecord(peewee.Model):
    """One row of ``audit_log``: an :class:`~auditaspect.AuditEvent`, stored.

    ``id`` is the row's place in the log: 1 for the first row, then each
    next integer, without gaps (the database refuses any other). The other
    columns are the event's fields, ``details`` as peewee's ``JSONField``
    (TEXT holding JSON on SQLite, JSONB on PostgreSQL), and the chain:
    ``prev_hash``, ``hash`` and ``key_id`` (which chain key made the link:
    ``sha256`` for none, else a fingerprint of the key, never the key).

    Read it with ordinary peewee queries. Every write through the model
    (``create``, ``save``, ``insert``, ``insert_many``, ``insert_from``,
    ``replace``, ``update``, ``delete``) is refused with
    :class:`~auditaspect.AppendOnlyError`: a row written that way would not
    be chained, so only a :class:`~auditaspect.PeeweeSink` appends.
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
    key_id = peewee.CharField(max_length=64, null=True)

    class Meta:
        table_name = TABLE_NAME
        database = None
        legacy_table_names = False

    def save(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: rows are appended by a sink, which chains them."""
        _refuse("save() (rows are appended by a PeeweeSink)")

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: rows are appended by a sink, which chains them."""
        _refuse("create() (rows are appended by a PeeweeSink)")

    @classmethod
    def insert(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: rows are appended by a sink, which chains them."""
        _refuse("INSERT through the model (rows are appended by a PeeweeSink)")

    @classmethod
    def insert_many(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: rows are appended by a sink, which chains them."""
        _refuse("INSERT through the model (rows are appended by a PeeweeSink)")

    @classmethod
    def insert_from(cls, *args: Any, **kwargs: Any) -> NoReturn:
        """Always refused: rows are appended by a sink, which chains them."""
        _refuse("INSERT through the model (rows are appended by a PeeweeSink)")

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


def compile_insert(database: peewee.Database, rows: list[dict[Any, Any]]) -> tuple[str, list[Any]]:
    """The SQL and parameters peewee builds to insert ``rows`` (the sink's only way in)."""
    with database.bind_ctx([AuditRecord], bind_refs=False, bind_backrefs=False):
        query = peewee.ModelInsert(AuditRecord, insert=rows)
        sql, params = query.sql()
    return sql, params


class SchemaVersion(peewee.Model):
    """The one-row table that records which version of ``audit_log`` is installed."""

    version = peewee.IntegerField()

    class Meta:
        table_name = f"{TABLE_NAME}_schema"
        database = None


#: The schema this release writes. History: 1 = the event columns only;
#: 2 = adds ``prev_hash`` and ``hash`` (the tamper-evident chain); 3 = adds
#: ``key_id``, ids form a gapless sequence from 1 that the database enforces,
#: and rows hash their id and key id too.
SCHEMA_VERSION = 3
# Transaction-scoped advisory lock ids on PostgreSQL (stable across hosts).
SCHEMA_LOCK_ID = zlib.crc32(b"auditaspect:audit_log:schema")
#: The one stored form of a timestamp on SQLite (what format_timestamp writes).
TIMESTAMP_GLOB = (
    "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]"
    ".[0-9][0-9][0-9][0-9][0-9][0-9]+00:00"
)
_REFUSED = f"{TABLE_NAME} is append-only"

_SQLITE_GUARDS = (
    *(
        f"CREATE TRIGGER IF NOT EXISTS {TABLE_NAME}_no_{verb.lower()} "
        f"BEFORE {verb} ON {TABLE_NAME} "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSED}: {verb} refused'); END"
        for verb in ("UPDATE", "DELETE")
    ),
    # BEFORE INSERT runs before conflict resolution, so INSERT OR REPLACE is
    # stopped here too (REPLACE deletes without firing DELETE triggers). An
    # INSERT that names no id has NEW.id = -1 here: refused.
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE_NAME}_append BEFORE INSERT ON {TABLE_NAME}
    BEGIN
        SELECT RAISE(ABORT, '{_REFUSED}: a new row must take the next id of the sequence')
        WHERE NEW.id IS NOT (SELECT coalesce(max(id), 0) + 1 FROM {TABLE_NAME});
        SELECT RAISE(ABORT, '{_REFUSED}: this event_id is stored already')
        WHERE EXISTS (SELECT 1 FROM {TABLE_NAME} WHERE event_id = NEW.event_id);
        SELECT RAISE(ABORT, '{_REFUSED}: timestamp not in the stored form')
        WHERE typeof(NEW.timestamp) != 'text' OR NEW.timestamp NOT GLOB '{TIMESTAMP_GLOB}';
        SELECT RAISE(ABORT, '{_REFUSED}: a new row needs its chain link')
        WHERE NEW.hash IS NULL OR NEW.prev_hash IS NULL OR NEW.key_id IS NULL;
    END""",
)
_SQLITE_TRIGGERS = (f"{TABLE_NAME}_no_update", f"{TABLE_NAME}_no_delete", f"{TABLE_NAME}_append")
_POSTGRES_GUARDS = (
    f"""CREATE OR REPLACE FUNCTION {TABLE_NAME}_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{_REFUSED}: %% refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$""",
    f"""CREATE OR REPLACE FUNCTION {TABLE_NAME}_append_check() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.id IS DISTINCT FROM
                (SELECT coalesce(max(id), 0) + 1 FROM {TABLE_NAME}) THEN
            RAISE EXCEPTION '{_REFUSED}: a new row must take the next id of the sequence'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF NEW.hash IS NULL OR NEW.prev_hash IS NULL OR NEW.key_id IS NULL THEN
            RAISE EXCEPTION '{_REFUSED}: a new row needs its chain link'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END $$""",
    f"CREATE OR REPLACE TRIGGER {TABLE_NAME}_no_update_delete BEFORE UPDATE OR DELETE "
    f"ON {TABLE_NAME} FOR EACH ROW EXECUTE FUNCTION {TABLE_NAME}_append_only()",
    f"CREATE OR REPLACE TRIGGER {TABLE_NAME}_no_truncate BEFORE TRUNCATE "
    f"ON {TABLE_NAME} FOR EACH STATEMENT EXECUTE FUNCTION {TABLE_NAME}_append_only()",
    f"CREATE OR REPLACE TRIGGER {TABLE_NAME}_append BEFORE INSERT "
    f"ON {TABLE_NAME} FOR EACH ROW EXECUTE FUNCTION {TABLE_NAME}_append_check()",
)
_POSTGRES_TRIGGERS = (
    f"{TABLE_NAME}_no_update_delete",
    f"{TABLE_NAME}_no_truncate",
    f"{TABLE_NAME}_append",
)


def _is_postgres(database: peewee.Database) -> bool:
    return isinstance(database, peewee.PostgresqlDatabase)


def install_guards(database: peewee.Database) -> None:
    """Install the triggers that make the database refuse UPDATE, DELETE (and
    TRUNCATE), and any INSERT that does not append the next row of the chain."""
    statements = _POSTGRES_GUARDS if _is_postgres(database) else _SQLITE_GUARDS
    for statement in statements:
        database.execute_sql(statement)  # type: ignore[no-untyped-call]


def drop_guards(database: peewee.Database) -> None:
    """Remove the append-only triggers (only schema upgrades do this, in a transaction)."""
    for name in guard_names(database):
        template = (
            "DROP TRIGGER IF EXISTS {} ON " + TABLE_NAME
            if _is_postgres(database)
            else "DROP TRIGGER IF EXISTS {}"
        )
        database.execute_sql(template.format(name))  # type: ignore[no-untyped-call]


def guard_names(database: peewee.Database) -> tuple[str, ...]:
    """The names of the append-only triggers this release installs."""
    return _POSTGRES_TRIGGERS if _is_postgres(database) else _SQLITE_TRIGGERS


def installed_guards(database: peewee.Database) -> set[str]:
    """The append-only triggers present on ``audit_log`` now."""
    if _is_postgres(database):
        sql = (
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
            f"AND tgrelid = to_regclass('{TABLE_NAME}')"
        )
    else:
        sql = f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = '{TABLE_NAME}'"
    rows = database.execute_sql(sql).fetchall()  # type: ignore[no-untyped-call]
    return {row[0] for row in rows} & set(guard_names(database))


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
    rows and their chain: version 2 rows keep their hashes (verified in their
    own form), ids are renumbered 1, 2, 3, ... in their order if they had
    gaps, and new rows chain on from the last one. Rows from before version 2
    have no chain yet; the sink chains them when it connects. Safe to call on
    every start and from several processes at once (the upgrade runs under
    the log's write lock). Triggers found missing on an installed table are
    put back, and that is logged as critical: someone removed them.
    """
    models = [AuditRecord, SchemaVersion]
    with database.bind_ctx(models, bind_refs=False, bind_backrefs=False), schema_lock(database):
        if _is_postgres(database):
            database.execute_sql(  # type: ignore[no-untyped-call]
                "SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,)
            )
        found = installed_version(database)
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"{TABLE_NAME} has schema version {found}, newer than this auditaspect "
                f"understands ({SCHEMA_VERSION}); upgrade auditaspect"
            )
        if found and found < SCHEMA_VERSION:
            _upgrade(database, found)
        if found != SCHEMA_VERSION:
            # Only when something is missing: a role that may only SELECT and
            # INSERT (the documented writer) must be able to connect.
            database.create_tables(models, safe=True)
        present = installed_guards(database)
        if len(present) < len(guard_names(database)):
            if found == SCHEMA_VERSION:
                logger.critical(
                    "append-only triggers %s were missing on %s; put back",
                    ", ".join(sorted(set(guard_names(database)) - present)),
                    TABLE_NAME,
                )
            install_guards(database)
        if found != SCHEMA_VERSION:
            SchemaVersion.delete().execute()
            SchemaVersion.insert(version=SCHEMA_VERSION).execute()
    return found


def _upgrade(database: peewee.Database, found: int) -> None:
    """Bring a version 1 or 2 table to this version, keeping every row."""
    migrator = SchemaMigrator.from_database(database)
    steps = []
    if found < 2:
        steps += [
            migrator.add_column(
                TABLE_NAME, "prev_hash", peewee.CharField(max_length=64, null=True)
            ),
            migrator.add_column(TABLE_NAME, "hash", peewee.CharField(max_length=64, null=True)),
        ]
    steps.append(
        migrator.add_column(TABLE_NAME, "key_id", peewee.CharField(max_length=64, null=True))
    )
    migrate(*steps)
    drop_guards(database)
    _renumber(database)


def _renumber(database: peewee.Database) -> None:
    """Give the rows the ids 1..n in their order, if they have gaps (sequences on
    PostgreSQL skip numbers on rollback). Rows before version 3 do not hash
    their id, so their links stay valid."""
    execute = database.execute_sql
    lowest, highest, count = execute(  # type: ignore[no-untyped-call]
        f"SELECT min(id), max(id), count(*) FROM {TABLE_NAME}"
    ).fetchone()
    if not count or (lowest == 1 and highest == count):
        return
    # First below every id there is (no collision, whatever the order rows
    # are updated in), then 1..n a page at a time, in the original order.
    shift = highest - min(lowest, 1) + 1
    execute(f"UPDATE {TABLE_NAME} SET id = id - {database.param}", (shift,))  # type: ignore[no-untyped-call]
    select = f"SELECT id FROM {TABLE_NAME} WHERE id <= 0 ORDER BY id LIMIT 1000"
    update = f"UPDATE {TABLE_NAME} SET id = {database.param} WHERE id = {database.param}"
    number = 0
    while ids := [row[0] for row in execute(select).fetchall()]:  # type: ignore[no-untyped-call]
        for old in ids:
            number += 1
            execute(update, (number, old))  # type: ignore[no-untyped-call]
    logger.warning(
        "renumbered the %d rows of %s as 1..%d (upgrade to version 3)", count, TABLE_NAME, count
    )
