"""Flask integration: every request runs inside an :func:`audit_context`.

    from auditaspect.contrib.flask import audit_endpoint, init_app
    init_app(app, actor=lambda: current_user.get_id())
    audit_endpoint(app, "auth.login", "auth_success", on_error="auth_failure")

For each request this sets the **actor** (your callable's answer), the client
**ip** and a **correlation id**, so decorated services called from views are
attributed without extra code. The actor callable is called each time an
event is built, not when the request starts, so a user that authentication
sets later in the request (a JWT check in the view, Flask-Login's lazy
``current_user``) is seen:

- ip: ``request.remote_addr``; with ``trusted_proxies=N`` (your N reverse
  proxies append to ``X-Forwarded-For``), the address N entries from the
  right of that header. Entries a client wrote itself are never trusted.
- correlation id: the incoming ``X-Request-ID`` (if it is a sane token, at most
  128 characters of letters, digits, ``-_.:``), else the trace id of a W3C
  ``traceparent`` header, else a new random one; echoed in the response's
  ``X-Request-ID``.

An actor callable that raises is logged and the event records no actor.
:func:`audit_endpoint` audits a view by endpoint name, with its response: no
decorator on the view, and a login that answers 401 or re-renders its form
is recorded as a failure. Install with ``pip install 'auditaspect[flask]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from flask import Flask, Response, current_app, g, request

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

__all__ = ["audit_endpoint", "client_ip", "init_app"]

_KEY = "_auditaspect_context"


def init_app(
    app: Flask,
    actor: Callable[[], Any] | None = None,
    *,
    trusted_proxies: int = 0,
    header: str = HEADER,
) -> None:
    """Put every request of ``app`` inside an audit context (see the module doc)."""
    if trusted_proxies < 0:
        raise ValueError("trusted_proxies must be >= 0")
    if actor is not None and not callable(actor):
        raise TypeError("actor must be a callable returning the acting user (or None)")

    def enter() -> None:
        correlation = correlation_id(
            request.headers.get(header), request.headers.get("traceparent")
        )
        ip = client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"), trusted_proxies)
        # The callable itself: called when an event is built, after authentication.
        setattr(g, _KEY, (push_context(actor, ip, correlation), correlation))

    def echo(response: Response) -> Response:
        state = getattr(g, _KEY, None)
        if state is not None:
            response.headers[header] = state[1]
        return response

    def leave(_: BaseException | None) -> None:
        state = g.pop(_KEY, None)
        if state is not None:
            pop_context(state[0])

    app.before_request(enter)
    app.after_request(echo)
    app.teardown_request(leave)


_RULES = "auditaspect_endpoints"


def _http_failure(response: Response) -> bool | str:
    return http_failure(response.status_code)


def audit_endpoint(
    app: Flask,
    endpoint: str,
    event_type: str,
    *,
    methods: Collection[str] = ("POST",),
    on_error: str | None = None,
    failed: Callable[[Response], bool | str] | None = _http_failure,
    extractor: Extractor | None = None,
    when: Predicate | None = None,
) -> None:
    """Audit every ``methods`` request that ``endpoint`` of ``app`` answers.

    After the view has produced its response, an event of ``event_type`` is
    sent through the same pipeline as ``@audited`` (redaction, the request's
    audit context, receivers, sinks). ``failed(response)`` decides whether
    the request failed (default: status 400 or more, with ``"HTTP 401"`` as
    the error); a failure is sent as ``on_error`` when given, else as
    ``event_type``, with outcome ``"failure"``. A view that raised is answered
    with a 500 and recorded as failed like any other response. Requests with
    other methods (a login form's GET) are not recorded.

    ``extractor(call)`` gives the details: ``call.arguments`` are the view's
    URL arguments, ``call.result`` is the response and ``call.instance`` the
    request, still readable (the form, the JSON body); without one the details are the
    method, path, status and URL arguments, never the request body. The sender
    is the view function. A strict sink's ``AuditWriteError`` turns the
    response into a 500 (the view has already run).

    Raises ``ValueError`` when ``app`` has no such endpoint (register the
    blueprint first) or it is already audited, ``TypeError`` for a bad event
    type or a rule that is not callable.
    """
    view = app.view_functions.get(endpoint)
    if view is None:
        known = ", ".join(sorted(app.view_functions)[:10])
        raise ValueError(
            f"{app.name} has no endpoint {endpoint!r} (known: {known}); call audit_endpoint() "
            "after registering its blueprint"
        )
    recorder = response_recorder(
        f"{view.__module__}.{view.__qualname__}",
        event_type,
        on_error=on_error,
        failed=failed,
        extractor=extractor,
        summary=_request_summary,
        when=when,
    )
    allowed = method_set(methods)
    rules: dict[str, tuple[Recorder, frozenset[str]]] | None = app.extensions.get(_RULES)
    if rules is None:
        rules = app.extensions[_RULES] = {}
        app.after_request(_record(rules))
    if endpoint in rules:
        raise ValueError(f"endpoint {endpoint!r} of {app.name} is already audited")
    rules[endpoint] = (recorder, allowed)


def _request_summary(call: Call) -> Mapping[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "status": call.result.status_code,
        **call.arguments,
    }


def _record(
    rules: Mapping[str, tuple[Recorder, frozenset[str]]],
) -> Callable[[Response], Response]:
    def record(response: Response) -> Response:
        endpoint = request.endpoint or ""
        rule = rules.get(endpoint)
        if rule is not None and request.method in rule[1] and rule[0].listening():
            recorder, _ = rule
            call = Call(
                target=recorder.target,
                arguments=dict(request.view_args or {}),
                instance=request,
                result=response,
            )
            recorder.record(current_app.view_functions.get(endpoint), call)
        return response

    return record
