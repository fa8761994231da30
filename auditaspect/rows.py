"""Rows: what an event becomes before the sink appends it to ``audit_log``.

A row is a plain tuple of strings and bytes (:data:`Row`): the ten chained
scalar columns, the details text, and the bytes its chain link hashes after
the row's id and key id. The sink builds rows on the calling thread, from an
event that is already redacted, and queues those rather than events: a tuple
of strings is not tracked by the garbage collector, so a full queue costs the
collector nothing, and the event with its dicts dies with the audited call.

:class:`CompiledInsert` turns rows into the parameters of INSERT statements
that peewee compiled once from :class:`~auditaspect.model.AuditRecord` (the
single definition of the table). On SQLite it also offers the write path's
one-statement append (:meth:`CompiledInsert.append_next`): the rows go in
only if the row they were numbered after is still the log's last.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import peewee

from .events import COLUMN_LIMITS, AuditEvent, dumps_details, fit_column
from .integrity import CHAINED_FIELDS, canonical, canonical_details
from .model import TABLE_NAME, AuditRecord, compile_insert, format_timestamp
from .redaction import Redactor

__all__ = ["DETAILS", "EVENT_ID", "PAYLOAD", "CompiledInsert", "Row", "prepare_row", "row_event"]

# (event_id, timestamp, event_type, outcome, actor, plan_id, ip,
#  correlation_id, target, error, details, payload): CHAINED_FIELDS, then the
# details text, then the bytes the link hashes.
Row = tuple[Any, ...]
EVENT_ID = 0
DETAILS = len(CHAINED_FIELDS)
PAYLOAD = DETAILS + 1
# The statement's columns, in the order rows are extended to before picking.
_COLUMNS = (*CHAINED_FIELDS, "details", "payload", "id", "prev_hash", "hash", "key_id")


def prepare_row(event: AuditEvent, redactor: Redactor) -> Row:
    """Return the row of ``event``: redacted (again, unless ``redactor`` did it
    when the pipeline built the event) and within the column limits."""
    scalars: tuple[str | None, ...] = (
        event.event_id,
        format_timestamp(event.timestamp),
        event.event_type,
        event.outcome,
        event.actor,
        event.plan_id,
        event.ip,
        event.correlation_id,
        event.target,
        event.error,
    )
    if event._redacted_by is redactor:
        # The text serialised when the event was sent: a receiver that
        # changed the details dict since cannot change the row.
        details = event._details_json or dumps_details(event.details)
    else:  # built by hand, or by another redactor
        text = redactor.redact_text
        scalars = tuple(v if i < 4 or v is None else text(v) for i, v in enumerate(scalars))
        # The pipeline fitted its events' columns already.
        scalars = _fit(scalars)
        clean, float_free = redactor.redact_checked(event.details)
        details = dumps_details(clean, float_free=float_free)
    return (*scalars, details, canonical(scalars, canonical_details(details)))


def row_event(row: Row) -> AuditEvent:
    """The event a row stores, as it would be read back (what the spill file keeps)."""
    (
        event_id,
        timestamp,
        event_type,
        outcome,
        actor,
        plan_id,
        ip,
        correlation_id,
        target,
        error,
    ) = row[:DETAILS]
    return AuditEvent(
        event_type=event_type,
        event_id=event_id,
        timestamp=datetime.fromisoformat(timestamp),
        outcome=outcome,
        actor=actor,
        plan_id=plan_id,
        ip=ip,
        correlation_id=correlation_id,
        target=target or "",
        error=error,
        details=json.loads(row[DETAILS]),
    )


# Limits of the scalar columns, in the row's order (the chain's field order;
# event_id, timestamp and outcome are made or checked by AuditEvent).
_LIMITS = tuple(COLUMN_LIMITS.get(name) for name in CHAINED_FIELDS)
_CHECKED = tuple((index, limit) for index, limit in enumerate(_LIMITS) if limit)


def _fit(scalars: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """Cut over-long column values (with a marker) so the database cannot refuse them."""
    for index, limit in _CHECKED:
        value = scalars[index]
        if value is not None and len(value) * 4 > limit:
            break
    else:
        return scalars
    return tuple(
        v if v is None or lim is None else fit_column(v, lim)
        for v, lim in zip(scalars, _LIMITS, strict=True)
    )


class CompiledInsert:
    """The INSERT for one database, compiled by peewee, and its row parameters.

    Rows go in as multi-row ``INSERT ... VALUES (...), (...)`` statements, not
    ``executemany``: the driver releases the GIL around every row it steps,
    and a writer thread that must win the GIL back once per row crawls while
    callers keep the interpreter busy. On SQLite a batch is one statement (up
    to :attr:`APPEND_LIMIT` rows), its text the one-row statement's values
    repeated; peewee compiles only the one-row statement (compiling a 500-row
    one took it 15 ms of Python, which a writer thread spends while callers
    want the GIL). On PostgreSQL with psycopg 3, a batch is one ``COPY ...
    FROM STDIN`` of the model's columns (measured faster than both multi-row
    INSERTs and the driver's pipelined ``executemany``); without it, INSERTs
    of a few fixed sizes compiled by peewee once each.
    """

    CHUNKS = (500, 100, 20, 5, 1)

    def __init__(self, database: peewee.Database) -> None:
        self._database = database
        names = ("id", *CHAINED_FIELDS, "details", "prev_hash", "hash", "key_id")
        sentinels: dict[str, Any] = {name: f"\x00auditaspect:{name}\x00" for name in names}
        sentinels["id"] = -7_294_019_357  # an integer column: an integer sentinel
        self._values: dict[Any, Any] = {getattr(AuditRecord, n): sentinels[n] for n in names}
        if isinstance(database, peewee.PostgresqlDatabase):
            # The driver's Jsonb adapter, as peewee's JSONField makes it.
            self._values[AuditRecord.details] = {"\x00auditaspect": "details"}
        else:
            # The details text is ours, canonical JSON already: bound as it
            # is, not through peewee's json(?), which would only parse and
            # re-minify it (a microsecond or more of SQLite's time a row).
            self._values[AuditRecord.details] = peewee.Value(sentinels["details"], unpack=False)
        sql, params = self._compile(1)
        by_value = {s: n for n, s in sentinels.items()}
        order = [
            by_value.get(p, "details") if isinstance(p, (str, int)) else "details" for p in params
        ]
        if sorted(order) != sorted(names):  # pragma: no cover - a peewee we do not know
            raise RuntimeError(f"unexpected INSERT parameters for {TABLE_NAME}: {order}")
        self._sql: dict[int, str] = {1: sql}
        meta = AuditRecord._meta
        quoted = ", ".join(f'"{meta.fields[name].column_name}"' for name in order)
        self._copy_sql: str | None = (
            f'COPY "{meta.table_name}" ({quoted}) FROM STDIN'
            if isinstance(database, peewee.PostgresqlDatabase)
            else None
        )
        # A row extended by (id, prev_hash, hash, key_id), picked in the statement's order.
        self._pick = operator.itemgetter(*(_COLUMNS.index(name) for name in order))
        details_param = params[order.index("details")]
        # SQLite: the JSON text itself. PostgreSQL: the driver's Jsonb
        # adapter, handed the text we already serialised.
        self._wrap: Callable[[str], Any] | None = (
            None
            if isinstance(details_param, str)
            else functools.partial(_rewrap, type(details_param))
        )
        self._details_at = order.index("details")
        # SQLite: a statement of any number of rows is the one-row statement's
        # values repeated (PostgreSQL's has a RETURNING clause after them).
        self._sqlite = isinstance(database, peewee.SqliteDatabase)
        head, _, values = sql.partition(" VALUES ")
        self._append_head = head
        self._append_row = values
        self._append_sql: dict[int, str] = {}

    def _compile(self, rows: int) -> tuple[str, list[Any]]:
        return compile_insert(self._database, [self._values] * rows)

    def sql(self, rows: int) -> str:
        """The INSERT of ``rows`` rows (one of :attr:`CHUNKS`), compiled on first use."""
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = self._compile(rows)[0]
        return sql

    def params(
        self, row: Row, row_id: int, prev_hash: str, hash_: str, key: str
    ) -> tuple[Any, ...]:
        """The statement parameters of one row, chained as ``row_id`` after ``prev_hash``."""
        params: tuple[Any, ...] = self._pick((*row, row_id, prev_hash, hash_, key))
        if self._wrap is None:
            return params
        at = self._details_at
        return (*params[:at], self._wrap(params[at]), *params[at + 1 :])

    def execute(self, cursor: Any, params: Sequence[tuple[Any, ...]]) -> None:
        """Insert every row of ``params``: one statement per :attr:`APPEND_LIMIT`
        rows on SQLite, COPY on PostgreSQL (psycopg 3), else multi-row INSERTs,
        as few as the chunk sizes allow."""
        if self._sqlite:
            limit = self.APPEND_LIMIT
            with _as_peewee_errors:
                for start in range(0, len(params), limit):
                    chunk = params[start : start + limit]
                    cursor.execute(self._rows_sql(len(chunk)), _flat(chunk))
            return
        if self._copy_sql is not None and len(params) > 1 and hasattr(cursor, "copy"):
            with cursor.copy(self._copy_sql) as copy:
                for row in params:
                    copy.write_row(row)
            return
        start, total = 0, len(params)
        for size in self.CHUNKS:
            while total - start >= size:
                chunk = params[start : start + size]
                cursor.execute(self.sql(size), [v for row in chunk for v in row])
                start += size

    def _rows_sql(self, count: int) -> str:
        """SQLite: the INSERT of ``count`` rows (at most :attr:`APPEND_LIMIT`)."""
        sql = self._append_sql.get(count)
        if sql is None:
            sql = f"{self._append_head} VALUES {', '.join([self._append_row] * count)}"
            if len(self._append_sql) < 64:  # batch sizes vary: keep the common ones
                self._append_sql[count] = sql
        return sql

    # The most rows one append statement carries (15 parameters each, well
    # under SQLite's 32,766).
    APPEND_LIMIT = 2000

    def append_next(self, cursor: Any, params: Sequence[tuple[Any, ...]]) -> bool:
        """SQLite: insert the rows, numbered on from a head read earlier, in one
        statement; ``False`` (nothing written) if that head is no longer the
        last row.

        One statement is one implicit transaction, and the driver gives up the
        GIL once per batch rather than around each of BEGIN, SELECT, INSERT
        and COMMIT. The compare is the table's own: ids are the primary key and
        the append trigger takes only the next one, so rows numbered after a
        stale head are refused whole (an ``INSERT ... SELECT`` that re-reads
        the head costs SQLite a temporary copy of every row). A link names its
        id, so the rows chain onto exactly the row they were numbered after.
        At most :attr:`APPEND_LIMIT` rows.
        """
        try:
            cursor.execute(self._rows_sql(len(params)), _flat(params))
        except Exception as exc:
            # By name: sqlite3's class, or that of another SQLite driver.
            stale = any(c.__name__ == "IntegrityError" for c in type(exc).__mro__)
            if not stale or _STALE_HEAD.search(str(exc)) is None:
                with _as_peewee_errors:
                    raise
            return False
        return True


# The driver's errors as peewee's (what peewee's own queries raise), so that a
# failed write has the same cause whichever path it took.
_as_peewee_errors = peewee.__exception_wrapper__  # type: ignore[attr-defined]


def _flat(params: Sequence[tuple[Any, ...]]) -> Sequence[Any]:
    """The parameters of a multi-row statement, row after row."""
    return params[0] if len(params) == 1 else [v for row in params for v in row]


# Refusals that mean "not the next id": the append trigger's, or the primary key's.
_STALE_HEAD = re.compile(rf"must take the next id|UNIQUE constraint failed: {TABLE_NAME}\.id\b")


def _identity(text: str) -> str:
    return text


def _rewrap(adapter: Any, text: str) -> Any:
    return adapter(text, dumps=_identity)
