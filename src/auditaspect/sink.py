"""Persisting events: :class:`PeeweeSink` subscribes to the signals and writes rows.

In ``mode="sync"`` the row is written on the calling thread and committed
before the audited call returns. If that thread is inside a transaction on the
same peewee ``Database`` object, the row joins it (peewee nests ``atomic()`` as
a savepoint), so a rolled-back domain change leaves no audit row either. A
second ``Database`` object for the same file is a second connection: it would
wait for the first one's lock instead of joining.

Rows are written with one INSERT compiled by peewee from :class:`AuditRecord`
(the single definition of the table) and executed on the driver cursor:
peewee spends most of a single-row insert building SQL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

import attrs
import peewee

from .database import open_database
from .errors import AuditWriteError
from .events import AuditEvent, event_type_value
from .model import AuditRecord, create_schema, dumps_details, format_timestamp
from .redaction import Redactor, get_redactor
from .signals import audit_event, signal_for

__all__ = ["PeeweeSink", "SinkStats"]

logger = logging.getLogger("auditaspect")

Mode = Literal["sync", "buffered"]
_MODES = ("sync", "buffered")
# Column order of the compiled INSERT (every column but the auto id).
_COLUMNS = (
    "event_id",
    "timestamp",
    "event_type",
    "outcome",
    "actor",
    "plan_id",
    "ip",
    "correlation_id",
    "target",
    "details",
    "error",
)


@attrs.define
class SinkStats:
    """Counts of what a sink did with the events it received."""

    written: int = 0
    failed: int = 0


class _CompiledInsert:
    """The INSERT for one database, compiled once, and the row parameters for it."""

    def __init__(self, database: peewee.Database) -> None:
        sentinels = {name: f"\x00auditaspect:{name}\x00" for name in _COLUMNS}
        values: dict[Any, Any] = {getattr(AuditRecord, n): sentinels[n] for n in _COLUMNS}
        values[AuditRecord.details] = {"\x00auditaspect": "details"}
        with database.bind_ctx([AuditRecord], bind_refs=False, bind_backrefs=False):
            sql, params = AuditRecord.insert(values).sql()
            json_param = AuditRecord.details.db_value
            order: list[str] = []
            for param in params:
                name = next((n for n, s in sentinels.items() if param == s), "details")
                order.append(name)
            details_is_text = isinstance(params[order.index("details")], str)
        if sorted(order) != sorted(_COLUMNS):
            raise RuntimeError(f"unexpected INSERT parameters for audit_log: {order}")
        self.sql: str = sql
        self._positions = tuple(_COLUMNS.index(name) for name in order)
        # SQLite: the JSON text goes into json(?); PostgreSQL: a Jsonb adapter.
        self._details: Callable[[dict[str, Any]], Any] = (
            dumps_details if details_is_text else json_param
        )

    def params(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """Order ``row`` (in ``_COLUMNS`` order, details as a dict) for the SQL."""
        values = list(row)
        values[9] = self._details(values[9])
        return tuple(values[i] for i in self._positions)


class PeeweeSink:
    """Writes redacted audit events to the ``audit_log`` table of a peewee database.

    ``database`` is a peewee ``Database`` or a URL (``"sqlite:///audit.db"``,
    ``"postgresql://..."``); with neither, ``$AUDITASPECT_DATABASE_URL``, else
    ``sqlite:///audit.db``. ``event_types`` limits which types are recorded
    (default: all). ``redactor`` is applied to every event before it is written
    (default: the active redactor), so hand-built events are redacted too.

    A failed write is logged on the ``auditaspect`` logger and counted in
    :attr:`stats`; with ``strict=True`` it is raised to the audited call as
    :class:`~auditaspect.AuditWriteError` instead, for deployments where an
    unaudited change is worse than a failed call.
    """

    def __init__(
        self,
        database: peewee.Database | str | None = None,
        *,
        mode: Mode = "sync",
        event_types: Iterable[str] | None = None,
        redactor: Redactor | None = None,
        strict: bool = False,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be 'sync' or 'buffered', not {mode!r}")
        if redactor is not None and not isinstance(redactor, Redactor):
            raise TypeError(f"redactor must be a Redactor, not {type(redactor).__name__}")
        if isinstance(event_types, str):
            raise TypeError("event_types must be a collection of types, e.g. ['plan_applied']")
        self.database, self._owns_database = open_database(database)
        self.mode: Mode = mode
        self.event_types: frozenset[str] | None = (
            None if event_types is None else frozenset(event_type_value(t) for t in event_types)
        )
        self.strict = strict
        self.stats = SinkStats()
        self._redactor = redactor
        self._insert: _CompiledInsert | None = None
        self._connected = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"PeeweeSink({type(self.database).__name__}({self.database.database!r}), "
            f"mode={self.mode!r}, connected={self._connected})"
        )

    # -- lifecycle ---------------------------------------------------------

    def connect(self) -> PeeweeSink:
        """Create the table if missing, bind :class:`AuditRecord`, subscribe.

        Returns the sink. Connecting a connected sink does nothing. The sink is
        held strongly by the signals until :meth:`close`.
        """
        with self._lock:
            if self._connected:
                return self
            create_schema(self.database)
            self._insert = _CompiledInsert(self.database)
            AuditRecord.bind(self.database, bind_refs=False, bind_backrefs=False)
            for sig in self._signals():
                sig.connect(self._receive, weak=False)
            self._connected = True
        return self

    def close(self) -> None:
        """Unsubscribe and release the database. Safe to call twice."""
        with self._lock:
            if not self._connected:
                return
            for sig in self._signals():
                sig.disconnect(self._receive)
            self._connected = False
        if self._owns_database and not self.database.is_closed():
            self.database.close()

    def __enter__(self) -> PeeweeSink:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _signals(self) -> list[Any]:
        if self.event_types is None:
            return [audit_event]
        return [signal_for(t) for t in sorted(self.event_types)]

    # -- writing -----------------------------------------------------------

    def _receive(self, sender: Any, *, event: AuditEvent) -> None:
        self.write(event)

    def write(self, event: AuditEvent) -> None:
        """Record one event, as if it had been sent on the signals.

        Events of types outside ``event_types`` are ignored. Raises
        ``RuntimeError`` if the sink is not connected.
        """
        if self.event_types is not None and event.event_type not in self.event_types:
            return
        insert = self._insert
        if insert is None:
            raise RuntimeError("PeeweeSink is not connected; call .connect() or use it in 'with'")
        row = insert.params(self._row(event))
        try:
            with self.database.atomic():
                self.database.cursor().execute(insert.sql, row)  # type: ignore[no-untyped-call]
        except Exception as exc:
            self._failed([event], exc)
            return
        self.stats.written += 1

    def _row(self, event: AuditEvent) -> list[Any]:
        redactor = self._redactor or get_redactor()
        text = redactor.redact_text

        def column(value: str | None) -> str | None:
            return None if value is None else text(value)

        return [
            event.event_id,
            format_timestamp(event.timestamp),
            event.event_type,
            event.outcome,
            column(event.actor),
            column(event.plan_id),
            column(event.ip),
            column(event.correlation_id),
            text(event.target),
            redactor.redact(event.details),
            column(event.error),
        ]

    def _failed(self, events: Sequence[AuditEvent], exc: Exception) -> None:
        self.stats.failed += len(events)
        ids = ", ".join(e.event_id for e in events[:5])
        if self.strict:
            raise AuditWriteError(
                f"audit write failed for {len(events)} event(s) ({ids}): {exc}"
            ) from exc
        logger.error(
            "audit write failed for %d event(s) (%s): %s", len(events), ids, exc, exc_info=exc
        )
