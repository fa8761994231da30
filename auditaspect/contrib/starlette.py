"""Starlette and FastAPI integration: an ASGI middleware and a route helper.

    from auditaspect.contrib.starlette import AuditMiddleware, audit_route
    app.add_middleware(AuditMiddleware, trusted_proxies=1)
    audit_route(app, "login", "auth_success", on_error="auth_failure")

:class:`AuditMiddleware` runs every HTTP request inside an
:func:`~auditaspect.audit_context`:

- actor: lazy, looked up each time an event is built, so authentication that
  runs after the middleware (a FastAPI dependency, a JWT check in the
  endpoint) is seen. By default the authenticated ``scope["user"]`` of
  Starlette's ``AuthenticationMiddleware`` (its ``display_name``), else
  ``request.state.audit_actor`` (set it in your auth dependency); or pass
  ``actor=lambda scope: ...``.
- ip: the peer address; with ``trusted_proxies=N``, the address N entries from
  the right of ``X-Forwarded-For`` (entries a client wrote are never trusted).
- correlation id: a sane incoming ``X-Request-ID``, else the trace id of a W3C
  ``traceparent``, else a new one; echoed in the response's ``X-Request-ID``.

:func:`audit_route` audits an endpoint with its response status, so a login
that answers 401 is recorded as a failure. Its event is recorded in a worker
thread, not on the event loop: a synchronous sink's write does not stall
other requests. ``@audited`` on an ``async def`` service records on the loop;
use ``mode="buffered"`` sinks under async servers (docs/performance.md has
the measured stall). Nothing of Starlette is imported until this module is.
Install with ``pip install 'auditaspect[starlette]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, MutableMapping
from typing import Any

import attrs
from starlette.concurrency import run_in_threadpool

from ..context import pop_context, push_context
from ..decorator import Extractor, Predicate, Recorder
from ..events import Call
from ._http import (
    HEADER,
    client_ip,
    correlation_id,
    http_failure,
    method_set,
    response_recorder,
)

__all__ = ["AuditMiddleware", "ResponseInfo", "audit_route", "default_actor"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RULES = "auditaspect_routes"


@attrs.frozen
class ResponseInfo:
    """What a route's ``failed`` rule and extractor see of the response."""

    status_code: int
    headers: Mapping[str, str]


def default_actor(scope: Scope) -> object:
    """The authenticated Starlette user's ``display_name``, else ``request.state.audit_actor``."""
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        return getattr(user, "display_name", None) or str(user)
    state = scope.get("state")
    return state.get("audit_actor") if isinstance(state, Mapping) else None


def _header(scope: Scope, name: bytes) -> str | None:
    """All values of one header, joined with ``,`` (latin-1, as ASGI gives them)."""
    values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]
    return ",".join(values) if values else None


