"""signals: the namespace, per-type signals, and a send that isolates receivers."""

from __future__ import annotations

import logging

import pytest

from auditaspect import AuditEvent, AuditWriteError, EventType, signals


def test_signal_for_is_stable_per_type():
    """The same type, as member or string, always gives the same signal."""
    assert signals.signal_for(EventType.PLAN_APPLIED) is signals.signal_for("plan_applied")
    assert "auditaspect.plan_applied" == signals.signal_for("plan_applied").name
    with pytest.raises(TypeError):
        signals.signal_for("")


def test_has_receivers_checks_both_signals():
    """has_receivers is true when either the global or the per-type signal has one."""
    assert not signals.has_receivers("invoice_sent")

    def receiver(sender, *, event):
        return None

    signals.signal_for("invoice_sent").connect(receiver)
    assert signals.has_receivers("invoice_sent")
    assert not signals.has_receivers("other_type")
    signals.audit_event.connect(receiver)
    assert signals.has_receivers("other_type")


def test_send_reaches_global_and_per_type_receivers_with_sender():
    """send delivers to both signals, with the sender and event= keyword."""
    got = []
    signals.audit_event.connect(lambda s, *, event: got.append(("all", s, event)), weak=False)
    signals.signal_for("x").connect(lambda s, *, event: got.append(("x", s, event)), weak=False)
    signals.signal_for("y").connect(lambda s, *, event: got.append(("y", s, event)), weak=False)
    event = AuditEvent(event_type="x")
    signals.send("svc", event)
    assert [("all", "svc", event), ("x", "svc", event)] == got


def test_a_raising_receiver_does_not_stop_the_others(caplog):
    """Blinker alone stops at a raising receiver; send logs it and carries on."""
    got = []

    def bad(sender, *, event):
        raise ValueError("receiver bug")

    signals.audit_event.connect(bad)
    signals.audit_event.connect(lambda s, *, event: got.append(event), weak=False)
    event = AuditEvent(event_type="x")
    with caplog.at_level(logging.ERROR, logger="auditaspect"):
        signals.send(None, event)
    assert [event] == got
    assert "receiver bug" in caplog.text
    assert event.event_id in caplog.text


def test_audit_write_error_reaches_the_caller_after_all_receivers_ran():
    """A strict sink's AuditWriteError propagates, but only after the others ran."""
    got = []

    def strict(sender, *, event):
        raise AuditWriteError("disk full")

    signals.audit_event.connect(strict)
    signals.audit_event.connect(lambda s, *, event: got.append(event), weak=False)
    signals.signal_for("x").connect(strict)
    with pytest.raises(AuditWriteError, match="disk full"):
        signals.send(None, AuditEvent(event_type="x"))
    assert 1 == len(got)


def test_receivers_connected_to_a_sender_only_get_that_senders_events():
    """Blinker's sender filtering still works through send."""
    got = []
    signals.audit_event.connect(lambda s, *, event: got.append(s), sender="a", weak=False)
    signals.send("a", AuditEvent(event_type="x"))
    signals.send("b", AuditEvent(event_type="x"))
    assert ["a"] == got
