"""Tamper evidence: the hash chain over ``audit_log`` and :func:`verify`.

Every row stores ``prev_hash`` (the hash of the row before it in ``id`` order,
or :data:`GENESIS` for the first) and ``hash``, the SHA-256 of ``prev_hash``
and a canonical serialisation of the row's fields. With a secret key
(``chain_key=`` or ``$AUDITASPECT_CHAIN_KEY``) each link is HMAC-SHA-256
instead, so someone who can write the database but lacks the key cannot
produce a chain that verifies.

The canonical form is recomputed from parsed values, never from stored text:
SQLite's ``json()`` minifies and PostgreSQL's JSONB reorders keys, so the same
details come back as different text. Details are serialised with sorted keys,
compact separators and UTF-8.

A chain alone cannot show that its tail was cut off. A :class:`Checkpoint`
(the last ``id`` and its hash, exported and stored elsewhere) can: pass it to
:func:`verify` later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import peewee

from .database import close_database, open_database
from .model import TABLE_NAME, dumps_details, format_timestamp

__all__ = [
    "ENV_CHAIN_KEY",
    "GENESIS",
    "Checkpoint",
    "VerifyReport",
    "canonical",
    "checkpoint",
    "link",
    "resolve_key",
    "row_payload",
    "verify",
]

GENESIS = "0" * 64
ENV_CHAIN_KEY = "AUDITASPECT_CHAIN_KEY"
# The fields in the order they are hashed (details last, on its own line).
CHAINED_FIELDS = (
    "event_id",
    "timestamp",
    "event_type",
    "outcome",
    "actor",
    "plan_id",
    "ip",
    "correlation_id",
    "target",
    "error",
)
_PAGE = 2000


def resolve_key(chain_key: str | bytes | None) -> bytes | None:
    """Return the chain key as bytes: the argument, else ``$AUDITASPECT_CHAIN_KEY``."""
    if chain_key is None:
        chain_key = os.environ.get(ENV_CHAIN_KEY) or None
    if chain_key is None:
        return None
    key = chain_key.encode("utf-8") if isinstance(chain_key, str) else bytes(chain_key)
    if not key:
        raise ValueError("chain_key must not be empty; omit it for an unkeyed chain")
    return key


# Built once: json.dumps() with options builds a new encoder on every call.
_encode_fields = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def canonical(scalars: Sequence[str | None], details_text: str) -> bytes:
    """The bytes a link hashes: the scalar fields as a JSON array, a newline,
    the canonical details text (:func:`~auditaspect.model.dumps_details`)."""
    return f"{_encode_fields(list(scalars))}\n{details_text}".encode()


def link(prev_hash: str, payload: bytes, key: bytes | None) -> str:
    """Return the hex hash of one link: SHA-256, or HMAC-SHA-256 with a key."""
    data = prev_hash.encode("ascii") + b"\n" + payload
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.digest(key, data, "sha256").hex()


@attrs.frozen
class Checkpoint:
    """The last row of the log at some moment: store it where the log's writers cannot."""

    last_id: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"last_id": ..., "hash": ...}`` for JSON export."""
        return {"last_id": self.last_id, "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint exported with :meth:`to_dict`; a bad one is a ``ValueError``."""
        try:
            return cls(last_id=int(data["last_id"]), hash=str(data["hash"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint (need last_id and hash): {data!r}") from exc


@attrs.frozen
class VerifyReport:
    """What :func:`verify` found.

    ``ok`` is true when every row's hash matches its content and its
    predecessor (and the checkpoint, if one was given). Otherwise ``bad_id`` is
    the first row found broken and ``reason`` says how.
    """

    ok: bool
    rows_checked: int
    bad_id: int | None = None
    reason: str | None = None
    last: Checkpoint | None = None

    def __bool__(self) -> bool:
        return self.ok


_SELECT = (
    "SELECT id, "
    + ", ".join(CHAINED_FIELDS)
    + f", details, prev_hash, hash FROM {TABLE_NAME} WHERE id > {{p}} ORDER BY id LIMIT {_PAGE}"
)


def _rows(database: peewee.Database) -> Iterator[tuple[Any, ...]]:
    """Every row in id order, a page at a time (constant memory on huge logs)."""
    sql = _SELECT.format(p=database.param)
    last = 0
    while True:
        page = database.execute_sql(sql, (last,)).fetchall()  # type: ignore[no-untyped-call]
        if not page:
            return
        yield from page
        last = page[-1][0]


def row_payload(values: Sequence[Any], details: Any) -> bytes:
    """The canonical bytes of a stored row (scalars as read, details parsed or text)."""
    scalars = list(values)
    stamp = scalars[1]
    scalars[1] = format_timestamp(
        stamp if isinstance(stamp, datetime) else datetime.fromisoformat(stamp)
    )
    parsed = json.loads(details) if isinstance(details, (str, bytes)) else details
    return canonical(scalars, dumps_details(parsed))


def verify(
    database: peewee.Database | str | None = None,
    *,
    chain_key: str | bytes | None = None,
    checkpoint: Checkpoint | Mapping[str, Any] | None = None,
) -> VerifyReport:
    """Check the hash chain of ``audit_log`` from its first row to its last.

    ``database`` is a peewee ``Database`` or a URL, as for the sink.
    ``chain_key`` (default ``$AUDITASPECT_CHAIN_KEY``) must be the key the
    rows were written with. Detects a modified, deleted, inserted or
    reordered row, also after the append-only triggers were dropped and the
    file edited by hand; with a ``checkpoint``, also a removed tail. Never
    raises for a broken chain: the report says what is wrong. A missing table
    is reported, not raised.
    """
    db, owned = open_database(database)
    key = resolve_key(chain_key)
    mark = None
    if checkpoint is not None:
        mark = (
            checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.from_dict(checkpoint)
        )
    try:
        if TABLE_NAME not in db.get_tables():
            return VerifyReport(ok=False, rows_checked=0, reason=f"no {TABLE_NAME} table")
        return _walk(db, key, mark)
    finally:
        if owned:
            close_database(db)


def _walk(db: peewee.Database, key: bytes | None, mark: Checkpoint | None) -> VerifyReport:
    prev = GENESIS
    checked = 0
    last: Checkpoint | None = None
    seen_mark = False
    for row in _rows(db):
        row_id, values, details, prev_hash, stored = row[0], row[1:11], row[11], row[12], row[13]
        checked += 1
        if prev_hash != prev:
            reason = (
                "prev_hash does not match the row before it: "
                "a row was removed, inserted or reordered"
            )
            return VerifyReport(False, checked, row_id, reason, last)
        try:
            expected = link(prev, row_payload(values, details), key)
        except (ValueError, TypeError) as exc:
            return VerifyReport(False, checked, row_id, f"row cannot be read: {exc}", last)
        if not hmac.compare_digest(expected, stored or ""):
            reason = "hash does not match the row's content: the row was modified"
            if key is not None:
                reason += " (or written with another chain key)"
            return VerifyReport(False, checked, row_id, reason, last)
        if mark is not None and row_id == mark.last_id:
            seen_mark = True
            if stored != mark.hash:
                return VerifyReport(False, checked, row_id, "row differs from the checkpoint", last)
        prev = stored
        last = Checkpoint(last_id=row_id, hash=stored)
    if mark is not None and not seen_mark:
        end = last.last_id if last else 0
        reason = (
            f"log ends at row {end}, before checkpoint row {mark.last_id}: its tail was removed"
        )
        return VerifyReport(False, checked, end or None, reason, last)
    return VerifyReport(True, checked, last=last)


def checkpoint(database: peewee.Database | str | None = None) -> Checkpoint | None:
    """Return the log's last row as a :class:`Checkpoint` (``None`` if empty).

    Export it (``checkpoint.to_dict()``) to storage the writers of the log
    cannot change; :func:`verify` with it detects a removed tail.
    """
    db, owned = open_database(database)
    try:
        row = db.execute_sql(  # type: ignore[no-untyped-call]
            f"SELECT id, hash FROM {TABLE_NAME} ORDER BY id DESC LIMIT 1"
        ).fetchone()
    finally:
        if owned:
            close_database(db)
    return None if row is None else Checkpoint(last_id=row[0], hash=row[1])