class AuditMiddleware:
    """Run each HTTP request inside an audit context (see the module doc).

    A plain ASGI middleware: ``app.add_middleware(AuditMiddleware, ...)`` or
    ``AuditMiddleware(app, ...)``. Websocket and lifespan scopes pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: Callable[[Scope], object] | None = None,
        trusted_proxies: int = 0,
        header: str = HEADER,
    ) -> None:
        if trusted_proxies < 0:
            raise ValueError("trusted_proxies must be >= 0")
        if actor is not None and not callable(actor):
            raise TypeError("actor must be a callable taking the ASGI scope")
        self.app = app
        self.actor = actor or default_actor
        self.trusted_proxies = trusted_proxies
        self.header = header
        self._header_key = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation = correlation_id(
            _header(scope, self._header_key), _header(scope, b"traceparent")
        )
        client = scope.get("client")
        ip = client_ip(
            client[0] if client else None,
            _header(scope, b"x-forwarded-for"),
            self.trusted_proxies,
        )
        actor = self.actor
        echo = (self._header_key, correlation.encode("latin-1"))
        rules = _rules_of(scope.get("app"))
        recorded = False

        async def send_with_id(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != echo[0]]
                message["headers"] = [*headers, echo]
                if rules:
                    recorded = True
                    await _record(rules, scope, message["status"], headers, None)
            await send(message)

        # The callable, not its value: called when an event is built.
        token = push_context(lambda: actor(scope), ip, correlation)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if rules and not recorded:
                await _record(rules, scope, 500, (), exc)
            raise
        finally:
            pop_context(token)


# -- audit_route -------------------------------------------------------------------------


@attrs.frozen
class _Rule:
    endpoint: object
    recorder: Recorder
    methods: frozenset[str]

    def matches(self, scope: Scope) -> bool:
        if scope.get("method") not in self.methods:
            return False
        if isinstance(self.endpoint, str):
            route = scope.get("route")
            endpoint = scope.get("endpoint")
            return self.endpoint in (
                getattr(route, "name", None),
                getattr(endpoint, "__name__", None),
            )
        return scope.get("endpoint") is self.endpoint


def _rules_of(app: object) -> list[_Rule]:
    state = getattr(app, "state", None)
    return getattr(state, _RULES, None) or []


async def _record(
    rules: list[_Rule],
    scope: Scope,
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    error: BaseException | None,
) -> None:
    for rule in rules:
        if rule.matches(scope) and rule.recorder.listening():
            response = ResponseInfo(
                status_code=status,
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
            )
            call = Call(
                target=rule.recorder.target,
                arguments=dict(scope.get("path_params") or {}),
                instance=scope,
                result=response,
                error=error,
            )
            # Off the event loop: a synchronous sink writes to its database here.
            record = rule.recorder.record if error is None else rule.recorder.record_error
            await run_in_threadpool(record, scope.get("endpoint"), call)


def _walk(routes: Iterable[Any]) -> Iterable[Any]:
    for route in routes:
        yield route
        yield from _walk(getattr(route, "routes", None) or ())


def audit_route(
    app: Any,
    endpoint: str | Callable[..., Any],
    event_type: str,
    *,
    methods: Collection[str] = ("POST",),
    on_error: str | None = None,
    failed: Callable[[ResponseInfo], bool | str] | None = lambda r: http_failure(r.status_code),
    extractor: Extractor | None = None,
    when: Predicate | None = None,
) -> None:
    """Audit every ``methods`` request that ``endpoint`` of ``app`` answers.

    ``endpoint`` is the endpoint function or its route name. Needs
    :class:`AuditMiddleware` on ``app``. When the response starts, an event
    of ``event_type`` is sent through the ``@audited`` pipeline (redaction,
    the request's audit context, receivers, sinks) from a worker thread;
    ``failed(response)`` (a :class:`ResponseInfo`; default: status 400 or
    more, with ``"HTTP 401"`` as the error) marks a failure, sent as
    ``on_error`` when given, else as ``event_type``, with outcome
    ``"failure"``. An endpoint that raises is recorded as a failed 500.

    ``extractor(call)`` gives the details: ``call.arguments`` are the path
    parameters, ``call.instance`` the ASGI scope (method, path, headers) and
    ``call.result`` the :class:`ResponseInfo`; the request body
    has been consumed by then, so audit what the body changed with
    ``@audited`` on the service the endpoint calls. Without an extractor the
    details are the method, path, status and path parameters. A strict sink's
    ``AuditWriteError`` is raised before the response starts (the client gets
    a 500; the endpoint has already run).

    Raises ``ValueError`` for an endpoint ``app`` has no route for (add the
    route first) or one already audited, ``TypeError`` for a bad event type
    or a rule that is not callable.
    """
    found = [
        route
        for route in _walk(getattr(app, "routes", ()))
        if getattr(route, "endpoint", None) is endpoint or getattr(route, "name", None) == endpoint
    ]
    if not found:
        name = endpoint if isinstance(endpoint, str) else getattr(endpoint, "__name__", endpoint)
        raise ValueError(f"the app has no route for endpoint {name!r}; add the route first")
    view = getattr(found[0], "endpoint", None)
    recorder = response_recorder(
        f"{getattr(view, '__module__', '?')}.{getattr(view, '__qualname__', endpoint)}",
        event_type,
        on_error=on_error,
        failed=failed,
        extractor=extractor,
        summary=_summary,
        when=when,
    )
    rules: list[_Rule] = _rules_of(app)
    if any(rule.endpoint is endpoint or rule.endpoint == endpoint for rule in rules):
        raise ValueError(f"endpoint {endpoint!r} is already audited")
    setattr(app.state, _RULES, [*rules, _Rule(endpoint, recorder, method_set(methods))])


def _summary(call: Call) -> Mapping[str, Any]:
    scope = call.instance
    return {
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": call.result.status_code,
        **call.arguments,
    }
