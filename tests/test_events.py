"""AuditEvent, EventType and Call."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from auditaspect import AuditEvent, Call, EventType
from auditaspect.events import event_type_value

NINE = [
    "plan_applied",
    "plan_cancelled",
    "resource_modified",
    "correction_applied",
    "config_changed",
    "entity_deleted",
    "session_created",
    "auth_success",
    "auth_failure",
]


def test_event_type_has_the_nine_lower_case_values():
    """EventType members are the nine security events, valued by lower-case name."""
    assert NINE == [member.value for member in EventType]
    assert all(member.value == member.name.lower() for member in EventType)
    assert EventType.PLAN_APPLIED == "plan_applied"


@pytest.mark.parametrize("bad", ["", "   ", None, 3, b"plan_applied"])
def test_event_type_value_rejects_bad_types(bad):
    """Empty strings and non-strings are a TypeError."""
    with pytest.raises(TypeError, match="event_type"):
        event_type_value(bad)


def test_event_type_value_accepts_custom_strings_and_members():
    """Members give their value; any other non-empty string is kept as is."""
    assert "config_changed" == event_type_value(EventType.CONFIG_CHANGED)
    assert "invoice_sent" == event_type_value("invoice_sent")


def test_event_defaults():
    """A hand-built event gets a unique id, an aware UTC timestamp and success."""
    first = AuditEvent(event_type=EventType.AUTH_SUCCESS)
    second = AuditEvent(event_type="auth_success")
    assert first.event_id != second.event_id
    assert "auth_success" == first.event_type
    assert type(first.event_type) is str
    assert timezone.utc == first.timestamp.tzinfo
    assert "success" == first.outcome
    assert first.error is None
    assert {} == first.details


def test_event_timestamp_is_normalised_to_utc():
    """An aware timestamp in another zone is stored as UTC; a naive one is refused."""
    local = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = AuditEvent(event_type="x", timestamp=local)
    assert datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc) == event.timestamp
    with pytest.raises(ValueError, match="timezone-aware"):
        AuditEvent(event_type="x", timestamp=datetime(2026, 1, 1))


def test_event_outcome_is_validated():
    """Only 'success' and 'failure' are outcomes."""
    assert "failure" == AuditEvent(event_type="x", outcome="failure").outcome
    with pytest.raises(ValueError, match="outcome"):
        AuditEvent(event_type="x", outcome="maybe")  # type: ignore[arg-type]


def test_event_is_frozen():
    """A receiver cannot change what the next receiver sees."""
    event = AuditEvent(event_type="x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.actor = "mallory"  # type: ignore[misc]


def test_event_to_dict():
    """to_dict gives plain values with an ISO timestamp."""
    event = AuditEvent(event_type="x", actor="alice", details={"a": 1})
    data = event.to_dict()
    assert event.timestamp.isoformat() == data["timestamp"]
    assert {"a": 1} == data["details"]
    assert "alice" == data["actor"]
    assert set(data) == {f.name for f in attrs.fields(AuditEvent) if f.init}


def test_call_defaults():
    """A Call without result or error has both None."""
    call = Call(target="m.f", arguments={"a": 1})
    assert call.result is None
    assert call.error is None
    assert call.instance is None
