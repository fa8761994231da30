"""Exceptions that auditaspect raises to its callers.

Kept apart so every stage of the pipeline (decorator, signals, sink, model) can
raise or recognise them without importing a later stage.
"""

from __future__ import annotations

__all__ = ["AppendOnlyError", "AuditError", "AuditWriteError", "first_line"]


class AuditError(Exception):
    """Base class of every exception auditaspect raises on purpose."""


class AuditWriteError(AuditError):
    """An audit event could not be written, and the sink was told to be strict.

    Raised by a ``PeeweeSink(strict=True)`` into the audited call, after the
    domain method itself has returned: the caller learns that its change was
    not audited. Signals let this one exception through (every other receiver
    error is logged and swallowed), so a strict sink is never silenced by the
    receiver isolation.
    """


class AppendOnlyError(AuditError):
    """Someone tried to write an audit row other than through a sink.

    The audit log is append-only and chained: ``AuditRecord`` refuses every
    write (``create()``, ``save()``, ``insert*()``, ``replace()``,
    ``update()``, ``delete()``, ``delete_instance()``), and the table's
    triggers refuse updates, deletes and any insert that is not the chain's
    next row at the database.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name if it has none),
    for one-line reports."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
