"""AuditEvent, EventType and Call."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
)
_DETAILS = st.dictionaries(
    st.text(),
    st.recursive(
        _JSON_LEAVES,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ),
    max_size=6,
)


@given(_DETAILS)
def test_fast_details_text_is_the_standard_librarys(details):
    """Details the redaction walk calls float-free serialise to the very same text
    with orjson as with the standard library (the chain hashes that text)."""
    from auditaspect import Redactor, events

    clean, float_free = Redactor().redact_checked(details)
    standard = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode(clean)
    assert standard == events.dumps_details(clean, float_free=float_free)
    if float_free:
        assert events.fast_dumps is not None  # the suite installs auditaspect[fast]
        assert standard == events.fast_dumps(clean, option=events._SORTED).decode()


def test_details_with_floats_keep_the_standard_spelling(monkeypatch):
    """A float anywhere makes the walk say so: Python's spelling, which orjson does not share."""
    from auditaspect import Redactor, events

    clean, float_free = Redactor().redact_checked({"a": [{"b": 1e-05}], "c": 2})
    assert float_free is False
    assert '{"a":[{"b":1e-05}],"c":2}' == events.dumps_details(clean, float_free=float_free)
    monkeypatch.setattr(events, "fast_dumps", None)  # without auditaspect[fast]
    assert '{"c":"é"}' == events.dumps_details({"c": "é"}, float_free=True)


def test_what_orjson_refuses_goes_to_the_standard_library():
    """A value orjson cannot write is written by the standard library instead."""
    from auditaspect import events

    deep: list[object] = []
    for _ in range(300):  # deeper than orjson's recursion limit
        deep = [deep]
    assert json.dumps(deep, separators=(",", ":")) == events.dumps_details(deep, float_free=True)


def test_event_ids_take_one_urandom_call_per_4096(monkeypatch):
    """Ids come from the OS in batches of 4,096: urandom gives up the GIL, and a
    caller that gives it back every few milliseconds starves a writer thread
    waiting for it (CPython forces a switch only after 5 ms without one)."""
    from auditaspect import events

    calls = []
    real = os.urandom

    def counting(size):
        calls.append(size)
        return real(size)

    monkeypatch.setattr(events.os, "urandom", counting)
    monkeypatch.setattr(events, "_id_pool", [])
    ids = {AuditEvent(event_type="x").event_id for _ in range(10_000)}
    assert 10_000 == len(ids)
    assert [16 * 4096] * 3 == calls


def test_ordered_ids_sort_by_time_and_stay_unique():
    """use_ordered_ids(): 32 hex digits, the milliseconds first; random again when turned off."""
    import string
    import time

    from auditaspect import emit, use_ordered_ids

    use_ordered_ids()
    try:
        first = [AuditEvent(event_type="x").event_id for _ in range(1000)]
        time.sleep(0.003)
        later = emit("x").event_id  # the pipeline's events too
    finally:
        use_ordered_ids(False)
    assert all(len(i) == 32 and set(i) <= set(string.hexdigits.lower()) for i in first)
    assert len(set(first)) == 1000
    assert later > max(first)
    now_ms = time.time_ns() // 1_000_000
    assert abs(int(later[:12], 16) - now_ms) < 10_000
    random_ids = [AuditEvent(event_type="x").event_id for _ in range(50)]
    assert len({i[:12] for i in random_ids}) > 1  # not one millisecond prefix: random


def test_pipeline_events_are_the_events_init_would_make():
    """build_event skips AuditEvent.__init__ (its values are checked already):
    every field is set, and the event equals one built through __init__."""
    from auditaspect.decorator import build_event
    from auditaspect.redaction import get_redactor

    event = build_event("plan_applied", {"actor": "alice", "n": 1}, target="svc.apply")
    fields = {f.alias: getattr(event, f.name) for f in attrs.fields(AuditEvent) if f.init}
    assert AuditEvent(**fields) == event
    assert ("plan_applied", "success", "alice", "svc.apply") == (
        event.event_type,
        event.outcome,
        event.actor,
        event.target,
    )
    assert event.timestamp.tzinfo is timezone.utc
    assert len(event.event_id) == 32
    assert event._redacted_by is get_redactor()
    assert '{"actor":"alice","n":1}' == event._details_json
    assert attrs.evolve(event, actor="bob").actor == "bob"
