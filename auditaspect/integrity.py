"""Tamper evidence: the hash chain over ``audit_log``.

Every row stores ``prev_hash`` (the hash of the row before it, or
:data:`GENESIS` for row 1), ``hash`` and ``key_id``. ``hash`` is the SHA-256
of ``prev_hash``, the row's id, its ``key_id`` and a canonical serialisation
of its fields; with a secret key (``chain_key=`` or ``$AUDITASPECT_CHAIN_KEY``)
it is HMAC-SHA-256 instead, so someone who can write the database but lacks
the key cannot produce a chain that verifies. ``key_id`` names the key
(:func:`key_id`: ``sha256`` for none, else a fingerprint that does not reveal
the key), so a verifier can hold several keys and a writer with another key
is refused instead of breaking the chain.

The canonical form is recomputed from parsed values, never from stored text:
SQLite's ``json()`` minifies and PostgreSQL's JSONB reorders keys and
normalises numbers, so the same details come back as different text. Details
are serialised with sorted keys, compact separators and UTF-8, and numbers
in the one form both databases give back (:func:`canonical_details`).

Rows written before schema version 3 (``key_id`` is NULL) keep the links they
were written with, which do not cover the id or key id:
:func:`legacy_payload` computes those.

Checking the chain is :mod:`auditaspect.verification`; signed checkpoints
are :mod:`auditaspect.checkpoints`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from . import events
from .events import dumps_details
from .model import format_timestamp

__all__ = [
    "CHAINED_FIELDS",
    "ENV_CHAIN_KEY",
    "GENESIS",
    "UNKEYED",
    "canonical",
    "canonical_details",
    "key_id",
    "legacy_alternative",
    "legacy_payload",
    "link",
    "link_row",
    "parse_details",
    "resolve_key",
    "resolve_keys",
    "row_payload",
    "row_prefix",
]

GENESIS = "0" * 64
ENV_CHAIN_KEY = "AUDITASPECT_CHAIN_KEY"
#: The key id of rows chained without a key.
UNKEYED = "sha256"
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

KeyLike = str | bytes


def resolve_key(chain_key: KeyLike | None) -> bytes | None:
    """Return the chain key as bytes: the argument, else ``$AUDITASPECT_CHAIN_KEY``."""
    if chain_key is None:
        chain_key = os.environ.get(ENV_CHAIN_KEY) or None
    if chain_key is None:
        return None
    key = chain_key.encode("utf-8") if isinstance(chain_key, str) else bytes(chain_key)
    if not key:
        raise ValueError("chain_key must not be empty; omit it for an unkeyed chain")
    return key


def resolve_keys(chain_key: KeyLike | Sequence[KeyLike] | None) -> list[bytes | None]:
    """A verifier's keyring: one key, several (a rotation), or none (unkeyed)."""
    if chain_key is None or isinstance(chain_key, (str, bytes)):
        return [resolve_key(chain_key)]
    keys: list[bytes | None] = [resolve_key(k) for k in chain_key]
    if not keys:
        raise ValueError("chain_key must name at least one key; omit it for an unkeyed chain")
    return keys


def key_id(key: bytes | None) -> str:
    """Name a chain key without revealing it: ``sha256`` (no key) or
    ``hmac-sha256:`` and 16 hex digits of an HMAC of a fixed label."""
    if key is None:
        return UNKEYED
    return "hmac-sha256:" + hmac.digest(key, b"auditaspect chain key id", "sha256").hex()[:16]


# Built once: json.dumps() with options builds a new encoder on every call.
_encode_fields = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# The string encoder JSONEncoder(ensure_ascii=False) itself uses (C when available).
_encode_string: Callable[[str], str] = json.encoder.encode_basestring


def canonical(scalars: Sequence[Any], details_text: str) -> bytes:
    """The bytes a link hashes after its prefix: the scalar fields as a JSON
    array, a newline, the canonical details text (:func:`canonical_details`)."""
    fast = events.fast_dumps
    if fast is not None:
        # Fields are text or None (the columns are text): orjson writes them
        # byte for byte as the encoder does (tests/test_integrity.py checks
        # every code point); it refuses lone surrogates, which the encoder
        # below then decides on.
        try:
            return b"%b\n%b" % (fast(scalars), details_text.encode())
        except TypeError:
            pass
    # Without orjson: join the encoder's own string encoding rather than run
    # the encoder (byte for byte the same; tests/test_integrity.py).
    try:
        fields = ",".join(["null" if v is None else _encode_string(v) for v in scalars])
    except TypeError:  # not text: the encoder says what it makes of it
        fields = _encode_fields(list(scalars))[1:-1]
    return f"[{fields}]\n{details_text}".encode()


