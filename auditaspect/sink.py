"""Persisting events: :class:`PeeweeSink` subscribes to the signals and writes rows.

Two modes:

* ``mode="sync"`` (the default) writes on the calling thread and commits
  before the audited call returns. If that thread is inside a transaction on
  the same peewee ``Database`` object, the row joins it (peewee nests
  ``atomic()`` as a savepoint), so a rolled-back domain change leaves no audit
  row either. A second ``Database`` object for the same file is a second
  connection: it would wait for the first one's lock instead of joining.
* ``mode="buffered"`` only turns the event into its row and enqueues it on
  the calling thread; a background writer (:mod:`auditaspect.writer`, or a
  child process with ``writer="process"``: :mod:`auditaspect.writer_process`)
  writes batches, one transaction each. Inside a caller's transaction on the
  same ``Database`` the row is queued when that transaction commits (and
  dropped with it on rollback).

Every write appends to the hash chain (:mod:`auditaspect.integrity`) so that
concurrent writers still form one chain. On SQLite, outside a caller's
transaction, a write is one INSERT in autocommit, numbered after the head
this sink last wrote or read (at connect, the log's last row); the append
trigger and the primary key refuse it whole if another writer got in first,
and the sink then takes the locked path: the database's write lock (``BEGIN
IMMEDIATE``; on PostgreSQL always, a transaction-scoped advisory lock), read
the head, insert.

Rows (:mod:`auditaspect.rows`) are written with the INSERT compiled once by
peewee from :class:`AuditRecord` (the single definition of the table; a
SQLite batch repeats its one-row values) and executed on the driver's cursor
(``COPY`` for PostgreSQL batches): peewee spends most of a single-row insert
building SQL. The driver's errors there are raised as peewee's.

When a write fails, the default is fail-open with spill: the audited call
goes on, and the redacted event is appended (fsync'd) to a spill file, then
replayed into the database, exactly once, when writes work again. While the
database is failing, events spill at once and a probe retries about once a
second, so a locked database does not stall every call.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

import attrs
import peewee

from .checkpoints import Checkpoint, CheckpointWriter, read_head
from .database import close_database, database_origin, open_database
from .errors import AuditError, AuditWriteError, first_line
from .events import AuditEvent, event_type_value
from .integrity import (
    CHAINED_FIELDS,
    GENESIS,
    key_id,
    legacy_payload,
    link,
    link_row,
    resolve_key,
)
from .model import (
    TABLE_NAME,
    AuditRecord,
    create_schema,
    drop_guards,
    install_guards,
    schema_lock,
)
from .redaction import Redactor, get_redactor
from .rows import EVENT_ID, PAYLOAD, CompiledInsert, Row, prepare_row, row_event
from .signals import audit_event, signal_for
from .spill import SpillFile
from .writer import BatchWriter, install_sigterm_handler
from .writer_process import WriterProcess, WriterProcessError

__all__ = ["PeeweeSink", "SinkStats"]

logger = logging.getLogger("auditaspect")

Mode = Literal["sync", "buffered"]
_MODES = ("sync", "buffered")
Writer = Literal["thread", "process"]
_HEAD_SQL = f"SELECT id, hash, key_id FROM {TABLE_NAME} ORDER BY id DESC LIMIT 1"
# One advisory lock id for audit_log appends on PostgreSQL (stable across hosts).
ADVISORY_LOCK_ID = zlib.crc32(b"auditaspect:audit_log")
PROBE_INTERVAL = 1.0
# The longest an append waits for PostgreSQL's append lock: SQLite's busy timeout.
LOCK_TIMEOUT = "5s"


@attrs.define
class SinkStats:
    """What a sink did with the events it received.

    ``written`` went straight to the database; ``spilled`` went to the spill
    file instead; ``replayed`` moved from the spill file into the database;
    ``failed`` counts events whose database write failed (spilled, or raised
    with ``strict=True``); ``quarantined`` counts spilled events the database
    refused for their content on replay, set aside in the quarantine file
    (logged as errors); ``late`` counts events a buffered sink received after
    its writer stopped at interpreter exit, written synchronously instead
    (and counted in ``written`` or ``spilled`` too); ``lost`` counts events
    that could be neither written nor spilled (each one is logged as
    critical).
    """

    written: int = 0
    spilled: int = 0
    replayed: int = 0
    failed: int = 0
    quarantined: int = 0
    late: int = 0
    lost: int = 0


class PeeweeSink:
    """Writes redacted audit events to the ``audit_log`` table of a peewee database.

    ``database`` is a peewee ``Database`` or a URL (``"sqlite:///audit.db"``,
    ``"postgresql://..."``); with neither, ``$AUDITASPECT_DATABASE_URL``, else
    ``sqlite:///audit.db``. ``event_types`` limits which types are recorded
    (default: all). ``redactor`` is applied to every event before it is written
    (default: the active redactor), so hand-built events are redacted too.
    ``chain_key`` (default ``$AUDITASPECT_CHAIN_KEY``) makes the hash chain an
    HMAC chain.

    Failures: by default a failed write is logged, counted in :attr:`stats`,
    and the event spilled to ``spill_path`` (default: the SQLite file's path
    plus ``.spill.jsonl``, or ``./auditaspect.spill.jsonl``) for replay. With
    ``strict=True`` (sync mode only) the audited call gets
    :class:`~auditaspect.AuditWriteError` instead and nothing is spilled.

    Buffered mode: ``batch_size`` events (default 2,000) or ``flush_interval``
    seconds make a batch; ``queue_size`` bounds the queue (callers wait when
    it is full).
    ``writer="process"`` has a child process write the batches, on its own
    core and outside the application's GIL (:mod:`auditaspect.writer_process`:
    one process per sink, started on the first batch); the database must then
    be a URL or a SQLite file, which the child opens itself.

    The chain key: every row records which key chained it (``key_id``, a
    fingerprint, never the key). :meth:`connect` raises
    :class:`~auditaspect.AuditError` when the log's last row was chained with
    another key (one writer without ``$AUDITASPECT_CHAIN_KEY`` among keyed
    ones would make the log fail to verify with or without the key); pass
    ``rotate_chain_key=True`` to continue the chain with a new key on purpose
    (verify then needs both keys).

    Signed checkpoints (needs ``auditaspect[signing]``): with ``signing_key``
    (an Ed25519 private key, PEM or a path) and ``checkpoint_path`` and/or
    ``on_checkpoint``, the sink appends a signed checkpoint of the committed
    log after every ``checkpoint_every`` events, every
    ``checkpoint_interval`` seconds even when idle, and at :meth:`close`
    (:class:`~auditaspect.checkpoints.CheckpointWriter`).
    """

    def __init__(
        self,
        database: peewee.Database | str | None = None,
        *,
        mode: Mode = "sync",
        event_types: Iterable[str] | None = None,
        redactor: Redactor | None = None,
        strict: bool = False,
        chain_key: str | bytes | None = None,
        spill_path: str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        flush_interval: float = 0.05,
        queue_size: int = 10_000,
        handle_sigterm: bool = True,
        writer: Writer = "thread",
        rotate_chain_key: bool = False,
        signing_key: Any = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float | None = 60.0,
        on_checkpoint: Callable[[Checkpoint], Any] | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be 'sync' or 'buffered', not {mode!r}")
        if strict and mode != "sync":
            raise ValueError("strict=True needs mode='sync': a buffered write fails after the call")
        if writer not in ("thread", "process"):
            raise ValueError(f"writer must be 'thread' or 'process', not {writer!r}")
        if writer == "process" and mode != "buffered":
            raise ValueError("writer='process' needs mode='buffered': sync writes stay in-process")
        if redactor is not None and not isinstance(redactor, Redactor):
            raise TypeError(f"redactor must be a Redactor, not {type(redactor).__name__}")
        if isinstance(event_types, str):
            raise TypeError("event_types must be a collection of types, e.g. ['plan_applied']")
        self.event_types: frozenset[str] | None = (
            None if event_types is None else frozenset(event_type_value(t) for t in event_types)
        )
        self._key = resolve_key(chain_key)
        self._key_id = key_id(self._key)
        self._rotate = rotate_chain_key
        if (checkpoint_path is not None or on_checkpoint is not None) and signing_key is None:
            raise ValueError(
                "automatic checkpoints are signed: pass signing_key= (auditaspect keygen makes one)"
            )
        self.database, self._owns_database = open_database(database)
        self.mode: Mode = mode
        self.strict = strict
        self.stats = SinkStats()
        self._redactor = redactor
        origin = database_origin(self.database, TABLE_NAME)
        self.spill = SpillFile(
            spill_path or _default_spill_path(self.database, origin), origin=origin
        )
        self._insert: CompiledInsert | None = None
        # (id, hash) of the log's last row, as this sink last wrote or read it (SQLite).
        self._head: tuple[int, str] | None = None
        self._writer: BatchWriter[Row] | None = None
        self._writer_options = {
            # Each batch costs the writer thread (or the writer process's
            # feeding thread) a wait of up to a switch interval (5 ms) for
            # the GIL after SQLite or the pipe gave it up: 2,000 rows share it.
            "batch_size": 2000 if batch_size is None else batch_size,
            "flush_interval": flush_interval,
            "queue_size": queue_size,
        }
        self._handle_sigterm = handle_sigterm
        self._process: WriterProcess | None = None
        if writer == "process":
            self._process = WriterProcess(
                {
                    "database": _child_url(database, self.database),
                    "chain_key": self._key,
                    "rotate_chain_key": rotate_chain_key,
                    "spill_path": self.spill.path,
                }
            )
        self._postgres = isinstance(self.database, peewee.PostgresqlDatabase)
        self._pooled = hasattr(self.database, "close_all")
        self._connected = False
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._retry_at = 0.0  # while monotonic() < this, spill without trying
        self._spilled = False  # this sink spilled since its last replay
        self._replayer: threading.Thread | None = None
        # The schema could not be created at connect (read-only disk, server
        # down): events spill, and each probe tries again.
        self._schema_pending = False
        # A SQLite file's identity, to notice it deleted or replaced under us;
        # each thread remembers which opening of the file its connection is.
        self._file = _sqlite_file(self.database)
        # Held open to notice the file unlinked: fstat of an fd is cheaper than a stat by path.
        self._file_fd: int | None = None
        self._generation = 0
        self._local = threading.local()
        self._checkpoints: CheckpointWriter | None = None
        if signing_key is not None:
            if self.database.database == ":memory:":
                raise ValueError("automatic checkpoints need a database file, not ':memory:'")
            self._checkpoints = CheckpointWriter(
                self._read_head,
                origin=origin,
                signing_key=signing_key,
                path=checkpoint_path,
                every=checkpoint_every,
                interval=checkpoint_interval,
                on_checkpoint=on_checkpoint,
            )

    def __repr__(self) -> str:
        return (
            f"PeeweeSink({type(self.database).__name__}({self.database.database!r}), "
            f"mode={self.mode!r}, connected={self._connected})"
        )

    # -- lifecycle ---------------------------------------------------------

    def connect(self) -> PeeweeSink:
        """Create the table if missing, bind :class:`AuditRecord`, subscribe.

        Also replays any events a previous run left in the spill file. Returns
        the sink; connecting a connected sink does nothing. The signals hold
        the sink strongly until :meth:`close`.
        """
        with self._lock:
            if self._connected:
                return self
            if self.mode == "buffered" and self.database.database == ":memory:":
                raise ValueError("buffered mode needs a database file: ':memory:' is per thread")
            try:
                self._insert = CompiledInsert(self.database)
                self._create_schema()
                self._check_key()
            except (peewee.OperationalError, peewee.InterfaceError, OSError) as exc:
                # Unreachable or unwritable now (a read-only disk, a server
                # down): run on the spill file and keep probing.
                self._start_spilling(exc)
            except Exception:
                if self._owns_database:
                    close_database(self.database)
                raise
            AuditRecord.bind(self.database, bind_refs=False, bind_backrefs=False)
            if self.mode == "buffered":
                self._writer = BatchWriter(
                    self._deliver if self._process is None else self._deliver_by_process,
                    on_stop=self._writer_stopped,
                    **self._writer_options,  # type: ignore[arg-type]
                )
                if self._handle_sigterm:
                    install_sigterm_handler()
            _at_fork.add(self)
            for sig in self._signals():
                sig.connect(self._receive, weak=False)
            self._connected = True
            if self._checkpoints is not None:
                self._checkpoints.start()
        self._spilled = self.spill.pending()
        self._replay_if_spilled()
        return self

    def close(self) -> None:
        """Unsubscribe, write what is queued, replay the spill file, release the database.

        Safe to call twice. Events stay in the spill file only while the
        database stays unwritable.
        """
        with self._lock:
            if not self._connected:
                return
            for sig in self._signals():
                sig.disconnect(self._receive)
            self._connected = False
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._process is not None:
            self._settle_process()
            self._process.close()
        self._replay_if_spilled(force=True)
        if self._checkpoints is not None:
            self._checkpoints.close()
        _at_fork.discard(self)
        fd, self._file_fd = self._file_fd, None
        if fd is not None:
            os.close(fd)
        if self._owns_database:
            close_database(self.database)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event received so far is committed (or spilled).

        Also waits for a replay of spilled events that is under way. Returns
        ``False`` if ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        writer = self._writer
        if writer is not None and not writer.flush(timeout):
            return False
        self._settle_process()  # the writer process's answers, if there is one
        replayer = self._replayer
        if replayer is not None:
            replayer.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            return not replayer.is_alive()
        return True

    def replay(self) -> int:
        """Move spilled events into the database now; return how many were written.

        Events the database already has (same ``event_id``) are skipped, so a
        replay never writes an event twice; events the database refuses for
        their content are set aside in the quarantine file, not retried for
        ever. The file is read a batch at a time: memory does not grow with
        the backlog. Raises the database error if the database is still
        unwritable (what was not written stays spilled).
        """
        if self._insert is None:
            raise RuntimeError("PeeweeSink is not connected; call .connect() or use it in 'with'")
        count = self.spill.drain(self._store_new)
        self._spilled = False
        with self._stats_lock:
            self.stats.replayed += count
        if count:
            logger.info("replayed %d spilled audit events from %s", count, self.spill.path)
        return count

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

    def _chain_old_rows(self) -> None:
        """Give rows from before the hash chain (schema version 1) their links.

        The one sanctioned change to existing rows: in one transaction under
        the write lock, the append-only triggers are dropped, every row
        without a hash is chained in id order, and the triggers come back.
        The chain then attests these rows from the upgrade on.
        """
        db = self.database
        columns = ", ".join(CHAINED_FIELDS)
        select = (
            f"SELECT id, {columns}, details, hash FROM {TABLE_NAME} "
            f"WHERE id > {db.param} ORDER BY id LIMIT 1000"
        )
        update = (
            f"UPDATE {TABLE_NAME} SET prev_hash = {db.param}, hash = {db.param} "
            f"WHERE id = {db.param}"
        )
        with schema_lock(db):
            cursor = db.cursor()  # type: ignore[no-untyped-call]
            if self._postgres:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
            drop_guards(db)
            prev, last, sealed = GENESIS, 0, 0
            while rows := db.execute_sql(select, (last,)).fetchall():  # type: ignore[no-untyped-call]
                for row in rows:
                    last, stored = row[0], row[-1]
                    if stored is None:
                        stored = link(prev, legacy_payload(row[1:11], row[11]), self._key)
                        db.execute_sql(update, (prev, stored, last))  # type: ignore[no-untyped-call]
                        sealed += 1
                    prev = stored
            install_guards(db)
        logger.info("chained %d audit rows written before schema version 2", sealed)

    def _check_key(self) -> None:
        """Refuse to write with a key other than the one that chained the log's last row.

        On SQLite, also remember that row as the head, so that the first batch
        is one statement too (if another writer appends first, that statement
        is refused whole and the write takes the locked path, as after any
        stale head).
        """
        row = self.database.execute_sql(  # type: ignore[no-untyped-call]
            f"SELECT id, hash, key_id FROM {TABLE_NAME} ORDER BY id DESC LIMIT 1"
        ).fetchone()
        last, prev, found = row if row else (0, GENESIS, None)
        if found is not None and found != self._key_id:
            if not self._rotate:
                raise AuditError(_key_mismatch(found, self._key_id))
            logger.warning("audit chain continues with key %s after key %s", self._key_id, found)
        if not self._postgres and prev is not None:
            self._head = (last, prev)

    def _read_head(self) -> tuple[int, str]:
        """The committed head, on this thread's own connection (for checkpoints)."""
        with _at_fork.active():
            try:
                return read_head(self.database)
            finally:
                if threading.current_thread().name == "auditaspect-checkpoint":
                    self._close_thread_connection()

    def _create_schema(self) -> None:
        self._head = None  # a new or replaced file: read its head under the lock
        if create_schema(self.database) == 1:
            self._chain_old_rows()
        self._watch_file()
        self._schema_pending = False

    def _watch_file(self) -> None:
        if self._file is None:
            return
        old, self._file_fd = self._file_fd, None
        if old is not None:
            os.close(old)
        with contextlib.suppress(OSError):  # gone again already: the next write retries
            self._file_fd = os.open(self._file, os.O_RDONLY | os.O_CLOEXEC)

    def _start_spilling(self, exc: Exception) -> None:
        """The database cannot be set up now: run on the spill file if it can be written.

        Raises :class:`~auditaspect.AuditError`, one line naming both, when
        neither the database nor the spill file works (the database is then
        closed if the sink opened it).
        """
        try:
            self.spill.probe()
        except OSError as spill_exc:
            if self._owns_database:
                close_database(self.database)
            reason = spill_exc.strerror or str(spill_exc)
            raise AuditError(
                f"cannot open the audit database {self.spill.origin} ({first_line(exc)}) "
                f"and cannot write the spill file {self.spill.path} ({reason}): "
                "give the sink a writable database or spill_path"
            ) from exc
        if self._insert is None:
            raise exc
        self._schema_pending = True
        self._retry_at = time.monotonic() + PROBE_INTERVAL
        logger.error(
            "audit database %s is unavailable (%s); events spill to %s until it works",
            self.spill.origin,
            first_line(exc),
            self.spill.path,
        )
        self._reset_connection()

    def _writer_stopped(self) -> None:
        # On the writer thread, as it stops (close, or interpreter exit).
        self._settle_process()
        self._close_thread_connection()

    def _close_thread_connection(self) -> None:
        # peewee keeps one connection per thread: the writer closes its own.
        if not self.database.is_closed():
            self.database.close()

    def _after_fork_in_child(self) -> None:  # pragma: no cover - forked child (test_buffered)
        # The inherited connections belong to the parent: forget them, but
        # keep them referenced, since a driver that closes a connection when
        # it is collected would end the parent's session over the shared
        # socket. peewee's and the pool's locks may have been held by a
        # parent thread at the fork: replace them.
        db: Any = self.database
        _inherited.append(getattr(db._state, "conn", None))
        if isinstance(db._lock, type(threading.Lock())):
            db._lock = threading.Lock()
        if hasattr(db, "_pool_lock"):
            _inherited.append((db._connections, db._in_use))
            db._pool_lock = threading.RLock()
            db._pool_available = threading.Condition(db._pool_lock)
            db._connections, db._in_use = [], {}
        db.dispose()
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._replayer = None
        if self._process is not None:
            self._process.after_fork_in_child()
        self.spill.after_fork()
        if self._checkpoints is not None:
            self._checkpoints.after_fork()

    # -- receiving -----------------------------------------------------------

    def _receive(self, sender: Any, *, event: AuditEvent) -> None:
        self.write(event)

    def write(self, event: AuditEvent) -> None:
        """Record one event, as if it had been sent on the signals.

        Events of types outside ``event_types`` are ignored. Raises
        ``RuntimeError`` if the sink is not connected, and
        :class:`~auditaspect.AuditWriteError` if the write fails and the sink
        is strict.
        """
        if self.event_types is not None and event.event_type not in self.event_types:
            return
        if self._insert is None:
            raise RuntimeError("PeeweeSink is not connected; call .connect() or use it in 'with'")
        # The row is built here, on the caller's thread: a buffered sink
        # queues plain tuples, and the event dies with the audited call.
        row = self._row(event)
        if row is None:
            return
        writer = self._writer
        if writer is None:
            self._deliver([row])
        elif writer.closed:
            # Past the exit-time flush (a daemon thread still serving, an
            # atexit hook that ran after ours): write it now, never drop it.
            with self._stats_lock:
                self.stats.late += 1
            self._deliver([row])
        elif self.database.in_transaction():
            # Queue it only if the caller's transaction commits.
            self.database.after_commit(functools.partial(writer.put, row))
        else:
            writer.put(row)

    def _row(self, event: AuditEvent) -> Row | None:
        """The event's row; ``None`` (counted lost, logged critical) if it cannot be built."""
        try:
            return prepare_row(event, self._redactor or get_redactor())
        except Exception:
            with self._stats_lock:
                self.stats.failed += 1
                self.stats.lost += 1
            logger.critical(
                "LOST audit event %s: it cannot be made into a row", event.event_id, exc_info=True
            )
            if self.strict:
                raise AuditWriteError(f"audit event {event.event_id} cannot be stored") from None
            return None

    def _rows(self, events: Sequence[AuditEvent]) -> list[Row]:
        redactor = self._redactor or get_redactor()
        return [prepare_row(event, redactor) for event in events]

    # -- delivering ------------------------------------------------------------

    def _deliver(self, rows: list[Row]) -> None:
        """Write rows, or spill them; raise only for a strict sink."""
        if not self.strict and time.monotonic() < self._retry_at:
            self._spill(rows)
            return
        try:
            self._store(rows)
        except _Deferred:
            # Still only if the caller's transaction commits; then in a
            # transaction of its own, which reads the current head.
            self.database.after_commit(functools.partial(self._deliver, rows))
            return
        except Exception as exc:
            if (
                len(rows) > 1
                and not self.strict
                and _refused_for_content(exc)
                and self._isolate(rows)
            ):
                return
            self._failed(rows, exc)
            return
        with self._stats_lock:
            self.stats.written += len(rows)
        if self._checkpoints is not None:
            self._checkpoints.note(len(rows))
        if self._retry_at:
            self._retry_at = 0.0
            logger.info("audit database writable again")
        self._replay_if_spilled()

    def _deliver_by_process(self, rows: list[Row]) -> None:
        """Send a batch to the writer process; spill here what it failed to answer for."""
        process, writer = self._process, self._writer
        assert process is not None
        if time.monotonic() < self._retry_at:
            self._spill(rows)  # the process failed a moment ago: spill for a while
            return
        try:
            counts = process.deliver(rows, more=writer is not None and writer.pending())
        except WriterProcessError as exc:
            self._failed(exc.rows, exc)
            return
        self._count(counts)
        if self._retry_at:
            self._retry_at = 0.0
            logger.info("audit writer process writing again")

    def _settle_process(self) -> None:
        """Wait for the writer process's last answers (flush, close, the writer's stop)."""
        process = self._process
        if process is None:
            return
        try:
            self._count(process.settle())
        except WriterProcessError as exc:
            self._failed(exc.rows, exc)

    def _count(self, counts: dict[str, int]) -> None:
        with self._stats_lock:
            for name, count in counts.items():
                setattr(self.stats, name, getattr(self.stats, name) + count)
        if self._checkpoints is not None and counts["written"]:
            self._checkpoints.note(counts["written"])

    def _isolate(self, rows: list[Row]) -> bool:
        """After a batch failed: write its rows one by one, spilling only those that fail.

        One event the database refuses must not take the rest of its batch
        with it. Returns False (nothing written) when the first two rows
        fail too: then the database itself is failing, and the caller spills
        the batch whole rather than trying every row.
        """
        written, refused = self._store_each(rows)
        if not written:
            return False
        with self._stats_lock:
            self.stats.written += written
        for row, error in refused:
            self._failed([row], error, probe=False)
        return True

    def _store_each(self, rows: list[Row]) -> tuple[int, list[tuple[Row, Exception]]]:
        """Store rows one by one; return how many went in and those refused, with why.

        Gives up (after storing nothing) once the first two are refused: then
        the database is failing, not the events, and trying each would only
        take longer.
        """
        stored = 0
        refused: list[tuple[Row, Exception]] = []
        for number, row in enumerate(rows):
            if number == 2 and not stored:
                return 0, refused
            try:
                self._store([row])
            except Exception as exc:
                refused.append((row, exc))
                continue
            stored += 1
        return stored, refused

    def _store(self, rows: Sequence[Row]) -> None:
        """Append rows to the chain in one transaction (or the caller's)."""
        insert = self._insert
        assert insert is not None
        db = self.database
        # A pooled connection this write had to open goes back to the pool
        # afterwards: threads that come and go must not drain the pool.
        give_back = self._pooled and db.is_closed()
        with _at_fork.active():
            if self._schema_pending:
                self._create_schema()
            if self._file is not None:
                fd = self._file_fd
                # One fstat per write; the rest only when something changed.
                if fd is None or self._generation or os.fstat(fd).st_nlink == 0:
                    self._check_file(db)
            try:
                if self._postgres or db.in_transaction() or not self._append_next(db, insert, rows):
                    self._append(db, insert, rows)
            finally:
                if give_back and not db.in_transaction() and not db.is_closed():
                    db.close()

    def _chain(
        self, insert: CompiledInsert, rows: Sequence[Row], last: int, prev: str
    ) -> tuple[list[tuple[Any, ...]], int, str]:
        """The rows' parameters chained after row ``last`` (hash ``prev``), and the new head."""
        key, mine, params = self._key, self._key_id, []
        for row in rows:
            last += 1
            current = link_row(prev, last, mine, row[PAYLOAD], key)
            params.append(insert.params(row, last, prev, current, mine))
            prev = current
        return params, last, prev

    def _append_next(
        self, db: peewee.Database, insert: CompiledInsert, rows: Sequence[Row]
    ) -> bool:
        """SQLite, outside a transaction: append in one statement after the head
        this sink last wrote or read; ``False`` when another writer got in first
        (or the head is not known yet), and nothing was written."""
        head = self._head
        if head is None or len(rows) > insert.APPEND_LIMIT:
            return False
        params, last, prev = self._chain(insert, rows, *head)
        if not insert.append_next(db.cursor(), params):  # type: ignore[no-untyped-call]
            return False
        self._head = (last, prev)
        return True

    def _append(self, db: peewee.Database, insert: CompiledInsert, rows: Sequence[Row]) -> None:
        """Append under the database's write lock, reading the head first."""
        joined = db.in_transaction()
        # Inside the caller's transaction: a savepoint; else SQLite's write lock up front.
        plain = joined or self._postgres
        with db.atomic() if plain else db.atomic(lock_type="IMMEDIATE"):
            cursor = db.cursor()  # type: ignore[no-untyped-call]
            if self._postgres:
                _lock_append(cursor, joined=joined)
            cursor.execute(_HEAD_SQL)
            head = cursor.fetchone()
            if head is None:
                last, prev = 0, GENESIS
            else:
                last, prev, head_key = head
                if head_key is not None and head_key != self._key_id and not self._rotate:
                    raise AuditError(_key_mismatch(head_key, self._key_id))
            params, last, prev = self._chain(insert, rows, last, prev)
            insert.execute(cursor, params)
        # Committed (a joined write may still roll back: its head is not remembered).
        self._head = None if joined or self._postgres else (last, prev)

    def _check_file(self, db: peewee.Database) -> None:
        """Notice a SQLite file deleted or replaced while in use, and write to the new one.

        Writes into an unlinked file would be counted as written and vanish
        with it. The first writer to see the path changed logs it as critical
        and creates the schema in a new file; every thread's connection to
        the old file is closed before its next write.
        """
        generation = self._generation
        stale = generation and getattr(self._local, "generation", 0) != generation
        if stale and not db.in_transaction() and not db.is_closed():
            db.close()
        if self._file_fd is None:  # not watched yet (or no longer: closed)
            self._watch_file()
        elif not self._file_present():
            with self._lock:
                if not self._file_present():
                    logger.critical(
                        "audit database file %s was deleted or replaced while in use; "
                        "writing to a new file at that path (rows written before are not in it)",
                        self._file,
                    )
                    if db.in_transaction():
                        raise AuditError(f"audit database file {self._file} was replaced")
                    if not db.is_closed():
                        db.close()
                    self._create_schema()
                    self._generation += 1
        if self._generation:
            self._local.generation = self._generation

    def _file_present(self) -> bool:
        fd = self._file_fd
        try:
            return fd is None or os.fstat(fd).st_nlink > 0
        except OSError:  # pragma: no cover - closed under us by close()
            return True

    def _store_new(self, events: list[AuditEvent]) -> int:
        """Store the events the database does not have yet; return how many."""
        db = self.database
        stored = 0
        for start in range(0, len(events), 500):
            chunk = events[start : start + 500]
            marks = ", ".join([db.param] * len(chunk))
            with _at_fork.active():
                present = {
                    r[0]
                    for r in db.execute_sql(  # type: ignore[no-untyped-call]
                        f"SELECT event_id FROM {TABLE_NAME} WHERE event_id IN ({marks})",
                        [e.event_id for e in chunk],
                    )
                }
            fresh = [e for e in chunk if e.event_id not in present]
            if fresh:
                stored += self._store_or_quarantine(self._rows(fresh))
        return stored

    def _store_or_quarantine(self, rows: list[Row]) -> int:
        """Store replayed rows; set aside those the database refuses while it takes others."""
        try:
            self._store(rows)
            return len(rows)
        except Exception as exc:
            if len(rows) == 1 or not _refused_for_content(exc):
                raise
        stored, refused = self._store_each(rows)
        if not stored:  # nothing goes in: the database is failing, not the events
            raise refused[0][1]
        for row, error in refused:
            self.spill.quarantine([row_event(row)], f"refused: {error}")
            logger.error(
                "audit event %s refused by the database on replay (%s); set aside in %s",
                row[EVENT_ID],
                error,
                self.spill.quarantine_path,
            )
        with self._stats_lock:
            self.stats.quarantined += len(refused)
        return stored

    def _failed(self, rows: Sequence[Row], exc: Exception, *, probe: bool = True) -> None:
        with self._stats_lock:
            self.stats.failed += len(rows)
        self._reset_connection()
        ids = ", ".join(r[EVENT_ID] for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
        if self.strict:
            raise AuditWriteError(
                f"audit write failed for {len(rows)} event(s) ({ids}): {exc}"
            ) from exc
        if probe:  # the database is failing: spill without trying for a while
            self._retry_at = time.monotonic() + PROBE_INTERVAL
        logger.error(
            "audit write failed for %d event(s) (%s), spilling to %s: %s",
            len(rows),
            ids,
            self.spill.path,
            exc,
        )
        self._spill(rows)

    def _reset_connection(self) -> None:
        """Drop this thread's connection after a failure, so the next write reconnects.

        A server that went away leaves a dead connection that peewee still
        thinks is open. Inside the caller's transaction the connection is the
        caller's business and stays.
        """
        self._head = None
        db = self.database
        if db.in_transaction() or db.is_closed():
            return
        if not self._owns_database and db.is_connection_usable():
            return  # the application opened it and it still works: leave it be
        try:
            db.close()
        except Exception:  # a broken connection may fail to close: forget it
            db.dispose()

    def _spill(self, rows: Sequence[Row]) -> None:
        db = self.database
        if db.in_transaction():
            # Only a committed domain change deserves its audit event.
            db.after_commit(functools.partial(self._spill_now, list(rows)))
            return
        self._spill_now(rows)

    def _spill_now(self, rows: Sequence[Row]) -> None:
        try:
            self.spill.append([row_event(row) for row in rows])
        except Exception:
            with self._stats_lock:
                self.stats.lost += len(rows)
            logger.critical(
                "LOST %d audit event(s): neither the database nor the spill file %s took them",
                len(rows),
                self.spill.path,
                exc_info=True,
            )
            return
        self._spilled = True
        with self._stats_lock:
            self.stats.spilled += len(rows)

    def _replay_if_spilled(self, *, force: bool = False) -> None:
        """Replay spilled events: on a background thread, or now when ``force`` (closing)."""
        if not self._spilled or (not force and time.monotonic() < self._retry_at):
            return
        if force or self.database.database == ":memory:":  # a thread would see another DB
            replayer = self._replayer
            if replayer is not None:
                replayer.join()
            self._replay_logged()
            return
        with self._stats_lock:
            if self._replayer is not None and self._replayer.is_alive():
                return
            # A backlog of any size must not hold up the call that found the
            # database writable again.
            self._replayer = threading.Thread(
                target=self._replay_in_background, name="auditaspect-replay", daemon=True
            )
            self._replayer.start()

    def _replay_in_background(self) -> None:
        try:
            self._replay_logged()
        finally:
            self._close_thread_connection()

    def _replay_logged(self) -> None:
        try:
            self.replay()
        except Exception as exc:
            self._retry_at = time.monotonic() + PROBE_INTERVAL
            self._spilled = True
            logger.warning("spilled audit events stay in %s for now: %s", self.spill.path, exc)


class _Deferred(Exception):
    """The caller's PostgreSQL transaction is REPEATABLE READ or SERIALIZABLE."""


def _key_mismatch(found: str, mine: str) -> str:
    return (
        f"audit_log is chained with key {found}, this sink's is {mine}: set "
        "AUDITASPECT_CHAIN_KEY (or chain_key=) to the log's key, or pass "
        "rotate_chain_key=True to continue the chain with a new key"
    )


def _lock_append(cursor: Any, *, joined: bool) -> None:
    """Take PostgreSQL's append lock, waiting at most LOCK_TIMEOUT (then the write spills).

    Without a bound, a sync write inside a long application transaction
    holds the lock and every other process's audited call waits for it.
    Inside the caller's transaction the caller's own lock_timeout comes back
    afterwards. Raises :class:`_Deferred` (taking no lock) inside a
    transaction that is not READ COMMITTED.
    """
    previous = None
    if joined:
        cursor.execute(
            "SELECT current_setting('lock_timeout'), current_setting('transaction_isolation')"
        )
        previous, isolation = cursor.fetchone()
        if isolation != "read committed":
            # Its snapshot predates rows other writers committed since: the
            # head it would read is stale. Write when it has committed.
            raise _Deferred
    cursor.execute(
        "SELECT set_config('lock_timeout', %s, true), pg_advisory_xact_lock(%s)",
        (LOCK_TIMEOUT, ADVISORY_LOCK_ID),
    )
    if previous is not None:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))


