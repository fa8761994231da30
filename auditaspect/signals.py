"""The blinker signals that carry audit events, and a send that isolates receivers.

Two signals carry every event: :data:`audit_event` (all types) and the
per-type signal from :func:`signal_for`. Both live in the ``auditaspect``
blinker namespace and are sent with the acting object as sender (the service
instance or class, or the function) and ``event=<AuditEvent>``.

Connect receivers with plain blinker::

    signals.audit_event.connect(receiver)
    signals.signal_for("config_changed").connect(receiver)

Blinker holds receivers weakly by default: a bound method or a lambda whose
owner goes away is silently disconnected. Pass ``weak=False`` for receivers
that must outlive their owner (sinks do).
"""

from __future__ import annotations

import logging
from typing import Any

import blinker

from .errors import AuditWriteError
from .events import AuditEvent, event_type_value

__all__ = ["audit_event", "has_receivers", "namespace", "send", "signal_for"]

logger = logging.getLogger("auditaspect")

namespace = blinker.Namespace()

audit_event: blinker.NamedSignal = namespace.signal(
    "audit_event", doc="Sent for every audit event, with event=<AuditEvent>."
)

_per_type: dict[str, blinker.NamedSignal] = {}


def signal_for(event_type: str) -> blinker.NamedSignal:
    """Return the signal sent for events of one type (``"auditaspect.<type>"``).

    Accepts an :class:`~auditaspect.EventType` or any non-empty string; the
    same type always gives the same signal object. A bad type is a
    ``TypeError``.
    """
    name = event_type_value(event_type)
    sig = _per_type.get(name)
    if sig is None:
        sig = _per_type.setdefault(name, namespace.signal(f"auditaspect.{name}"))
    return sig


def has_receivers(event_type: str) -> bool:
    """Tell whether any receiver would get an event of this type.

    A couple of attribute reads: the decorator calls it on every call to
    skip building events nobody listens to.
    """
    if audit_event.receivers:
        return True
    sig = _per_type.get(event_type)
    return sig is not None and bool(sig.receivers)


def send(sender: Any, event: AuditEvent) -> None:
    """Deliver ``event`` to every receiver of both signals; isolate failures.

    Blinker itself stops at the first receiver that raises and propagates the
    error into the caller. Here each receiver runs on its own: an exception is
    logged on the ``auditaspect`` logger and the remaining receivers still run.
    The one exception is :class:`~auditaspect.AuditWriteError` (a strict sink
    refusing to let an unaudited change pass): it is raised to the caller once
    every receiver has had the event.
    """
    strict_error: AuditWriteError | None = None
    for sig in (audit_event, _per_type.get(event.event_type)):
        if sig is None or not sig.receivers:
            continue
        for receiver in sig.receivers_for(sender):
            try:
                receiver(sender, event=event)
            except AuditWriteError as exc:
                if strict_error is None:
                    strict_error = exc
            except Exception:
                logger.exception(
                    "audit receiver %r failed for %s event %s; other receivers still ran",
                    receiver,
                    event.event_type,
                    event.event_id,
                )
    if strict_error is not None:
        raise strict_error
