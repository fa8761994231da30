"""@audited and emit: what events are built, when, and what survives failures."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest

from auditaspect import (
    AuditWriteError,
    Call,
    EventType,
    audit_context,
    audited,
    emit,
    signals,
)


class Service:
    """A service with every kind of method."""

    def __init__(self) -> None:
        self.calls = 0

    @audited(EventType.PLAN_APPLIED)
    def apply(self, plan_id: str, *, dry_run: bool = False) -> str:
        """Apply a plan."""
        self.calls += 1
        return f"applied {plan_id}"

    @audited("cls_event")
    @classmethod
    def from_class(cls, name: str, flag: int = 1) -> str:
        return cls.__name__ + name

    @audited("static_event")
    @staticmethod
    def helper(a: int, b: int = 2) -> int:
        return a + b

    @audited("async_event", lambda call: {"doubled": call.result})
    async def fetch(self, value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    @audited(EventType.AUTH_SUCCESS, on_error=EventType.AUTH_FAILURE)
    def login(self, user: str, password: str) -> str:
        if password != "right":
            raise PermissionError(f"bad password={password} for {user}")
        return "token"

    @audited("async_fail", on_error="async_failed")
    async def broken(self, value: int) -> int:
        await asyncio.sleep(0)
        raise LookupError("gone")


@audited("plain")
def plain(a: int, b: int = 5, *rest: int, **extra: Any) -> int:
    """Plain function."""
    return a + b


def test_metadata_and_return_value_are_preserved():
    """Name, docstring, signature and return value pass through."""
    assert "apply" == Service.apply.__name__
    assert "Apply a plan." == Service.apply.__doc__
    assert inspect.signature(Service.apply.__wrapped__) == inspect.signature(Service.apply)
    assert ["self", "plan_id", "dry_run"] == list(inspect.signature(Service.apply).parameters)
    assert ["a", "b", "rest", "extra"] == list(inspect.signature(plain).parameters)
    assert "Plain function." == plain.__doc__
    assert "applied p1" == Service().apply("p1")
    assert inspect.iscoroutinefunction(Service.fetch)
    assert inspect.iscoroutinefunction(Service().fetch)


def test_instance_method_event_fields(captured):
    """A method call sends one event: type, target, arguments by name, sender."""
    svc = Service()
    with audit_context(actor="alice", ip="10.1.1.1", correlation_id="req-9"):
        svc.apply("p1")
    [event] = captured
    assert "plan_applied" == event.event_type
    assert "success" == event.outcome
    assert {"plan_id": "p1", "dry_run": False} == event.details
    assert "test_decorator.Service.apply" == event.target
    assert ("alice", "10.1.1.1", "req-9") == (event.actor, event.ip, event.correlation_id)
    assert event.error is None
    assert [svc] == captured.senders


def test_positional_and_keyword_calls_give_the_same_arguments(captured):
    """However arguments are passed, the details are by name with defaults."""
    svc = Service()
    svc.apply("p1")
    svc.apply(plan_id="p1")
    Service.apply(svc, "p1", dry_run=False)
    assert 3 == len(captured)
    assert all({"plan_id": "p1", "dry_run": False} == e.details for e in captured)


def test_classmethod_and_staticmethod(captured):
    """cls is left out, a staticmethod binds all arguments; both on class and instance."""
    assert "Servicex" == Service.from_class("x")
    Service().from_class(name="y", flag=3)
    assert 5 == Service.helper(3)
    Service().helper(1, b=1)
    details = [e.details for e in captured]
    assert [
        {"name": "x", "flag": 1},
        {"name": "y", "flag": 3},
        {"a": 3, "b": 2},
        {"a": 1, "b": 1},
    ] == details
    assert [Service, Service] == captured.senders[:2]


def test_plain_function_with_var_arguments(captured):
    """*args and **kwargs are recorded under their own names."""
    assert 3 == plain(1, 2, 9, 8, flag=True)
    [event] = captured
    assert {"a": 1, "b": 2, "rest": [9, 8], "extra": {"flag": True}} == event.details
    assert [plain.__wrapped__] == captured.senders


def test_async_event_fires_after_the_await(captured):
    """For a coroutine the event is sent after the body completed, with its result."""
    svc = Service()
    coroutine = svc.fetch(21)
    assert [] == captured  # nothing before the body runs
    assert 42 == asyncio.run(coroutine)
    [event] = captured
    assert {"doubled": 42} == event.details


def test_exception_is_reraised_unchanged_without_success_event(captured):
    """The very same exception object comes out; no success event is sent."""
    error = ValueError("boom")

    @audited("never")
    def fails() -> None:
        raise error

    with pytest.raises(ValueError, match="boom") as info:
        fails()
    assert info.value is error
    assert [] == captured


def test_on_error_sends_a_redacted_failure_event_first(captured):
    """on_error sends a failure event carrying type and redacted message, then re-raises."""
    with audit_context(ip="198.51.100.4"), pytest.raises(PermissionError):
        Service().login("bob", "hunter2")
    [event] = captured
    assert "auth_failure" == event.event_type
    assert "failure" == event.outcome
    assert event.error.startswith("PermissionError: bad password=")
    assert "hunter2" not in event.error
    assert {"user": "bob", "password": "[REDACTED]"} == event.details
    assert "198.51.100.4" == event.ip


def test_async_failure_event(captured):
    """An async method's failure event is sent after the await raised."""
    with pytest.raises(LookupError):
        asyncio.run(Service().broken(1))
    [event] = captured
    assert ("async_failed", "failure", "LookupError: gone") == (
        event.event_type,
        event.outcome,
        event.error,
    )


