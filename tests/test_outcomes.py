"""Outcomes from results (failed=), skip rules (when=) and lazy context values.

The cases of issue 14: a login that returns an error page instead of raising
must be recorded as a failure, reads must be skippable, and an actor that
authentication sets after the request started must still be seen.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from auditaspect import audit_context, audited, current_context
from auditaspect.decorator import Recorder
from auditaspect.events import Call
from auditaspect.testing import capture_events


class Page:
    """What a login view returns: a page with a status, never an exception."""

    def __init__(self, status: int, error: str | None = None) -> None:
        self.status = status
        self.error = error


def _login_failed(call):
    page = call.result
    return page.error or False


@audited(
    "auth_success",
    lambda call: {"user": call.arguments["user"], "password": call.arguments["password"]},
    on_error="auth_failure",
    failed=_login_failed,
)
def login(user: str, password: str) -> Page:
    if password != "right-horse-battery":
        return Page(200, error="bad credentials")
    return Page(302)


def test_a_returned_failure_is_recorded_as_a_failure():
    """A login view returning an error page is auth_failure/failure, with the reason."""
    with capture_events() as events:
        login("alice", "right-horse-battery")
        login("mallory", "guess")
    ok, bad = events
    assert ("auth_success", "success", None) == (ok.event_type, ok.outcome, ok.error)
    assert ("auth_failure", "failure", "bad credentials") == (
        bad.event_type,
        bad.outcome,
        bad.error,
    )
    assert "guess" not in repr(bad.details)
    assert "right-horse" not in repr(ok.details)


def test_failed_without_on_error_keeps_the_type_and_true_gives_no_reason():
    """failed=True with no on_error: same event type, outcome failure, no error text."""

    @audited("config_changed", failed=lambda call: call.result is False)
    def save(value: str) -> bool:
        return value != "reject"

    with capture_events() as events:
        save("ok")
        save("reject")
    assert [("config_changed", "success", None), ("config_changed", "failure", None)] == [
        (e.event_type, e.outcome, e.error) for e in events
    ]


def test_when_skips_calls_and_applies_to_failures_too():
    """when=False records nothing, for calls that returned and calls that raised."""

    @audited(
        "plan_applied",
        on_error="plan_cancelled",
        when=lambda call: not call.arguments["dry_run"],
    )
    def apply(plan: str, dry_run: bool = False) -> str:
        if plan == "bad":
            raise ValueError("no such plan")
        return plan

    with capture_events() as events:
        apply("p1", dry_run=True)
        apply("p2")
        with pytest.raises(ValueError, match="no such plan"):
            apply("bad", dry_run=True)
        with pytest.raises(ValueError, match="no such plan"):
            apply("bad")
    assert [("plan_applied", "p2"), ("plan_cancelled", "bad")] == [
        (e.event_type, e.details["plan"]) for e in events
    ]


def test_when_sees_the_result():
    """when= runs after the call, so it can look at what the call returned."""

    @audited("resource_modified", when=lambda call: call.result is not None)
    def modify(resource: str) -> str | None:
        return None if resource == "unchanged" else resource

    with capture_events() as events:
        modify("unchanged")
        modify("r1")
    assert ["r1"] == [e.details["resource"] for e in events]


def test_broken_rules_never_lose_or_whitewash_an_event(caplog):
    """A when= that raises records the call; a failed= that raises records a failure."""

    def broken(call):
        raise RuntimeError("rule bug")

    @audited("auth_success", on_error="auth_failure", when=broken, failed=broken)
    def sign_in(user: str) -> str:
        return user

    with caplog.at_level(logging.ERROR, "auditaspect"), capture_events() as events:
        assert "bob" == sign_in("bob")
    [event] = events
    assert ("auth_failure", "failure") == (event.event_type, event.outcome)
    assert "could not tell whether the call failed: RuntimeError: rule bug" == event.error
    assert 2 == len([r for r in caplog.records if "rule" in str(r.exc_info[1])])


def test_async_functions_get_the_same_rules():
    """failed= and when= work on async def functions."""

    @audited("auth_success", on_error="auth_failure", failed=lambda c: c.result == "denied")
    async def check(user: str) -> str:
        await asyncio.sleep(0)
        return "denied" if user == "eve" else "ok"

    with capture_events() as events:
        asyncio.run(check("ann"))
        asyncio.run(check("eve"))
    assert ["auth_success", "auth_failure"] == [e.event_type for e in events]


def test_only_the_failure_signal_listening_still_records_the_failure():
    """With receivers on auth_failure only, a returned failure is recorded, a success not."""
    from auditaspect import signals

    got = []

    def receiver(sender, event):
        got.append(event)

    signals.signal_for("auth_failure").connect(receiver)
    try:
        login("alice", "right-horse-battery")
        login("mallory", "guess")
    finally:
        signals.signal_for("auth_failure").disconnect(receiver)
    assert [("auth_failure", "mallory")] == [(e.event_type, e.details["user"]) for e in got]


@pytest.mark.parametrize("option", ["when", "failed", "extractor"])
def test_rules_must_be_callable(option):
    """A non-callable rule is a TypeError at decoration, naming the option."""
    with pytest.raises(TypeError, match=f"{option} must be callable"):
        audited("config_changed", **{option: "yes"})


def test_recorder_builds_events_for_integrations():
    """Recorder.record() is what the web integrations call with their own Call."""
    recorder = Recorder(
        "flask:auth.login", "auth_success", on_error="auth_failure", failed=lambda c: c.result
    )
    with capture_events() as events:
        ok = recorder.record(None, Call(target="flask:auth.login", arguments={}, result=0))
        bad = recorder.record(None, Call(target="flask:auth.login", arguments={}, result=1))
    assert [ok, bad] == list(events)
    assert ["success", "failure"] == [e.outcome for e in events]
    assert recorder.record(None, Call(target="x", arguments={})) is None  # nobody listening


# -- lazy context values -------------------------------------------------------------


@audited("config_changed")
def change(key: str) -> str:
    return key


def test_lazy_actor_is_read_when_the_event_is_built():
    """An actor callable sees what authentication set after the context was entered."""
    request = {"user": None}
    with capture_events() as events, audit_context(actor=lambda: request["user"], ip="192.0.2.1"):
        change("before-auth")
        request["user"] = "alice"  # authentication ran later in the request
        change("after-auth")
    assert [None, "alice"] == [e.actor for e in events]
    assert ["192.0.2.1", "192.0.2.1"] == [e.ip for e in events]


def test_lazy_values_are_redacted_cut_and_fail_safe(caplog):
    """A lazy actor is redacted and cut like a plain one; one that raises records no actor."""

    def broken():
        raise LookupError("no session")

    with capture_events() as events:
        with audit_context(actor=lambda: "x" * 5000, correlation_id=lambda: 42):
            change("long")
        with caplog.at_level(logging.ERROR, "auditaspect"), audit_context(actor=broken):
            assert "ok" == change("ok")
    assert len(events[0].actor.encode()) <= 1024
    assert events[0].actor.endswith("[cut]")
    assert "42" == events[0].correlation_id
    assert events[1].actor is None
    assert any("actor callable failed" in r.getMessage() for r in caplog.records)


def test_lazy_actor_nests_and_restores():
    """An inner plain value overrides a lazy outer one; leaving restores the lazy one."""
    with audit_context(actor=lambda: "lazy"):
        assert "lazy" == current_context().actor
        with audit_context(actor="inner", ip=lambda: "10.0.0.1"):
            assert ("inner", "10.0.0.1") == (current_context().actor, current_context().ip)
        assert ("lazy", None) == (current_context().actor, current_context().ip)
    assert current_context().actor is None


def test_lazy_actor_follows_asyncio_tasks():
    """Each task resolves the lazy actor in its own context."""
    who = {}

    async def request(name):
        with audit_context(actor=lambda: who.get(name)):
            await asyncio.sleep(0)
            who[name] = name.upper()
            await asyncio.sleep(0)
            return change(name)

    async def main():
        with capture_events() as events:
            await asyncio.gather(request("ann"), request("bob"))
        return events

    events = asyncio.run(main())
    assert {("ann", "ANN"), ("bob", "BOB")} == {(e.details["key"], e.actor) for e in events}
