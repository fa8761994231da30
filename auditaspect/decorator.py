"""How events enter the pipeline: the ``@audited`` decorator and :func:`emit`.

``@audited`` is built on wrapt, so it keeps the wrapped callable's name,
docstring and signature and works on functions, instance methods,
classmethods and staticmethods (put it *outside* ``@classmethod`` /
``@staticmethod``). wrapt does not await coroutines: an ``async def`` gets its
own ``async`` wrapper, so its event fires after the await completes, never
before the body has run.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import attrs
import wrapt

from .binding import Binder
from .context import as_text, current_context
from .events import (
    COLUMN_LIMITS,
    FAILURE,
    SUCCESS,
    AuditEvent,
    Call,
    Outcome,
    dumps_details,
    event_type_value,
    fit_column,
    trusted_event,
)
from .redaction import TRUNCATED_KEY, Redactor, get_redactor
from .signals import audit_event, has_receivers, send, signal_for

__all__ = ["Extractor", "FailedCheck", "Predicate", "Recorder", "audited", "emit"]

logger = logging.getLogger("auditaspect")

Extractor = Callable[[Call], Mapping[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])

# Exception messages can be huge; the log needs the start of them.
MAX_ERROR_MESSAGE = 4096
# Detail keys that fill the event's columns (and stay in the details).
_COLUMN_KEYS = ("actor", "plan_id", "ip", "correlation_id")
# Text this short fits every column whatever its characters (4 bytes each).
_ALWAYS_FITS = min(COLUMN_LIMITS.values()) // 4


def _columns(
    details: Mapping[str, Any], clean: Mapping[str, Any], redactor: Redactor
) -> list[str | None]:
    """actor, plan_id, ip and correlation_id from the detail keys, redacted and within limits.

    From the redacted details when they were kept whole; from the original
    details when the size cap replaced them, so an oversized event still
    names its actor.
    """
    if TRUNCATED_KEY in clean:
        return [_lifted(details.get(key), key, redactor) for key in _COLUMN_KEYS]
    # The common case, kept cheap: absent keys, or short text.
    return [
        v if v is None or (type(v) is str and len(v) <= _ALWAYS_FITS) else _fitted(as_text(v), k)
        for k in _COLUMN_KEYS
        for v in (clean.get(k),)
    ]


def _lifted(value: Any, key: str, redactor: Redactor) -> str | None:
    text = as_text(value)
    if text is None:
        return None
    return fit_column(redactor.redact_capped(text, COLUMN_LIMITS[key]), COLUMN_LIMITS[key])


def _fitted(value: str | None, key: str) -> str | None:
    return None if value is None else fit_column(value, COLUMN_LIMITS[key])


def _context_value(value: str | None, key: str, redact_text: Callable[[str], str]) -> str | None:
    return None if value is None else _fitted(redact_text(value), key)


def describe_error(error: BaseException) -> str:
    """Return ``"TypeName: message"`` with the message redacted and capped."""
    try:
        message = str(error)
    except Exception:
        message = "<unprintable message>"
    message = get_redactor().redact_capped(message, MAX_ERROR_MESSAGE)
    name = type(error).__name__
    return f"{name}: {message}" if message else name


def build_event(
    event_type: str,
    details: Mapping[str, Any],
    *,
    target: str,
    outcome: Outcome = SUCCESS,
    error: BaseException | None = None,
) -> AuditEvent:
    """Build a redacted event from details and the ambient audit context.

    The keys ``actor``, ``plan_id``, ``ip`` and ``correlation_id`` in
    ``details`` fill those columns, over what :func:`audit_context` set.
    """
    if outcome not in (SUCCESS, FAILURE):
        raise ValueError(f"outcome must be 'success' or 'failure', not {outcome!r}")
    ctx = current_context()
    redactor = get_redactor()
    clean, float_free = redactor.redact_checked(details)
    text = redactor.redact_text
    actor, plan_id, ip, correlation_id = _columns(details, clean, redactor)
    # Every value is checked, redacted and fitted here: no need for the
    # converters and validators of AuditEvent.__init__ on this hot path.
    return trusted_event(
        fit_column(event_type, COLUMN_LIMITS["event_type"]),
        outcome,
        actor or (ctx.actor and _context_value(ctx.actor, "actor", text)),
        plan_id,
        ip or (ctx.ip and _context_value(ctx.ip, "ip", text)),
        correlation_id
        or (ctx.correlation_id and _context_value(ctx.correlation_id, "correlation_id", text)),
        _context_value(target, "target", text) or "",
        clean,
        None if error is None else _fitted(describe_error(error), "error"),
        redactor,
        # Serialised now: receivers get the dict, the sink stores this text.
        dumps_details(clean, float_free=float_free),
    )


def emit(event_type: str, /, **details: Any) -> AuditEvent:
    """Send an event by hand, through the same pipeline as ``@audited``.

    For audit points that are not a method call, such as a login handler's
    failure branch. The details are redacted, the audit context applies, and
    ``outcome``/``error`` may be given as keywords (``outcome="failure"``,
    ``error="reason"``); they are taken out of the details. Returns the event
    that was sent. A bad ``event_type`` is a ``TypeError``.
    """
    name = event_type_value(event_type)
    outcome = details.pop("outcome", SUCCESS)
    error_text = details.pop("error", None)
    frame = sys._getframe(1)
    code = frame.f_code
    target = f"{frame.f_globals.get('__name__', '?')}.{getattr(code, 'co_qualname', code.co_name)}"
    event = build_event(name, details, target=target, outcome=outcome)
    if error_text is not None:
        event = _with_error(event, str(error_text))
    send(None, event)
    return event


def _with_error(event: AuditEvent, text: str) -> AuditEvent:
    redactor = get_redactor()
    error = _fitted(redactor.redact_capped(text, MAX_ERROR_MESSAGE), "error")
    changed = attrs.evolve(event, error=error)
    object.__setattr__(changed, "_redacted_by", redactor)
    object.__setattr__(changed, "_details_json", event._details_json)
    return changed


Predicate = Callable[[Call], bool]
FailedCheck = Callable[[Call], "bool | str | None"]


class Recorder:
    """Turns one audited call into its event: the state behind ``@audited``.

    Shared by the sync and async wrappers and by the web integrations, which
    build the :class:`Call` themselves (from a request and its response) and
    hand it to :meth:`record`.
    """

    __slots__ = (
        "binder",
        "error_signal",
        "event_type",
        "extractor",
        "failed_check",
        "is_static",
        "on_error",
        "signal",
        "target",
        "when",
    )

    def __init__(
        self,
        target: str,
        event_type: str,
        extractor: Extractor | None = None,
        on_error: str | None = None,
        *,
        when: Predicate | None = None,
        failed: FailedCheck | None = None,
        func: Callable[..., Any] | None = None,
        is_static: bool = False,
    ) -> None:
        self.event_type = event_type_value(event_type)
        self.on_error = None if on_error is None else event_type_value(on_error)
        for name, value in (("extractor", extractor), ("when", when), ("failed", failed)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")
        self.extractor = extractor
        self.when = when
        self.failed_check = failed
        self.is_static = is_static
        self.binder = Binder(func) if func is not None else None
        # Looked up once: the wrapper checks its receivers on every call.
        self.signal = signal_for(self.event_type)
        # A returned call marked failed is sent as on_error (else as event_type).
        self.error_signal = (
            signal_for(self.on_error) if self.on_error is not None and failed else self.signal
        )
        self.target = target

    def call(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any], **kw: Any) -> Call:
        skip = instance is not None and not self.is_static
        assert self.binder is not None
        return Call(
            target=self.target,
            arguments=self.binder.bind(args, kwargs, skip_first=skip),
            instance=instance,
            **kw,
        )

    def details(self, call: Call) -> Mapping[str, Any]:
        if self.extractor is None:
            return call.arguments
        try:
            details = self.extractor(call)
            if not isinstance(details, Mapping):
                raise TypeError(f"extractor returned {type(details).__name__}, not a Mapping")
            return details
        except Exception as exc:
            logger.exception("audit extractor for %s failed; recording the arguments", self.target)
            return {"extractor_error": describe_error(exc), "arguments": call.arguments}

    def listening(self) -> bool:
        """Whether any receiver would get this recorder's events (a few attribute reads)."""
        return bool(
            audit_event.receivers or self.signal.receivers or self.error_signal.receivers
        ) or (self.on_error is not None and has_receivers(self.on_error))

    def wanted(self, call: Call) -> bool:
        """``when(call)``; a ``when`` that raises is logged and the call recorded."""
        if self.when is None:
            return True
        try:
            return bool(self.when(call))
        except Exception:
            logger.exception("audit condition (when=) of %s failed; recording it", self.target)
            return True

    def verdict(self, call: Call) -> tuple[bool, str | None]:
        """Whether a call that returned failed, and why (``failed(call)``).

        A ``failed`` that raises is logged and the call counted as failed: an
        outcome nobody could establish must not be recorded as a success.
        """
        if self.failed_check is None:
            return False, None
        try:
            answer = self.failed_check(call)
        except Exception as exc:
            logger.exception("audit outcome check (failed=) for %s failed", self.target)
            return True, f"could not tell whether the call failed: {describe_error(exc)}"
        if isinstance(answer, str):
            return bool(answer), answer or None
        return bool(answer), None

    def record(self, sender: Any, call: Call) -> AuditEvent | None:
        """Build and send the event of a call that returned; return it (None if skipped).

        Receiver errors are isolated by :func:`signals.send`, except a strict
        sink's ``AuditWriteError``, which propagates.
        """
        if not self.listening() or not self.wanted(call):
            return None
        failed, reason = self.verdict(call)
        if not failed:
            if not has_receivers(self.event_type):
                return None
            event = build_event(self.event_type, self.details(call), target=self.target)
        else:
            event_type = self.on_error or self.event_type
            if not has_receivers(event_type):
                return None
            event = build_event(event_type, self.details(call), target=self.target, outcome=FAILURE)
            if reason is not None:
                event = _with_error(event, reason)
        send(sender, event)
        return event

    def record_error(self, sender: Any, call: Call) -> AuditEvent | None:
        """Build and send the failure event of a call that raised ``call.error``.

        Sent as ``on_error`` when given, else as ``event_type``, with outcome
        ``"failure"`` and the exception's type and redacted message as the
        error; ``when`` applies. For integrations that see the exception (a
        view that raised); the decorator sends failures only with ``on_error``.
        """
        event_type = self.on_error or self.event_type
        if not self.wanted(call) or not has_receivers(event_type):
            return None
        event = build_event(
            event_type, self.details(call), target=self.target, outcome=FAILURE, error=call.error
        )
        send(sender, event)
        return event

    def succeeded(
        self,
        wrapped: Any,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
    ) -> None:
        call = self.call(instance, args, kwargs, result=result)
        if self.when is None and self.failed_check is None:  # the common case, kept direct
            event = build_event(self.event_type, self.details(call), target=self.target)
            send(instance if instance is not None else wrapped, event)
        else:
            self.record(instance if instance is not None else wrapped, call)

    def failed(
        self,
        wrapped: Any,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: Exception,
    ) -> None:
        """Send the failure event; never raise (the caller re-raises ``error``)."""
        if self.on_error is None or not has_receivers(self.on_error):
            return
        try:
            call = self.call(instance, args, kwargs, error=error)
            if not self.wanted(call):
                return
            event = build_event(
                self.on_error, self.details(call), target=self.target, outcome=FAILURE, error=error
            )
            send(instance if instance is not None else wrapped, event)
        except Exception:
            logger.exception(
                "could not record the %s failure event of %s", self.on_error, self.target
            )


