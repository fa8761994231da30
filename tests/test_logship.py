"""LogShipper: one redacted JSON line per event on a standard logger."""

from __future__ import annotations

import json
import logging

from auditaspect import AuditEvent, LogShipper, audited, emit, ship_to_logging, signals


@audited("config_changed")
def set_value(key: str, value: str) -> None:
    return None


def test_every_event_becomes_one_json_line(caplog):
    """Each event is logged as a single JSON object with its fields."""
    shipper = ship_to_logging("audit.siem")
    with caplog.at_level(logging.INFO, logger="audit.siem"):
        emit("config_changed", key="smtp", password="hunter2")
        emit("auth_failure", user="bob")
    shipper.close()
    shipper.close()
    records = [r for r in caplog.records if r.name == "audit.siem"]
    lines = [json.loads(r.getMessage()) for r in records]
    assert ["config_changed", "auth_failure"] == [line["event_type"] for line in lines]
    assert {"key": "smtp", "password": "[REDACTED]"} == lines[0]["details"]
    assert "hunter2" not in caplog.text
    assert not signals.audit_event.receivers


def test_hand_built_events_are_redacted_before_shipping(caplog):
    """An event built by hand and sent on the signal is redacted by the shipper."""
    shipper = LogShipper(logging.getLogger("audit.raw"), level=logging.WARNING).connect()
    with caplog.at_level(logging.WARNING, logger="audit.raw"):
        signals.send(
            None,
            AuditEvent(event_type="x", details={"token": "t0ken"}, error="password=hunter2"),
        )
    shipper.close()
    assert "t0ken" not in caplog.text
    assert "hunter2" not in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


def test_disabled_logger_costs_nothing(caplog):
    """With the level disabled nothing is serialised or logged."""
    shipper = ship_to_logging("audit.quiet", level=logging.DEBUG)
    logging.getLogger("audit.quiet").setLevel(logging.INFO)
    set_value("a", "b")
    shipper.close()
    assert [] == [r for r in caplog.records if r.name == "audit.quiet"]
