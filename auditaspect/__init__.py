"""auditaspect: security audit trails as an aspect.

Decorate service methods with :func:`audited`; events travel on blinker
signals (:mod:`auditaspect.signals`); a :class:`PeeweeSink` redacts them and
appends them to the ``audit_log`` table (:class:`AuditRecord`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import signals
from .checkpoints import Checkpoint, checkpoint
from .context import AuditContext, audit_context, current_context
from .decorator import audited, emit
from .errors import AppendOnlyError, AuditError, AuditWriteError
from .events import AuditEvent, Call, EventType, use_ordered_ids
from .instrument import instrument, instrument_from_toml, uninstrument
from .logship import LogShipper, ship_to_logging
from .model import AuditRecord
from .reader import AuditLog, open_log
from .redaction import Redactor, get_redactor, set_redactor, token_prefix
from .sink import PeeweeSink, SinkStats
from .verification import Break, VerifyReport, verify

try:
    __version__ = version("auditaspect")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AppendOnlyError",
    "AuditContext",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "AuditWriteError",
    "Break",
    "Call",
    "Checkpoint",
    "EventType",
    "LogShipper",
    "PeeweeSink",
    "Redactor",
    "SinkStats",
    "VerifyReport",
    "__version__",
    "audit_context",
    "audited",
    "checkpoint",
    "current_context",
    "emit",
    "get_redactor",
    "instrument",
    "instrument_from_toml",
    "open_log",
    "set_redactor",
    "ship_to_logging",
    "signals",
    "token_prefix",
    "uninstrument",
    "use_ordered_ids",
    "verify",
]