def row_prefix(row_id: int, key: str) -> bytes:
    """What a version 3 link hashes before :func:`canonical`: the id and key id."""
    return f"{row_id}\n{key}\n".encode()


def link(prev_hash: str, payload: bytes, key: bytes | None) -> str:
    """Return the hex hash of one link: SHA-256, or HMAC-SHA-256 with a key."""
    data = prev_hash.encode("ascii") + b"\n" + payload
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.digest(key, data, "sha256").hex()


def link_row(prev_hash: str, row_id: int, key: str, body: bytes, secret: bytes | None) -> str:
    """``link(prev_hash, row_prefix(row_id, key) + body, secret)``, built in one step
    (the writer's hot path)."""
    data = b"%b\n%d\n%b\n%b" % (prev_hash.encode("ascii"), row_id, key.encode("ascii"), body)
    if secret is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.digest(secret, data, "sha256").hex()


def _number(value: float) -> float | int:
    if value == 0.0:
        return 0.0  # JSONB has no negative zero
    text = repr(value)
    # Python writes floats >= 1e16 with an exponent; JSONB gives them back as
    # the integer they spell.
    return int(Decimal(text)) if "e+" in text else value


def _normal(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return _number(value)
    if kind is dict:
        return {k: _normal(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_normal(v) for v in value]
    return value


def canonical_details(text: str) -> str:
    """The details text a link hashes, from :func:`~auditaspect.events.dumps_details`
    output: every float in the form it has after a PostgreSQL JSONB round trip.

    Only floats of 1e16 and more (which JSONB turns into the integers they
    spell) and ``-0.0`` (JSONB has no negative zero) change; the stored
    details stay as they were sent.
    """
    if "e+" not in text and "-0.0" not in text:  # nothing to change: the common case
        return text
    return dumps_details(_normal(json.loads(text)))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"details repeat the key {twice!r} (SQL and Python read different values)")
    return result


def parse_details(text: str | bytes) -> Any:
    """Parse stored details; a repeated key or nesting too deep is a ``ValueError``."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("details are nested too deeply to read") from None


def _stamp(value: Any) -> str:
    return format_timestamp(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def row_payload(values: Sequence[Any], details: Any) -> bytes:
    """The canonical bytes of a stored row after its prefix (scalars as read,
    details parsed or text): what a version 3 link hashes after :func:`row_prefix`."""
    scalars = list(values)
    scalars[1] = _stamp(scalars[1])
    parsed = parse_details(details) if isinstance(details, (str, bytes)) else details
    return canonical(scalars, canonical_details(dumps_details(parsed)))


def legacy_payload(values: Sequence[Any], details: Any) -> bytes:
    """The bytes a link written before schema version 3 hashes (no prefix,
    details as serialised then)."""
    scalars = list(values)
    scalars[1] = _stamp(scalars[1])
    parsed = parse_details(details) if isinstance(details, (str, bytes)) else details
    return canonical(scalars, dumps_details(parsed))


def _as_floats(value: Any) -> Any:
    kind = type(value)
    if kind is int and abs(value) >= 10**16:
        as_float = float(value)
        return as_float if _number(as_float) == value else value
    if kind is dict:
        return {k: _as_floats(v) for k, v in value.items()}
    if kind is list:
        return [_as_floats(v) for v in value]
    return value


def legacy_alternative(values: Sequence[Any], details: Any) -> bytes | None:
    """For a pre-version-3 row read back from JSONB: the payload as written when
    its large integers were floats (JSONB turned ``1e+16`` into an integer
    before version 3 hashed numbers in that form); ``None`` if it has none."""
    parsed = parse_details(details) if isinstance(details, (str, bytes)) else details
    changed = _as_floats(parsed)
    if changed == parsed and dumps_details(changed) == dumps_details(parsed):
        return None
    return legacy_payload(values, changed)