def _child_url(given: peewee.Database | str | None, database: peewee.Database) -> str:
    """The URL a writer process opens: the one given, else the SQLite file's.

    A SQLite path is made absolute (the child's working directory is the
    parent's, but a relative path read later would not be).
    """
    path = _sqlite_file(database)
    if path is not None:
        return f"sqlite:///{path}"
    if isinstance(given, str):
        return given
    raise ValueError(
        "writer='process' needs the database as a URL (the child opens its own "
        "connection); pass e.g. 'postgresql://user@host/db' instead of a Database object"
    )


def _sqlite_file(database: peewee.Database) -> str | None:
    name = database.database
    if not isinstance(database, peewee.SqliteDatabase) or not name or name == ":memory:":
        return None
    if name.startswith("file:"):
        return None
    return os.path.abspath(str(name))


_CONTENT_ERRORS = frozenset({"IntegrityError", "DataError", "ProgrammingError"})


def _refused_for_content(exc: BaseException) -> bool:
    """Whether the database refused rows for what they hold (not for being down or busy).

    Only then is a batch worth retrying event by event.
    """
    # By name: the drivers' own classes (sqlite3, psycopg) reach here too.
    if {cls.__name__ for cls in type(exc).__mro__} & _CONTENT_ERRORS:
        return True
    text = str(exc).lower()
    return "index row" in text or "too long" in text or "exceeds" in text


