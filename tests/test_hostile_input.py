"""Nothing lost, nothing misrecorded, on hostile input: real SQLite files (and PostgreSQL)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditaspect import AuditEvent, PeeweeSink, audit_context, audited, emit, signals, verify
from auditaspect.redaction import DEFAULT_MAX_DETAILS_BYTES, TRUNCATED_KEY


@audited("hostile_call")
def record(payload: Any) -> None:
    return None


def stored(path: str) -> list[dict[str, Any]]:
    """Every row, read from a separate connection as an auditor would."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_lone_surrogate_in_a_details_key_loses_nothing(tmp_path, mode):
    """A key with a lone surrogate (as json.loads gives from a request body) is stored safely,
    and it does not take its batch with it."""
    path = str(tmp_path / "audit.db")
    hostile = json.loads('{"\\ud800": 1, "a\\u0000b": 2}')
    with PeeweeSink(f"sqlite:///{path}", mode=mode, flush_interval=10) as sink:
        for i in range(600):
            record({"n": i})
            if i == 300:
                record(hostile)
        sink.flush()
    rows = stored(path)
    assert 601 == len(rows)
    assert 0 == sink.stats.lost
    assert 0 == sink.stats.spilled
    details = [json.loads(r["details"]) for r in rows]
    [odd] = [d for d in details if "n" not in d["payload"]]
    assert {"payload": {"\ufffd": 1, "a\ufffdb": 2}} == odd
    assert verify(f"sqlite:///{path}").ok


def test_one_refused_event_does_not_take_its_batch(tmp_path):
    """A batch with one event the database refuses (a duplicate event id) writes the others."""
    path = str(tmp_path / "audit.db")
    with PeeweeSink(f"sqlite:///{path}", mode="buffered", flush_interval=10) as sink:
        first = AuditEvent(event_type="dup", details={"i": 0})
        sink.write(first)
        sink.flush()
        for i in range(200):
            sink.write(AuditEvent(event_type="ok", details={"i": i}))
            if i == 100:
                sink.write(first)  # the same event id again: UNIQUE refuses it
        sink.flush()
        assert 201 == sink.stats.written
        assert 1 == sink.stats.spilled
    rows = stored(path)
    assert 201 == len(rows)  # the duplicate was replayed as "already there", not twice
    assert 0 == sink.stats.lost


def test_context_values_of_any_type_are_stored_as_text(sink, tmp_path):
    """audit_context(actor=42, ip=IPv4Address, correlation_id=UUID) records, never raises."""
    correlation = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with audit_context(
        actor=42, ip=ipaddress.ip_address("203.0.113.7"), correlation_id=correlation
    ):
        record({"k": 1})
    [row] = stored(str(tmp_path / "audit.db"))
    assert ("42", "203.0.113.7", str(correlation)) == (
        row["actor"],
        row["ip"],
        row["correlation_id"],
    )


def test_an_integer_beyond_str_limits_is_recorded(sink, tmp_path):
    """An integer of more than 4,300 digits does not raise into the caller."""
    record({"n": 10**5000})
    [row] = stored(str(tmp_path / "audit.db"))
    assert json.loads(row["details"])["payload"]["n"].startswith("<integer of ")


def test_generator_functions_are_refused_at_decoration():
    """A generator's body runs while it is iterated: @audited says so instead of lying."""
    with pytest.raises(TypeError, match="generator function"):

        @audited("gen")
        def numbers() -> Any:
            yield 1

    with pytest.raises(TypeError, match="generator function"):

        @audited("agen")
        async def anumbers() -> Any:
            yield 1


def test_a_returned_coroutine_is_audited_when_awaited(captured):
    """A plain function returning a coroutine records success only after the body ran,
    and a failure (not a success) when it raises."""
    ran: list[str] = []

    async def body(ok: bool) -> str:
        ran.append("body")
        if not ok:
            raise ValueError("no")
        return "done"

    @audited("deferred", on_error="deferred_failed")
    def start(ok: bool) -> Any:
        return body(ok)

    pending = start(True)
    assert [] == captured
    assert "done" == asyncio.run(pending)
    assert ["body"] == ran
    assert ["deferred"] == [e.event_type for e in captured]
    with pytest.raises(ValueError, match="no"):
        asyncio.run(start(False))
    assert ["deferred", "deferred_failed"] == [e.event_type for e in captured]


def _stored_size(row: dict[str, Any]) -> int:
    return len(row["details"].encode("utf-8"))


