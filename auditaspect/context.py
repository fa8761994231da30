"""Who is acting, from where, under which request: the ambient audit context.

Built on :mod:`contextvars`, so each thread and each asyncio task sees its own
values, and a task started inside a context inherits it.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType

import attrs

__all__ = ["AuditContext", "audit_context", "current_context"]


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


_EMPTY = AuditContext()
_current: ContextVar[AuditContext] = ContextVar("auditaspect_context", default=_EMPTY)


def current_context() -> AuditContext:
    """Return the audit context of the running thread or task."""
    return _current.get()


class audit_context:
    """Set actor, ip and correlation id for every event inside the block.

    Nested contexts override key by key: a value left as ``None`` keeps the
    outer one. Leaving the block restores exactly what was there before, also
    when the block raises. Usable with ``with`` and ``async with``; not
    re-entrant (enter each instance once at a time).
    """

    __slots__ = ("_token", "_values")

    def __init__(
        self, actor: object = None, ip: object = None, correlation_id: object = None
    ) -> None:
        self._values = (actor, ip, correlation_id)
        self._token: Token[AuditContext] | None = None

    def __enter__(self) -> AuditContext:
        if self._token is not None:
            raise RuntimeError("this audit_context is already active; create a new one to nest")
        outer = _current.get()
        actor, ip, correlation_id = self._values
        merged = AuditContext(
            actor=outer.actor if actor is None else actor,
            ip=outer.ip if ip is None else ip,
            correlation_id=outer.correlation_id if correlation_id is None else correlation_id,
        )
        self._token = _current.set(merged)
        return merged

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
