"""Exceptions that auditaspect raises to its callers.

Kept apart so every stage of the pipeline (decorator, signals, sink, model) can
raise or recognise them without importing a later stage.
"""

from __future__ import annotations

__all__ = ["AppendOnlyError", "AuditError", "AuditWriteError"]


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
    """Someone tried to update or delete an audit row.

    The audit log is append-only: ``AuditRecord`` refuses ``save()`` of an
    existing row, ``update()``, ``delete()``, ``delete_instance()`` and
    ``replace()``, and the table's triggers refuse the same at the database.
    """
