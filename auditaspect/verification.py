"""Checking the log: :func:`verify` reads every row and reports every break.

What is checked, row by row in ``id`` order (every row of the table, whatever
its id):

* the id is the next of the sequence 1, 2, 3, ... (a row outside it was
  inserted around the chain; a gap means rows were removed);
* ``prev_hash`` is the previous row's ``hash`` (nothing removed, inserted or
  reordered before it);
* ``hash`` matches the row's content, id and key id under a key of the
  keyring (nothing changed; HMAC: nobody without the key wrote it);
* the row is in its one stored form (timestamp spelling, no repeated JSON
  key: what SQL reads is what was hashed);

and, for the table: no unexpected columns, the append-only triggers in
place, and every checkpoint given (signature, and that the log still holds
and extends its head).

:func:`verify` never raises for what it finds in the database, corrupt pages
included: it reports. Memory stays flat on any number of rows (a page of rows
at a time; the first :data:`DETAILED` breaks in detail, the rest counted).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import peewee

from .checkpoints import Checkpoint, TrustedKey, keyring
from .database import close_database, open_readonly
from .errors import first_line
from .integrity import (
    CHAINED_FIELDS,
    GENESIS,
    UNKEYED,
    KeyLike,
    key_id,
    legacy_alternative,
    legacy_payload,
    link,
    resolve_keys,
    row_payload,
    row_prefix,
)
from .model import TABLE_NAME, format_timestamp, guard_names, installed_guards, installed_version

__all__ = ["DETAILED", "Break", "VerifyReport", "verify"]

#: How many breaks a report describes one by one (all are counted).
DETAILED = 100
_PAGE = 2000
_COLUMNS = frozenset({"id", *CHAINED_FIELDS, "details", "prev_hash", "hash", "key_id"})


@attrs.frozen
class Break:
    """One thing found wrong.

    ``kind`` is one of ``outside-sequence`` (a row whose id is not the next
    of the sequence: inserted around the chain), ``missing`` (ids skipped:
    rows removed), ``link`` (the row does not follow the one before it:
    removed, inserted or reordered rows, or a rewritten hash), ``modified``
    (the row's content does not match its hash, or it was written with
    another key), ``non-canonical`` (stored in a form the log never writes),
    ``unknown-key`` (chained with a key not in the keyring), ``unreadable``
    (a row or page that cannot be read), ``checkpoint`` (a checkpoint the log
    does not extend, or whose signature fails), ``schema`` (an added column,
    missing triggers). ``id`` is the row's id when the break is a row's.
    """

    kind: str
    id: int | None
    detail: str

    def __str__(self) -> str:
        where = "" if self.id is None else f"row {self.id}: "
        return f"{self.kind}: {where}{self.detail}"


@attrs.frozen
class VerifyReport:
    """What :func:`verify` found.

    ``ok`` is true when nothing was found wrong. ``rows_checked`` counts every
    row read. ``breaks`` describes the first :data:`DETAILED` breaks;
    ``counts`` counts all of them by kind. ``bad_id`` and ``reason`` are the
    first broken row's id and what is wrong with it (or the first finding
    that is not a row's). ``last`` is the log's head as
    verified (a :class:`~auditaspect.Checkpoint` of its last row), and
    ``latest_checkpoint`` the newest checkpoint checked, if any.
    """

    ok: bool
    rows_checked: int
    bad_id: int | None = None
    reason: str | None = None
    last: Checkpoint | None = None
    breaks: tuple[Break, ...] = ()
    counts: Mapping[str, int] = attrs.field(factory=dict)
    checkpoints_checked: int = 0
    latest_checkpoint: Checkpoint | None = None

    def __bool__(self) -> bool:
        return self.ok

    @property
    def total_breaks(self) -> int:
        return sum(self.counts.values())


class _Findings:
    """Breaks found so far: the first DETAILED in full, every one counted."""

    def __init__(self) -> None:
        self.detailed: list[Break] = []
        self.counts: dict[str, int] = {}

    def add(self, kind: str, row_id: int | None, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.detailed) < DETAILED:
            self.detailed.append(Break(kind, row_id, detail))


class _Unreadable:
    """Marks where reading the table failed (a corrupt page, a dropped connection)."""

    def __init__(self, after: int | None, error: BaseException) -> None:
        self.after = after
        self.error = error


def verify(
    database: peewee.Database | str | None = None,
    *,
    chain_key: KeyLike | Sequence[KeyLike] | None = None,
    checkpoint: Checkpoint | Mapping[str, Any] | Sequence[Checkpoint] | None = None,
    public_key: Any = None,
    progress: Callable[[int], Any] | None = None,
) -> VerifyReport:
    """Check ``audit_log`` from its first row to its last and report every break.

    ``database`` is a peewee ``Database`` or a URL, as for the sink.
    ``chain_key`` (default ``$AUDITASPECT_CHAIN_KEY``) is the key the rows
    were written with, or a list of keys (after a rotation); rows chained
    with a key not given are reported. ``checkpoint`` is one checkpoint or a
    list (a sink's checkpoint file); with ``public_key`` (an Ed25519 public
    key, PEM, a path, a :class:`~auditaspect.checkpoints.TrustedKey`, or a
    list of them) every checkpoint must carry a valid signature from it.
    ``progress`` is called with the number of rows read after each page.

    A URL is opened read-only, as the ``auditaspect`` command line does
    (:func:`~auditaspect.database.open_readonly`): verifying changes no byte
    of the log and creates no file, so a copy kept as evidence keeps its hash.
    A ``Database`` object is used as it is.

    Never raises for what the database holds: a broken chain, a corrupt
    page or a missing table is reported. Raises only for bad arguments, before
    reading anything: ``ValueError`` (an empty key, a malformed checkpoint or
    public key, a SQLite URL that names no file or one that cannot be read
    read-only where it is, as ``open_readonly`` says), ``OSError`` (a key file
    that cannot be read), ``ImportError`` (``public_key`` without
    ``auditaspect[signing]``, a URL whose driver is not installed).
    """
    keys = resolve_keys(chain_key)
    by_id = {key_id(k): k for k in keys}
    marks = _marks(checkpoint)
    trusted = keyring(public_key)
    findings = _Findings()
    try:
        db, owned = open_readonly(database)
    except (ValueError, ImportError):
        raise  # no such file, an unknown scheme, no driver: the argument is wrong
    except Exception as exc:  # not a database, or a damaged one: reported below
        findings.add("unreadable", None, f"the database cannot be read: {first_line(exc)}")
        return _report(findings, 0, None, marks)
    try:
        if owned and isinstance(db, peewee.SqliteDatabase):
            # Text that is not UTF-8 (bytes cast to TEXT by a forger) is one
            # unreadable row, not an error that ends the page.
            db.connection().text_factory = _lenient_text  # type: ignore[no-untyped-call]
        return _verify(db, keys[0], by_id, marks, trusted, findings, progress)
    except Exception as exc:  # verify reports what it cannot read, it does not raise
        findings.add("unreadable", None, f"the database cannot be read: {first_line(exc)}")
        return _report(findings, 0, None, marks)
    finally:
        if owned:
            close_database(db)


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _marks(checkpoint: Any) -> list[Checkpoint]:
    if checkpoint is None:
        return []
    if isinstance(checkpoint, Checkpoint):
        return [checkpoint]
    if isinstance(checkpoint, Mapping):
        return [Checkpoint.from_dict(checkpoint)]
    return [m if isinstance(m, Checkpoint) else Checkpoint.from_dict(m) for m in checkpoint]


def _verify(
    db: peewee.Database,
    legacy_key: bytes | None,
    by_id: dict[str, bytes | None],
    marks: list[Checkpoint],
    trusted: list[TrustedKey],
    findings: _Findings,
    progress: Callable[[int], Any] | None,
) -> VerifyReport:
    if TABLE_NAME not in db.get_tables():
        findings.add("schema", None, f"no {TABLE_NAME} table")
        return _report(findings, 0, None, marks)
    columns = {c.name for c in db.get_columns(TABLE_NAME)}
    extra = sorted(columns - _COLUMNS)
    if extra:
        findings.add("schema", None, f"columns the log does not have were added: {extra}")
    if installed_version(db) >= 3:
        missing = sorted(set(guard_names(db)) - installed_guards(db))
        if missing:
            findings.add("schema", None, f"append-only triggers removed: {missing}")
    for mark in marks:
        if trusted:
            problem = mark.check_signature(trusted)
            if problem:  # the checkpoint is at fault, not a row: no row id
                findings.add("checkpoint", None, f"checkpoint of row {mark.last_id}: {problem}")
    checked, last = _walk(db, "key_id" in columns, legacy_key, by_id, marks, findings, progress)
    return _report(findings, checked, last, marks)


def _report(
    findings: _Findings, checked: int, last: Checkpoint | None, marks: list[Checkpoint]
) -> VerifyReport:
    # The first row found broken (else the first finding, such as a missing table).
    first = next((b for b in findings.detailed if b.id is not None), None) or (
        findings.detailed[0] if findings.detailed else None
    )
    stamped = [m for m in marks if m.time is not None]
    latest = max(stamped, key=lambda m: (m.time, m.last_id)) if stamped else None
    if latest is None and marks:
        latest = max(marks, key=lambda m: m.last_id)
    return VerifyReport(
        ok=not findings.counts,
        rows_checked=checked,
        bad_id=None if first is None else first.id,
        reason=None if first is None else first.detail,
        last=last,
        breaks=tuple(findings.detailed),
        counts=dict(findings.counts),
        checkpoints_checked=len(marks),
        latest_checkpoint=latest,
    )


def _rows(db: peewee.Database, has_key_id: bool) -> Iterator[tuple[Any, ...] | _Unreadable]:
    """Every row in id order, whatever its id, a page at a time."""
    details = "details::text" if isinstance(db, peewee.PostgresqlDatabase) else "details"
    select = (
        f"SELECT id, {'key_id' if has_key_id else 'NULL'}, {', '.join(CHAINED_FIELDS)}, "
        f"{details}, prev_hash, hash FROM {TABLE_NAME}"
    )
    first = f"{select} ORDER BY id LIMIT {_PAGE}"
    after = f"{select} WHERE id > {db.param} ORDER BY id LIMIT {_PAGE}"
    last: int | None = None
    while True:
        try:
            cursor = db.execute_sql(first) if last is None else db.execute_sql(after, (last,))  # type: ignore[no-untyped-call]
            page = cursor.fetchall()
        except Exception as exc:  # the driver's own errors too: a corrupt page, a lost server
            yield _Unreadable(last, exc)
            return
        if not page:
            return
        yield from page
        last = page[-1][0]


def _walk(
    db: peewee.Database,
    has_key_id: bool,
    legacy_key: bytes | None,
    by_id: dict[str, bytes | None],
    marks: list[Checkpoint],
    findings: _Findings,
    progress: Callable[[int], Any] | None,
) -> tuple[int, Checkpoint | None]:
    wanted: dict[int, list[Checkpoint]] = {}
    for mark in marks:
        wanted.setdefault(mark.last_id, []).append(mark)
    for mark in wanted.pop(0, []):
        if mark.hash != GENESIS:
            findings.add(
                "checkpoint", None, "an empty-log checkpoint with a hash that is not genesis"
            )
    expected, prev = 1, GENESIS
    checked = 0
    newer_seen = False  # a version 3 row was read: older-form rows may not follow
    last: Checkpoint | None = None
    for row in _rows(db, has_key_id):
        if isinstance(row, _Unreadable):
            where = "the first row" if row.after is None else f"row {row.after}"
            findings.add(
                "unreadable",
                None if row.after is None else row.after + 1,
                f"rows after {where} cannot be read ({first_line(row.error)}); "
                "they were not checked",
            )
            break
        checked += 1
        if progress is not None and checked % _PAGE == 0:
            progress(checked)
        row_id, row_key, values, details, prev_hash, stored = (
            row[0],
            row[1],
            row[2:12],
            row[12],
            row[13],
            row[14],
        )
        if row_id < expected:
            findings.add(
                "outside-sequence",
                row_id,
                f"id {row_id} is outside the sequence 1, 2, 3, ...: "
                "a row inserted around the chain",
            )
            continue
        content = _check_content(
            row_id, row_key, values, details, prev_hash, stored, legacy_key, by_id
        )
        if row_key is not None:
            newer_seen = True
        elif newer_seen:
            content = "written in the pre-version-3 form after version 3 rows: a forged row"
        if row_id > expected:
            if prev_hash == prev:
                findings.add(
                    "outside-sequence",
                    row_id,
                    f"id {row_id} where {expected} was expected (ids were changed)",
                )
            else:
                gap = (
                    f"row {expected}" if row_id == expected + 1 else f"rows {expected}-{row_id - 1}"
                )
                findings.add(
                    "missing", row_id, f"{gap} missing (removed), or this row's id was forged"
                )
        elif prev_hash != prev:
            findings.add(
                "link",
                row_id,
                f"does not follow row {row_id - 1}: rows were removed, inserted or reordered, "
                "or a hash rewritten",
            )
        if content is not None:
            kind, _, detail = (
                content.partition("|") if "|" in content else ("modified", "", content)
            )
            findings.add(kind, row_id, detail)
        for mark in wanted.pop(row_id, []):
            if mark.hash != stored:
                findings.add(
                    "checkpoint",
                    row_id,
                    "row differs from the checkpoint made of it: the log was rewritten",
                )
        prev = stored if isinstance(stored, str) else ""
        expected = row_id + 1
        last = Checkpoint(last_id=row_id, hash=prev)
    end = 0 if last is None else last.last_id
    for mark_id in sorted(wanted):
        findings.add(
            "checkpoint",
            None,
            f"log ends at row {end}, before checkpoint row {mark_id}: its tail was removed",
        )
    if progress is not None:
        progress(checked)
    return checked, last


def _check_content(
    row_id: int,
    row_key: Any,
    values: Sequence[Any],
    details: Any,
    prev_hash: Any,
    stored: Any,
    legacy_key: bytes | None,
    by_id: dict[str, bytes | None],
) -> str | None:
    """Why the row's content does not match its hash (``kind|detail``), or ``None``."""
    if not isinstance(prev_hash, str) or not isinstance(stored, str):
        return "modified|the row has no chain link: written around the sink"
    stamp = values[1]
    if isinstance(stamp, str):
        try:
            if format_timestamp(datetime.fromisoformat(stamp)) != stamp:
                return f"non-canonical|timestamp {stamp!r} is not in the stored form"
        except (ValueError, TypeError) as exc:
            return f"unreadable|timestamp {stamp!r} cannot be read: {exc}"
    try:
        if row_key is None:
            key = legacy_key
            payload = legacy_payload(values, details)
        else:
            if row_key not in by_id:
                if row_key == UNKEYED:
                    return "unknown-key|chained without a key, but the log is keyed"
                return f"unknown-key|chained with key {row_key!r}, which is not in the keyring"
            key = by_id[row_key]
            payload = row_prefix(row_id, row_key) + row_payload(values, details)
    except ValueError as exc:
        text = str(exc)
        if "repeat the key" in text:
            return f"non-canonical|{text}"
        return f"unreadable|the row cannot be read: {text}"
    except (TypeError, RecursionError, UnicodeError) as exc:
        return f"unreadable|the row cannot be read: {exc}"
    if not _same(link(prev_hash, payload, key), stored) and not (
        row_key is None and _legacy_float_match(values, details, prev_hash, stored, key)
    ):
        if key is None:
            return "modified|the row's content does not match its hash: it was modified"
        return (
            "modified|the row's content does not match its hash: it was modified "
            "(or written by someone without the chain key)"
        )
    return None


def _legacy_float_match(
    values: Sequence[Any], details: Any, prev_hash: str, stored: str, key: bytes | None
) -> bool:
    # Only called after legacy_payload() read the same values without error.
    payload = legacy_alternative(values, details)
    return payload is not None and _same(link(prev_hash, payload, key), stored)


def _same(expected: str, stored: str) -> bool:
    """Constant-time comparison that any stored text (not only ASCII) can go through."""
    return hmac.compare_digest(expected.encode(), stored.encode("utf-8", "surrogatepass"))