def _default_spill_path(database: peewee.Database, origin: str) -> str:
    """Next to a SQLite file; else in the working directory, named after the database.

    One file per database (and table): two sinks on different databases never
    share a default spill file.
    """
    name = database.database
    if isinstance(database, peewee.SqliteDatabase) and name and name != ":memory:":
        return f"{name}.spill.jsonl"
    digest = hashlib.sha256(origin.encode("utf-8")).hexdigest()[:16]
    return f"auditaspect-{digest}.spill.jsonl"


class _ForkRegistry:
    """Fork safety for every sink: one set of at-fork hooks for all of them.

    ``fork()`` copies only the calling thread. A thread that was inside
    SQLite or the driver at that moment leaves their internal locks held in
    the child for ever, and the child's first ``connect()`` hangs. So every
    database call of a sink runs inside :meth:`active`, and before a fork the
    forking thread waits (a bounded time) until no such call is under way and
    holds new ones back until the fork is done. In the child, each sink
    forgets the parent's connection and locks.
    """

    # A database call can wait up to SQLite's 5 s busy timeout: wait a little
    # longer than that for it, then fork anyway rather than hang the parent.
    FORK_WAIT = 6.0

    def __init__(self) -> None:
        self._sinks: weakref.WeakSet[PeeweeSink] = weakref.WeakSet()
        self._count_lock = threading.Lock()
        self._active = 0
        self._forking = False
        self._idle = threading.Event()  # set when the last call under way ends during a fork
        self._resumed = threading.Event()  # set when a fork is done
        self._resumed.set()
        if hasattr(os, "register_at_fork"):  # pragma: no branch - not on Windows
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )

    def add(self, sink: PeeweeSink) -> None:
        self._sinks.add(sink)

    def discard(self, sink: PeeweeSink) -> None:
        self._sinks.discard(sink)

    def active(self) -> contextlib.AbstractContextManager[None]:
        """Mark a database call under way, as a context manager (waits while a fork is made).

        A process with one thread needs no gate: no other thread can fork
        while this one is inside the call.
        """
        return self if threading.active_count() > 1 else _NO_GATE

    def __enter__(self) -> None:
        if self._forking:  # pragma: no cover - a fork under way (test_deployment)
            self._resumed.wait(self.FORK_WAIT)
        with self._count_lock:  # held by a fork in progress: new calls wait here
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._count_lock:
            self._active -= 1
            if self._forking and not self._active:  # pragma: no cover - as above
                self._idle.set()

    # The fork tests run their processes unmeasured (coverage's own lock can
    # be copied held by a fork): these hooks are proved by them, not counted.
    def _before_fork(self) -> None:  # pragma: no cover - test_deployment fork tests
        if not self._sinks:
            return
        self._resumed.clear()
        self._forking = True
        deadline = time.monotonic() + self.FORK_WAIT
        while True:
            self._count_lock.acquire()
            left = deadline - time.monotonic()
            if not self._active or left <= 0:
                return  # held through the fork: no database call starts meanwhile
            self._idle.clear()
            self._count_lock.release()
            self._idle.wait(min(left, 0.05))

    def _after_fork_in_parent(self) -> None:  # pragma: no cover - as above
        if not self._forking:
            return
        self._forking = False
        self._count_lock.release()
        self._resumed.set()

    def _after_fork_in_child(self) -> None:  # pragma: no cover - forked child
        # Fresh, unheld: the parent's lock (and its waiters) are not ours.
        self._count_lock = threading.Lock()
        self._active = 0
        self._forking = False
        self._idle = threading.Event()
        self._resumed = threading.Event()
        self._resumed.set()
        for sink in list(self._sinks):
            sink._after_fork_in_child()


_NO_GATE = contextlib.nullcontext()
_at_fork = _ForkRegistry()
# Connections a forked child inherited, kept from the garbage collector.
_inherited: list[Any] = []
