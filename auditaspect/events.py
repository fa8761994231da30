"""The audit event and what extractors receive.

An :class:`AuditEvent` is the one value that flows through the whole pipeline:
the decorator builds it, signals carry it, sinks store it. It is frozen, so a
receiver cannot change what the next receiver (or the database) sees.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

import attrs

__all__ = [
    "COLUMN_LIMITS",
    "FAILURE",
    "SUCCESS",
    "AuditEvent",
    "Call",
    "EventType",
    "Outcome",
    "dumps_details",
    "event_type_value",
    "fit_column",
    "new_id",
    "use_ordered_ids",
]

# The most UTF-8 bytes each text column stores. Indexed columns stay well
# under PostgreSQL's btree entry limit (about 2,700 bytes), event_type within
# its VARCHAR(128): a longer value is cut, with CUT_MARKER at the end, before
# it is hashed and written, so no value can make the database refuse a row.
COLUMN_LIMITS: dict[str, int] = {
    "event_type": 128,
    "actor": 1024,
    "plan_id": 1024,
    "ip": 256,
    "correlation_id": 1024,
    "target": 1024,
    "error": 16384,
}
CUT_MARKER = "…[cut]"
_MARKER_BYTES = len(CUT_MARKER.encode("utf-8"))


def fit_column(value: str, limit: int) -> str:
    """Return ``value``, or its start and :data:`CUT_MARKER` within ``limit`` UTF-8 bytes."""
    if len(value) * 4 <= limit:  # fits whatever its characters
        return value
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return value
    return data[: limit - _MARKER_BYTES].decode("utf-8", "ignore") + CUT_MARKER


# Built once: json.dumps() with options builds a new encoder on every call.
_DETAILS_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
)


try:  # auditaspect[fast]
    import orjson as _orjson
except ImportError:  # pragma: no cover - the suite installs it; see test_events.py
    _orjson = None  # type: ignore[assignment]

# None without orjson (tests set it to None to run the standard library's path).
fast_dumps: Callable[..., bytes] | None = None if _orjson is None else _orjson.dumps
_SORTED = 0 if _orjson is None else _orjson.OPT_SORT_KEYS


def dumps_details(details: Any, *, float_free: bool = False) -> str:
    """Serialise details canonically: sorted keys, compact, UTF-8, no NaN.

    The same text is stored (on SQLite) and hashed into the chain, so it must
    never change for the same details. ``float_free=True`` says the details
    are the redaction walk's output without a float: then orjson (installed
    with ``auditaspect[fast]``) writes them, byte for byte what the standard
    library writes for such values (strings, 64-bit integers, booleans,
    ``None``, lists, dicts with text keys; tests/test_events.py), only
    faster. Floats always take the standard library, whose shortest-repr
    spelling (``1e-05``) orjson does not share; anything orjson refuses too.
    """
    if float_free and fast_dumps is not None:
        try:
            return fast_dumps(details, option=_SORTED).decode()
        except TypeError:  # orjson.JSONEncodeError: not for orjson, the encoder decides
            pass
    return _DETAILS_ENCODER.encode(details)


Outcome = Literal["success", "failure"]
SUCCESS: Outcome = "success"
FAILURE: Outcome = "failure"


class EventType(str, enum.Enum):
    """The nine security-relevant event types auditaspect knows by name.

    Any other non-empty string is accepted wherever an event type is, for an
    application's own types. Use ``.value`` (not ``f"{member}"``, which gives
    ``"EventType.PLAN_APPLIED"`` on Python 3.11+) when a plain string is needed.
    """

    PLAN_APPLIED = "plan_applied"
    PLAN_CANCELLED = "plan_cancelled"
    RESOURCE_MODIFIED = "resource_modified"
    CORRECTION_APPLIED = "correction_applied"
    CONFIG_CHANGED = "config_changed"
    ENTITY_DELETED = "entity_deleted"
    SESSION_CREATED = "session_created"
    AUTH_SUCCESS = "auth_success"
    AUTH_FAILURE = "auth_failure"


def event_type_value(event_type: object) -> str:
    """Return the plain string of an event type, or raise ``TypeError``.

    Accepts an :class:`EventType` member or any non-empty ``str``. Called at
    decoration time so that a typo'd or missing type fails on import, not on
    the first audited call.
    """
    if isinstance(event_type, EventType):
        return event_type.value
    if not isinstance(event_type, str):
        raise TypeError(
            f"event_type must be an EventType or a non-empty str, not {type(event_type).__name__}"
        )
    if not event_type.strip():
        raise TypeError("event_type must be a non-empty string, e.g. EventType.PLAN_APPLIED")
    return event_type


# Event ids are 128 random bits from the OS, in hex. One urandom call serves
# 4,096 ids: a syscall per event costs more than the rest of the event, and
# urandom gives up the GIL. Every give-back restarts the wait of a thread that
# asked for the GIL (CPython forces a switch only after a whole switch
# interval, 5 ms, without one), so a caller giving it back every 2 ms, as 256
# ids a batch did, starved a writer thread for hundreds of milliseconds. The
# pool is emptied in a forked child so parent and child never share ids.
_ID_BATCH = 4096
_id_pool: list[str] = []


_ordered_ids = False


def _random_id() -> str:
    try:
        return _id_pool.pop()
    except IndexError:
        raw = os.urandom(16 * _ID_BATCH).hex()
        _id_pool.extend(raw[i : i + 32] for i in range(0, len(raw), 32))
        return _id_pool.pop()


def _new_event_id() -> str:
    if _ordered_ids:
        # 48 bits of Unix milliseconds, then 80 random bits: still 32 hex digits.
        return f"{time.time_ns() // 1_000_000:012x}{_random_id()[:20]}"
    return _random_id()


def use_ordered_ids(enabled: bool = True) -> None:
    """Make new event ids time-ordered (or random again with ``enabled=False``).

    By default an event id is 128 random bits. An ordered id is 12 hex digits
    of the Unix time in milliseconds followed by 80 random bits (the same 32
    hex digits): ids made later sort later, so the unique index on
    ``event_id`` grows at its end instead of everywhere, which keeps inserts
    into a large log cheaper (docs/performance.md). The id then tells when the
    event was made, which the row's timestamp says anyway. Applies to events
    made from now on, in this process.
    """
    global _ordered_ids
    _ordered_ids = bool(enabled)


def new_id() -> str:
    """A new random 128-bit id in hex (correlation ids, and event ids by default)."""
    return _random_id()


if hasattr(os, "register_at_fork"):  # pragma: no branch - not on Windows
    os.register_at_fork(after_in_child=_id_pool.clear)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is timezone.utc:
        return value
    if value.tzinfo is None:
        raise ValueError(
            "AuditEvent.timestamp must be timezone-aware (use datetime.now(timezone.utc))"
        )
    return value.astimezone(timezone.utc)


def _outcome(_: object, __: attrs.Attribute[str], value: str) -> None:
    if value not in (SUCCESS, FAILURE):
        raise ValueError(f"outcome must be 'success' or 'failure', not {value!r}")


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One audited fact: who did what, when, from where, with what outcome.

    Every field has a safe default except ``event_type``, so an event can be
    built by hand (``AuditEvent(event_type="config_changed", details={...})``).
    ``event_type`` is normalised to its plain string, ``timestamp`` to UTC (a
    naive datetime is a ``ValueError``). Events built by the decorator or by
    :func:`auditaspect.emit` are already redacted; sinks redact every event
    again, so a hand-built one is safe too.
    """

    event_type: str = attrs.field(converter=event_type_value)
    event_id: str = attrs.field(factory=_new_event_id)
    timestamp: datetime = attrs.field(factory=_utc_now, converter=_utc)
    outcome: Outcome = attrs.field(default=SUCCESS, validator=_outcome)
    actor: str | None = None
    plan_id: str | None = None
    ip: str | None = None
    correlation_id: str | None = None
    target: str = ""
    details: Mapping[str, Any] = attrs.field(factory=dict)
    error: str | None = None
    # Set by the pipeline to the Redactor that already redacted this event, so
    # a sink using the same one need not redo it. Not an __init__ argument: a
    # hand-built or evolve()d event is always redacted again.
    _redacted_by: object = attrs.field(default=None, init=False, eq=False, repr=False)
    # The details as serialised when the pipeline sent the event: what a sink
    # stores, whatever a receiver later does to the ``details`` dict.
    _details_json: str | None = attrs.field(default=None, init=False, eq=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the event as plain JSON-ready values (timestamp in ISO 8601)."""
        data = attrs.asdict(self, recurse=False, filter=lambda field, _: field.init)
        data["timestamp"] = self.timestamp.isoformat()
        data["details"] = dict(self.details)
        return data


@attrs.frozen(kw_only=True)
class Call:
    """What an extractor receives about one audited call.

    ``arguments`` maps every parameter name to its value, defaults applied and
    ``self``/``cls`` left out, however the caller passed them. ``result`` is the
    return value on success (``None`` on failure); ``error`` is the exception on
    failure (``None`` on success). ``target`` is the wrapped callable's
    ``module.qualname``; ``instance`` is the bound object or class, if any.
    """

    target: str
    arguments: Mapping[str, Any]
    instance: Any = None
    result: Any = None
    error: BaseException | None = None


_new_object = object.__new__
# AuditEvent is slotted (attrs.frozen): each slot's own descriptor stores a
# field directly, a third cheaper than object.__setattr__, which must find
# that descriptor first.
(
    _set_event_type,
    _set_event_id,
    _set_timestamp,
    _set_outcome,
    _set_actor,
    _set_plan_id,
    _set_ip,
    _set_correlation_id,
    _set_target,
    _set_details,
    _set_error,
    _set_redacted_by,
    _set_details_json,
) = (
    AuditEvent.__dict__[name].__set__
    for name in (
        "event_type",
        "event_id",
        "timestamp",
        "outcome",
        "actor",
        "plan_id",
        "ip",
        "correlation_id",
        "target",
        "details",
        "error",
        "_redacted_by",
        "_details_json",
    )
)


def trusted_event(
    event_type: str,
    outcome: Outcome,
    actor: str | None,
    plan_id: str | None,
    ip: str | None,
    correlation_id: str | None,
    target: str,
    details: Mapping[str, Any],
    error: str | None,
    redacted_by: object,
    details_json: str,
) -> AuditEvent:
    """An event from values the pipeline has already checked, without ``__init__``.

    For :func:`auditaspect.decorator.build_event` only: ``event_type`` is a
    plain string, ``outcome`` one of the two outcomes, every text redacted and
    fitted. It gets a new id and the current UTC time, as ``__init__`` would.
    Saves the converters and validators on every audited call.
    """
    event: AuditEvent = _new_object(AuditEvent)
    _set_event_type(event, event_type)
    _set_event_id(event, _new_event_id())
    _set_timestamp(event, datetime.now(timezone.utc))
    _set_outcome(event, outcome)
    _set_actor(event, actor)
    _set_plan_id(event, plan_id)
    _set_ip(event, ip)
    _set_correlation_id(event, correlation_id)
    _set_target(event, target)
    _set_details(event, details)
    _set_error(event, error)
    _set_redacted_by(event, redacted_by)
    _set_details_json(event, details_json)
    return event
