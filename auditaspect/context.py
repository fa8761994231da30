"""Who is acting, from where, under which request: the ambient audit context.

Built on :mod:`contextvars`, so each thread and each asyncio task sees its own
values, and a task started inside a context inherits it.

A value may be a zero-argument callable instead of the value itself. It is
called each time an event is built, not when the context is entered, so a web
request can open its context before authentication has run (a FastAPI
dependency, a Django REST framework authenticator, a JWT check) and its events
still name the user that authentication found.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from types import TracebackType

import attrs

__all__ = ["AuditContext", "audit_context", "current_context", "pop_context", "push_context"]

logger = logging.getLogger("auditaspect")


def as_text(value: object) -> str | None:
    """``value`` as text for a column: ``None`` stays, anything else becomes ``str``.

    Never raises: a user id, a ``uuid.UUID`` or an ``ipaddress`` object is
    common here, and a value whose ``str()`` fails is named by its type.
    """
    if value is None or type(value) is str:
        return value
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


@attrs.frozen
class AuditContext:
    """The actor, client IP and correlation id in force (each may be ``None``).

    Values that are not strings (``42``, a ``UUID``, an ``IPv4Address``) are
    stored as their text.
    """

    actor: str | None = attrs.field(default=None, converter=as_text)
    ip: str | None = attrs.field(default=None, converter=as_text)
    correlation_id: str | None = attrs.field(default=None, converter=as_text)


def _resolve(value: object, name: str) -> object:
    """Call a lazy value; a callable that raises counts as ``None`` (logged)."""
    try:
        return value()  # type: ignore[operator]
    except Exception:
        logger.exception("the audit context's %s callable failed; recording no %s", name, name)
        return None


@attrs.frozen
class _Frame:
    """What an ``audit_context`` block set: values, or callables returning them.

    ``fixed`` is the resolved context when no value is lazy (the common case,
    and the only one that costs nothing per event).
    """

    actor: object = None
    ip: object = None
    correlation_id: object = None
    fixed: AuditContext | None = None

    def resolve(self) -> AuditContext:
        if self.fixed is not None:
            return self.fixed
        actor, ip, correlation_id = self.actor, self.ip, self.correlation_id
        return AuditContext(
            actor=_resolve(actor, "actor") if callable(actor) else actor,
            ip=_resolve(ip, "ip") if callable(ip) else ip,
            correlation_id=(
                _resolve(correlation_id, "correlation_id")
                if callable(correlation_id)
                else correlation_id
            ),
        )


def _frame(actor: object, ip: object, correlation_id: object) -> _Frame:
    if callable(actor) or callable(ip) or callable(correlation_id):
        return _Frame(actor, ip, correlation_id)
    fixed = AuditContext(actor=actor, ip=ip, correlation_id=correlation_id)
    return _Frame(fixed.actor, fixed.ip, fixed.correlation_id, fixed)


_EMPTY = _frame(None, None, None)
_current: ContextVar[_Frame] = ContextVar("auditaspect_context", default=_EMPTY)


def current_context() -> AuditContext:
    """Return the audit context of the running thread or task.

    Lazy values (callables) are called now; one that raises is logged on the
    ``auditaspect`` logger and counts as ``None``, so a broken actor lookup
    never breaks the audited call.
    """
    return _current.get().resolve()


def push_context(actor: object, ip: object, correlation_id: object) -> Token[_Frame]:
    """Enter a context without resolving its lazy values; for integrations.

    What ``audit_context(...).__enter__()`` does, minus building the resolved
    context it returns (which would call a lazy actor at the start of every
    request, before authentication). Pair with :func:`pop_context`.
    """
    outer = _current.get()
    return _current.set(
        _frame(
            outer.actor if actor is None else actor,
            outer.ip if ip is None else ip,
            outer.correlation_id if correlation_id is None else correlation_id,
        )
    )


def pop_context(token: Token[_Frame]) -> None:
    """Restore what :func:`push_context` replaced."""
    _current.reset(token)


class audit_context:
    """Set actor, ip and correlation id for every event inside the block.

    Each value may be a zero-argument callable, called whenever an event is
    built inside the block (see the module doc); a lazy value that returns
    ``None`` records nothing for that column, it does not fall back to an
    outer context's value. Nested contexts override key by key: a value left
    as ``None`` keeps the outer one. Leaving the block restores exactly what
    was there before, also when the block raises. Usable with ``with`` and
    ``async with``; not re-entrant (enter each instance once at a time).
    ``__enter__`` returns the context as resolved at entry.
    """

    __slots__ = ("_token", "_values")

    def __init__(
        self, actor: object = None, ip: object = None, correlation_id: object = None
    ) -> None:
        self._values = (actor, ip, correlation_id)
        self._token: Token[_Frame] | None = None

    def __enter__(self) -> AuditContext:
        if self._token is not None:
            raise RuntimeError("this audit_context is already active; create a new one to nest")
        self._token = push_context(*self._values)
        return _current.get().resolve()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None

    async def __aenter__(self) -> AuditContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
