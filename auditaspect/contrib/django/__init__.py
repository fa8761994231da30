"""Django integration: middleware, a view decorator, an app that opens the sink.

    # settings.py
    INSTALLED_APPS = [..., "auditaspect.contrib.django"]
    MIDDLEWARE = [..., "auditaspect.contrib.django.AuditMiddleware"]  # after auth
    AUDITASPECT = {
        "DATABASE_URL": "sqlite:///audit.db",      # the sink opened at startup
        "SINK_OPTIONS": {"mode": "buffered"},      # PeeweeSink keyword arguments
        "TRUSTED_PROXIES": 1,                      # your reverse proxies
    }

    # views.py
    from auditaspect.contrib.django import audit_view

    @audit_view("auth_success", on_error="auth_failure")
    def login(request): ...

:class:`AuditMiddleware` runs each request inside an
:func:`~auditaspect.audit_context`. The actor is lazy: ``request.user`` is
read when an event is built, so a user that Django REST framework's
authenticators or a JWT check set later in the request is seen (DRF sets the
Django request's ``user`` too). The ip and correlation id follow the same
rules as the other integrations (trusted proxies, ``X-Request-ID`` or W3C
``traceparent``, echoed in ``X-Request-ID``). ``python manage.py auditaspect
query ...`` runs the read-only CLI on ``AUDITASPECT["DATABASE_URL"]``.
Install with ``pip install 'auditaspect[django]'``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from ...context import pop_context, push_context
from ...decorator import Extractor, Predicate
from ...events import Call
from .._http import (
    HEADER,
    client_ip,
    correlation_id,
    http_failure,
    method_set,
    response_recorder,
)

__all__ = ["AuditMiddleware", "audit_view", "request_user", "settings"]

V = TypeVar("V", bound=Callable[..., Any])


def settings() -> dict[str, Any]:
    """The ``AUDITASPECT`` dict of the Django settings (empty when unset)."""
    from django.conf import settings as django_settings

    value = getattr(django_settings, "AUDITASPECT", None) or {}
    if not isinstance(value, dict):
        raise TypeError("settings.AUDITASPECT must be a dict")
    return value


def request_user(request: Any) -> str | None:
    """The authenticated user's username, or None (anonymous, no auth middleware)."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    get_username = getattr(user, "get_username", None)
    return str(get_username() if callable(get_username) else user)


class AuditMiddleware:
    """Run each request inside an audit context (see the module doc).

    Options come from ``settings.AUDITASPECT``: ``TRUSTED_PROXIES`` (default
    0), ``ACTOR`` (a ``"module:function"`` taking the request; default the
    authenticated user's username) and ``HEADER`` (default ``X-Request-ID``).
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        config = settings()
        self.get_response = get_response
        self.trusted_proxies = int(config.get("TRUSTED_PROXIES", 0))
        if self.trusted_proxies < 0:
            raise ValueError("AUDITASPECT['TRUSTED_PROXIES'] must be >= 0")
        actor = config.get("ACTOR")
        if isinstance(actor, str):
            from django.utils.module_loading import import_string

            actor = import_string(actor.replace(":", "."))
        self.actor: Callable[[Any], object] = actor or request_user
        self.header = str(config.get("HEADER", HEADER))
        self._meta_key = "HTTP_" + self.header.upper().replace("-", "_")

    def __call__(self, request: Any) -> Any:
        meta = request.META
        correlation = correlation_id(meta.get(self._meta_key), meta.get("HTTP_TRACEPARENT"))
        ip = client_ip(
            meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"), self.trusted_proxies
        )
        actor = self.actor
        # The callable, not its value: request.user is read when an event is built.
        token = push_context(lambda: actor(request), ip, correlation)
        try:
            response = self.get_response(request)
        finally:
            pop_context(token)
        response[self.header] = correlation
        return response


def audit_view(
    event_type: str,
    *,
    methods: Collection[str] = ("POST",),
    on_error: str | None = None,
    failed: Callable[[Any], bool | str] | None = lambda r: http_failure(r.status_code),
    extractor: Extractor | None = None,
    when: Predicate | None = None,
) -> Callable[[V], V]:
    """Audit a Django view's ``methods`` requests with their response.

    After the view returns, an event of ``event_type`` goes through the
    ``@audited`` pipeline; ``failed(response)`` (default: status 400 or more,
    as ``"HTTP 403"``) marks a failure, sent as ``on_error`` when given, else
    as ``event_type``, with outcome ``"failure"``. A view that raises is
    recorded as a failure with the exception, then the exception propagates.
    ``extractor(call)``: ``call.arguments`` are the view's URL keyword
    arguments, ``call.instance`` the request (``request.POST`` is readable;
    redaction removes secrets by key and pattern), ``call.result`` the
    response. Without one the details are the method, path, status and URL
    arguments, never the body. Other methods (a login form's GET) are not
    recorded. Works on ``async def`` views too (recorded after the await).
    For class-based views use ``method_decorator`` or wrap ``as_view()``.
    """
    allowed = method_set(methods)

    def decorate(view: V) -> V:
        recorder = response_recorder(
            f"{view.__module__}.{view.__qualname__}",
            event_type,
            on_error=on_error,
            failed=failed,
            extractor=extractor,
            summary=_summary,
            when=when,
        )

        def record(request: Any, kwargs: dict[str, Any], response: Any) -> None:
            call = Call(target=recorder.target, arguments=kwargs, instance=request, result=response)
            recorder.record(view, call)

        def record_error(request: Any, kwargs: dict[str, Any], exc: Exception) -> None:
            call = Call(target=recorder.target, arguments=kwargs, instance=request, error=exc)
            recorder.record_error(view, call)

        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                if request.method not in allowed or not recorder.listening():
                    return await view(request, *args, **kwargs)
                try:
                    response = await view(request, *args, **kwargs)
                except Exception as exc:
                    record_error(request, kwargs, exc)
                    raise
                record(request, kwargs, response)
                return response

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            if request.method not in allowed or not recorder.listening():
                return view(request, *args, **kwargs)
            try:
                response = view(request, *args, **kwargs)
            except Exception as exc:
                record_error(request, kwargs, exc)
                raise
            record(request, kwargs, response)
            return response

        return wrapper  # type: ignore[return-value]

    return decorate


def _summary(call: Call) -> dict[str, Any]:
    request = call.instance
    status = getattr(call.result, "status_code", None)
    return {"method": request.method, "path": request.path, "status": status, **call.arguments}