def audited(
    event_type: str,
    extractor: Extractor | None = None,
    *,
    on_error: str | None = None,
    when: Predicate | None = None,
    failed: FailedCheck | None = None,
) -> Callable[[F], F]:
    """Audit every successful call of the decorated callable.

    After the call returns, an :class:`AuditEvent` of ``event_type`` is built
    (details from ``extractor(call)``, or the call's arguments by name when
    there is no extractor), redacted, and sent on :data:`signals.audit_event`
    and ``signals.signal_for(event_type)``. With nobody listening, nothing is
    built. The return value is passed through unchanged.

    An exception from the call is re-raised unchanged and produces no success
    event; with ``on_error`` set, a failure event of that type (outcome
    ``"failure"``, the exception's type and redacted message in ``error``) is
    sent first. An extractor that raises does not break the call: the event
    records the extractor's error and the arguments. Receiver errors are
    logged and isolated, except a strict sink's ``AuditWriteError``, which is
    raised to the caller.

    ``when(call) -> bool`` records a call only when it answers true (skip
    reads, dry runs); it sees the :class:`Call` with its ``result`` (or
    ``error``) and applies to success and failure events alike.
    ``failed(call) -> bool | str`` marks a call that *returned* as failed (a
    login view that renders an error page instead of raising): the event is
    sent with outcome ``"failure"``, as ``on_error`` when given (else as
    ``event_type``), with the returned text, when it is one, as its
    ``error``. A ``when`` that raises records the call anyway; a ``failed``
    that raises records it as a failure; both are logged.

    A plain function that returns an awaitable (a coroutine, a future) is
    audited when that awaitable completes: the caller gets a coroutine that
    awaits it and then sends the success (or failure) event. Generator
    functions are refused: their body runs only while they are iterated.

    A bad ``event_type`` or ``on_error`` (not a non-empty string), an
    ``extractor``, ``when`` or ``failed`` that is not callable, or a generator
    function is a ``TypeError`` here, at decoration.
    """
    # Checked now, at decoration, not on the first call.
    Recorder("", event_type, extractor, on_error, when=when, failed=failed)

    def decorate(func: F) -> F:
        if isinstance(func, (classmethod, staticmethod)):
            raw = func.__func__
        elif callable(func):
            raw = func
        else:
            raise TypeError(f"@audited can only decorate callables, not {type(func).__name__}")
        if inspect.isgeneratorfunction(raw) or inspect.isasyncgenfunction(raw):
            # Its body runs after the call returns, while the caller iterates:
            # an event at return would claim success for work not yet done.
            raise TypeError(
                f"@audited cannot audit the generator function {raw.__qualname__}: its body "
                "runs only while it is iterated. Audit the function that consumes it, or "
                "call auditaspect.emit() when the work is done"
            )
        audit = Recorder(
            f"{raw.__module__}.{raw.__qualname__}",
            event_type,
            extractor,
            on_error,
            when=when,
            failed=failed,
            func=raw,
            is_static=isinstance(func, staticmethod),
        )
        if inspect.iscoroutinefunction(raw):
            return cast(F, _async_wrapper(audit)(func))
        return cast(F, _sync_wrapper(audit)(func))

    return decorate


