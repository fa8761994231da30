"""Asserting on audit events in your own tests, without a database.

In pytest, the ``audit_events`` fixture (registered through the ``pytest11``
entry point, so installing auditaspect is enough) captures every event sent
during the test::

    def test_refund_is_audited(audit_events):
        billing.refund("inv-1")
        audit_events.assert_emitted("config_changed", key="refund", invoice="inv-1")
        audit_events.assert_not_emitted("auth_failure")

Outside pytest, :func:`capture_events` does the same as a context manager.
Captured events are the redacted events receivers get: what a sink would store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .events import AuditEvent, event_type_value
from .signals import audit_event

__all__ = ["CapturedEvents", "audit_events", "capture_events"]


def _matches(event: AuditEvent, event_type: str | None, details: Mapping[str, Any]) -> bool:
    if event_type is not None and event.event_type != event_type_value(event_type):
        return False
    return all(
        key in event.details and event.details[key] == value for key, value in details.items()
    )


class CapturedEvents(list[AuditEvent]):
    """The events sent while capturing, in order, with assertion helpers."""

    def __call__(self, sender: Any, *, event: AuditEvent) -> None:
        self.append(event)

    def of_type(self, event_type: str) -> list[AuditEvent]:
        """The captured events of one type."""
        name = event_type_value(event_type)
        return [e for e in self if e.event_type == name]

    def find(self, event_type: str | None = None, **details: Any) -> list[AuditEvent]:
        """Events of ``event_type`` (any if ``None``) whose details contain ``details``."""
        return [e for e in self if _matches(e, event_type, details)]

    def assert_emitted(self, event_type: str, /, **details: Any) -> AuditEvent:
        """Assert that an event of this type with these detail values was sent; return it.

        The assertion message lists what was captured instead.
        """
        found = self.find(event_type, **details)
        if not found:
            seen = [(e.event_type, dict(e.details)) for e in self] or "no events"
            raise AssertionError(
                f"no {event_type_value(event_type)} event with details {details}; captured: {seen}"
            )
        return found[0]

    def assert_not_emitted(self, event_type: str, /, **details: Any) -> None:
        """Assert that no event of this type (with these detail values) was sent."""
        found = self.find(event_type, **details)
        if found:
            raise AssertionError(
                f"unexpected {event_type_value(event_type)} event(s): "
                f"{[dict(e.details) for e in found]}"
            )


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Capture every audit event sent inside the block (no database needed)."""
    captured = CapturedEvents()
    audit_event.connect(captured, weak=False)
    try:
        yield captured
    finally:
        audit_event.disconnect(captured)


try:
    import pytest
except ImportError:  # pragma: no cover - the module works without pytest
    pass
else:

    @pytest.fixture
    def audit_events() -> Iterator[CapturedEvents]:
        """Every audit event sent during the test, as :class:`CapturedEvents`."""
        with capture_events() as captured:
            yield captured