def test_failure_event_that_cannot_be_built_still_reraises(captured, caplog, monkeypatch):
    """If the failure event itself fails, the original exception still propagates."""

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("pipeline down")

    monkeypatch.setattr("auditaspect.decorator.build_event", explode)
    with caplog.at_level(logging.ERROR, logger="auditaspect"), pytest.raises(PermissionError):
        Service().login("bob", "wrong")
    assert "could not record the auth_failure failure event" in caplog.text


def test_extractor_failure_records_the_error_and_arguments(captured, caplog):
    """An extractor that raises does not break the call; details say why."""

    @audited("x", lambda call: {"v": call.arguments["missing"]})
    def act(value: int) -> int:
        return value

    with caplog.at_level(logging.ERROR, logger="auditaspect"):
        assert 7 == act(7)
    [event] = captured
    assert {"extractor_error": "KeyError: 'missing'", "arguments": {"value": 7}} == event.details
    assert "audit extractor" in caplog.text


def test_extractor_returning_a_non_mapping_is_an_extractor_error(captured):
    """An extractor must return a Mapping; anything else is recorded as its error."""

    @audited("x", lambda call: ["not", "a", "mapping"])  # type: ignore[arg-type,return-value]
    def act() -> None:
        return None

    act()
    assert captured[0].details["extractor_error"].startswith("TypeError: extractor returned list")


def test_extractor_receives_the_call(captured):
    """The extractor sees arguments, instance, result and target."""
    seen: list[Call] = []

    def extractor(call: Call) -> dict[str, Any]:
        seen.append(call)
        return {"actor": "from-extractor", "plan_id": 77, "other": 1}

    class Svc:
        @audited("x", extractor)
        def run(self, a: int) -> str:
            return "done"

    svc = Svc()
    with audit_context(actor="from-context"):
        svc.run(1)
    [call] = seen
    assert ({"a": 1}, svc, "done", None) == (call.arguments, call.instance, call.result, call.error)
    assert call.target.endswith("Svc.run")
    [event] = captured
    assert ("from-extractor", "77") == (event.actor, event.plan_id)


def test_no_receivers_means_no_event_is_built():
    """With nobody listening the extractor is never called."""
    calls = []

    @audited("quiet", lambda call: calls.append(call) or {})
    def act() -> int:
        return 1

    assert 1 == act()
    assert [] == calls


def test_per_type_receiver_alone_triggers_the_event():
    """A receiver on signal_for(type) is enough for events of that type."""
    got = []
    signals.signal_for("only_this").connect(lambda s, *, event: got.append(event), weak=False)

    @audited("only_this")
    def act() -> None:
        return None

    @audited("another")
    def other() -> None:
        return None

    act()
    other()
    assert ["only_this"] == [e.event_type for e in got]


@pytest.mark.parametrize("bad", ["", None, 5, "  "])
def test_bad_event_type_fails_at_decoration(bad):
    """A bad event_type is a TypeError when decorating, not when calling."""
    with pytest.raises(TypeError, match="event_type"):
        audited(bad)
    with pytest.raises(TypeError, match="event_type"):
        audited("ok", on_error=bad if bad is not None else 3)


def test_bad_extractor_and_target_fail_at_decoration():
    """A non-callable extractor or decorated object is a TypeError."""
    with pytest.raises(TypeError, match="extractor"):
        audited("x", extractor="nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callables"):
        audited("x")(42)  # type: ignore[type-var]


def test_strict_write_error_reaches_the_caller():
    """An AuditWriteError from a receiver propagates out of the audited call."""

    def strict(sender, *, event):
        raise AuditWriteError("not audited")

    signals.audit_event.connect(strict)
    with pytest.raises(AuditWriteError):
        plain(1)


def test_receiver_error_does_not_break_the_call(caplog):
    """A buggy receiver is logged; the call returns normally."""

    def buggy(sender, *, event):
        raise RuntimeError("bug")

    signals.audit_event.connect(buggy)
    with caplog.at_level(logging.ERROR, logger="auditaspect"):
        assert 6 == plain(1)
    assert "bug" in caplog.text


def test_emit_sends_through_the_same_pipeline(captured):
    """emit builds a redacted event with context, outcome and error, and returns it."""
    with audit_context(actor="alice"):
        event = emit(
            EventType.AUTH_FAILURE,
            attempted="bob",
            password="hunter2",
            outcome="failure",
            error="locked out, token=abc123",
        )
    assert [event] == list(captured)
    assert "auth_failure" == event.event_type
    assert "failure" == event.outcome
    assert {"attempted": "bob", "password": "[REDACTED]"} == event.details
    assert "abc123" not in event.error
    assert "alice" == event.actor
    assert event.target.endswith("test_emit_sends_through_the_same_pipeline")
    with pytest.raises(TypeError):
        emit("")


def test_column_values_are_text(captured):
    """Non-string actor/plan_id values from details become text."""
    emit("x", actor=12, plan_id=None, ip="1.1.1.1", correlation_id="c")
    [event] = captured
    assert ("12", None, "1.1.1.1", "c") == (
        event.actor,
        event.plan_id,
        event.ip,
        event.correlation_id,
    )


def test_huge_exception_message_is_capped(captured):
    """A multi-megabyte exception message is cut before it is stored."""

    @audited("ok", on_error="failed")
    def act() -> None:
        raise ValueError("x" * 2_000_000)

    with pytest.raises(ValueError, match="xxx"):
        act()
    assert len(captured[0].error) < 5000


def test_unprintable_exception_message(captured):
    """An exception whose str() raises is still recorded by type."""

    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError

    @audited("ok", on_error="failed")
    def act() -> None:
        raise Weird

    with pytest.raises(Weird):
        act()
    assert "Weird: <unprintable message>" == captured[0].error