def _sync_wrapper(audit: Recorder) -> Any:
    if audit.error_signal is not audit.signal:
        # A returned call may be sent as on_error: its receivers count too.
        return _sync_wrapper_with_failures(audit)
    # Closure cells, not attribute lookups, on the path taken by every call.
    everything, own = audit_event, audit.signal

    @wrapt.decorator
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            result = wrapped(*args, **kwargs)
        except Exception as exc:
            audit.failed(wrapped, instance, args, kwargs, exc)
            raise
        # The common path, kept to two attribute reads: nobody listening, nothing built.
        if everything.receivers or own.receivers:
            if result is not None and hasattr(type(result), "__await__"):
                # The work happens when the caller awaits: audit then.
                return _audited_await(audit, wrapped, instance, args, kwargs, result)
            audit.succeeded(wrapped, instance, args, kwargs, result)
        return result

    return wrapper


def _sync_wrapper_with_failures(audit: Recorder) -> Any:
    @wrapt.decorator
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            result = wrapped(*args, **kwargs)
        except Exception as exc:
            audit.failed(wrapped, instance, args, kwargs, exc)
            raise
        if audit_event.receivers or audit.signal.receivers or audit.error_signal.receivers:
            if result is not None and hasattr(type(result), "__await__"):
                return _audited_await(audit, wrapped, instance, args, kwargs, result)
            audit.succeeded(wrapped, instance, args, kwargs, result)
        return result

    return wrapper


async def _audited_await(
    audit: Recorder,
    wrapped: Any,
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    awaitable: Any,
) -> Any:
    """Await what a plain function returned, then send its event (success or failure)."""
    try:
        result = await awaitable
    except Exception as exc:
        audit.failed(wrapped, instance, args, kwargs, exc)
        raise
    if audit_event.receivers or audit.signal.receivers or audit.error_signal.receivers:
        audit.succeeded(wrapped, instance, args, kwargs, result)
    return result


def _async_wrapper(audit: Recorder) -> Any:
    @wrapt.decorator
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            result = await wrapped(*args, **kwargs)
        except Exception as exc:
            audit.failed(wrapped, instance, args, kwargs, exc)
            raise
        if audit_event.receivers or audit.signal.receivers or audit.error_signal.receivers:
            audit.succeeded(wrapped, instance, args, kwargs, result)
        return result

    return wrapper