@pytest.mark.parametrize(
    "payload",
    [
        [""] * 2_000_000,
        [[]] * 500_000,
        [{}] * 500_000,
        {f"k{i}": "" for i in range(200_000)},
        ['"\\'] * 100_000,
        ["\x01é中" * 50_000],
    ],
    ids=["empty-strings", "empty-lists", "empty-dicts", "empty-values", "escapes", "multibyte"],
)
def test_stored_details_never_exceed_the_cap(sink, tmp_path, payload):
    """Empty containers, keys, escapes and multibyte text all count: the row stays within 64 KiB."""
    record(payload)
    [row] = stored(str(tmp_path / "audit.db"))
    assert _stored_size(row) <= DEFAULT_MAX_DETAILS_BYTES
    assert json.loads(row["details"])[TRUNCATED_KEY] is True


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.recursive(
        st.one_of(st.text(max_size=40), st.integers(), st.none()),
        lambda inner: st.one_of(
            st.lists(inner, max_size=30), st.dictionaries(st.text(max_size=10), inner, max_size=30)
        ),
        max_leaves=400,
    )
)
def test_capped_details_fit_under_a_small_cap(payload):
    """Whatever the structure, redacted details serialise within max_details_bytes."""
    from auditaspect import Redactor
    from auditaspect.events import dumps_details

    redactor = Redactor(max_details_bytes=512)
    assert len(dumps_details(redactor.redact({"p": payload})).encode("utf-8")) <= 512


def test_columns_are_lifted_before_the_cap(sink, tmp_path):
    """Oversized details still fill actor, plan_id, ip and correlation_id (a failed admin login
    stays findable by actor)."""
    emit(
        "auth_failure",
        actor="admin",
        plan_id="plan-7",
        ip="198.51.100.9",
        correlation_id="req-1",
        outcome="failure",
        junk="x" * 200_000,
    )
    [row] = stored(str(tmp_path / "audit.db"))
    assert ("admin", "plan-7", "198.51.100.9", "req-1") == (
        row["actor"],
        row["plan_id"],
        row["ip"],
        row["correlation_id"],
    )
    assert json.loads(row["details"])[TRUNCATED_KEY] is True


def test_columns_lifted_from_oversized_details_are_redacted(sink, tmp_path):
    """A secret in an oversized event's actor is still masked."""
    token = "ghp_" + "Z9y" * 12
    emit("auth_failure", actor=f"svc {token}", junk="x" * 200_000)
    [row] = stored(str(tmp_path / "audit.db"))
    assert token not in row["actor"]


@pytest.mark.parametrize("order", ["receiver-first", "sink-first"])
def test_a_receiver_that_mutates_details_does_not_change_the_row(tmp_path, order):
    """What the sink stores is what was sent, whichever receiver blinker calls first."""
    path = str(tmp_path / "audit.db")

    def vandal(sender: Any, *, event: AuditEvent) -> None:
        event.details["payload"]["amount"] = 999_999  # type: ignore[index]
        event.details["injected"] = True  # type: ignore[index]

    sink = PeeweeSink(f"sqlite:///{path}")
    if order == "receiver-first":
        signals.audit_event.connect(vandal)
        sink.connect()
    else:
        sink.connect()
        signals.audit_event.connect(vandal)
    try:
        record({"amount": 10})
    finally:
        sink.close()
        signals.audit_event.disconnect(vandal)
    [row] = stored(path)
    assert {"payload": {"amount": 10}} == json.loads(row["details"])
    assert verify(f"sqlite:///{path}").ok


def test_over_long_columns_are_cut_with_a_marker(sink, tmp_path):
    """An actor of 5,000 characters and an event type of 300 are cut, marked, and written."""
    from auditaspect.events import COLUMN_LIMITS, CUT_MARKER

    emit("t" * 300, actor="é" * 5000)
    [row] = stored(str(tmp_path / "audit.db"))
    assert row["actor"].endswith(CUT_MARKER)
    assert len(row["actor"].encode("utf-8")) <= COLUMN_LIMITS["actor"]
    assert row["event_type"].endswith(CUT_MARKER)
    assert len(row["event_type"].encode("utf-8")) <= COLUMN_LIMITS["event_type"]
    assert 0 == sink.stats.spilled


@pytest.mark.postgres
def test_postgres_poison_values_are_written_not_spilled(pg_url):
    """PostgreSQL: a NUL in a key, an incompressible 3 KB actor and plan id, a 300-character
    event type: every event is written, none spilled, the chain verifies."""
    import random
    import string

    rng = random.Random(3)
    noise = "".join(rng.choices(string.ascii_letters + string.digits, k=3000))
    with PeeweeSink(pg_url, mode="buffered", flush_interval=10) as sink:
        for i in range(50):
            record({"n": i})
        emit("hostile", actor=noise, plan_id=noise, details_key={"a\x00b": 1})
        emit("e" * 300)
        record(json.loads('{"\\ud800": 1}'))
        sink.flush()
        assert 53 == sink.stats.written
        assert 0 == sink.stats.spilled
    assert verify(pg_url).ok
