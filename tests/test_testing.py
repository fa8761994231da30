"""auditaspect.testing: capture_events() and the audit_events pytest fixture."""

from __future__ import annotations

import pytest

from auditaspect import audited, emit, signals
from auditaspect.testing import capture_events


@audited("config_changed")
def set_value(key: str, value: str) -> None:
    return None


def test_capture_events_collects_and_disconnects():
    """Events inside the block are captured; the receiver is gone afterwards."""
    with capture_events() as events:
        set_value("color", "blue")
        emit("auth_failure", user="bob")
    assert ["config_changed", "auth_failure"] == [e.event_type for e in events]
    assert not signals.audit_event.receivers
    set_value("color", "red")
    assert 2 == len(events)


def test_helpers_filter_and_assert():
    """of_type, find, assert_emitted and assert_not_emitted, with useful messages."""
    with capture_events() as events:
        set_value("color", "blue")
        emit("config_changed", key="smtp", password="hunter2")
    assert 2 == len(events.of_type("config_changed"))
    assert [] == events.of_type("auth_success")
    assert "blue" == events.assert_emitted("config_changed", key="color").details["value"]
    assert "[REDACTED]" == events.find(key="smtp")[0].details["password"]
    events.assert_not_emitted("auth_failure")
    events.assert_not_emitted("config_changed", key="size")
    with pytest.raises(AssertionError, match="no config_changed event with details"):
        events.assert_emitted("config_changed", key="size")
    with pytest.raises(AssertionError, match="unexpected config_changed"):
        events.assert_not_emitted("config_changed", key="color")


def test_plugin_fixture_in_a_pytester_run(pytester):
    """The pytest11 plugin gives any test suite an audit_events fixture, no database needed."""
    pytester.makepyfile(
        """
        from auditaspect import audited

        @audited("plan_applied")
        def apply(plan_id):
            return plan_id

        def test_captured(audit_events):
            apply("p-1")
            audit_events.assert_emitted("plan_applied", plan_id="p-1")

        def test_isolated(audit_events):
            assert [] == list(audit_events)

        def test_failing(audit_events):
            audit_events.assert_emitted("plan_applied")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*no plan_applied event with details {}; captured: no events*"])
