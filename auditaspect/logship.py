"""Shipping events to ``logging``: one JSON line per event, for SIEM pipelines.

    shipper = ship_to_logging("auditaspect.events")   # connects and returns it
    ...
    shipper.close()

Each event is logged at INFO (configurable) as a single JSON object with the
event's fields, redacted like the database (events built by hand are redacted
here again), ready for a log forwarder that tails files or a JSON handler.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .events import AuditEvent
from .redaction import Redactor, get_redactor
from .signals import audit_event

__all__ = ["LogShipper", "ship_to_logging"]


class LogShipper:
    """A receiver that logs every audit event as one JSON line."""

    def __init__(
        self,
        logger: logging.Logger | str = "auditaspect.events",
        *,
        level: int = logging.INFO,
        redactor: Redactor | None = None,
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self._redactor = redactor

    def __call__(self, sender: Any, *, event: AuditEvent) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        redactor = self._redactor or get_redactor()
        data = event.to_dict()
        if event._redacted_by is not redactor:
            data["details"] = redactor.redact(event.details)
            for key in ("actor", "plan_id", "ip", "correlation_id", "target", "error"):
                if data[key] is not None:
                    data[key] = redactor.redact_text(data[key])
        self.logger.log(
            self.level, json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        )

    def connect(self) -> LogShipper:
        """Start shipping (a strong reference: the shipper cannot vanish unnoticed)."""
        audit_event.connect(self, weak=False)
        return self

    def close(self) -> None:
        """Stop shipping. Safe to call twice."""
        audit_event.disconnect(self)


def ship_to_logging(
    logger: logging.Logger | str = "auditaspect.events", *, level: int = logging.INFO
) -> LogShipper:
    """Connect and return a :class:`LogShipper` for ``logger``."""
    return LogShipper(logger, level=level).connect()
