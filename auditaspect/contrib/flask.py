"""Flask integration: every request runs inside an :func:`audit_context`.

    from auditaspect.contrib.flask import init_app
    init_app(app, actor=lambda: current_user.name if current_user else None)

For each request this sets the **actor** (your callable's answer), the client
**ip** and a **correlation id**, so decorated services called from views are
attributed without extra code:

- ip: ``request.remote_addr``; with ``trusted_proxies=N`` (your N reverse
  proxies append to ``X-Forwarded-For``), the address N entries from the
  right of that header. Entries a client wrote itself are never trusted.
- correlation id: the incoming ``X-Request-ID`` (if it is a sane token, at most
  128 characters of letters, digits, ``-_.:``), else a new random one; echoed in
  the response's ``X-Request-ID``.

An actor callable that raises is logged and the request goes on with no actor.
Install with ``pip install 'auditaspect[flask]'``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request

from ..context import audit_context

__all__ = ["init_app"]

logger = logging.getLogger("auditaspect")

HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_KEY = "_auditaspect_context"


def client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted_proxies: int
) -> str | None:
    """The client's address, trusting only the last ``trusted_proxies`` hops."""
    if trusted_proxies <= 0 or not forwarded_for:
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if len(hops) < trusted_proxies:
        return remote_addr  # fewer hops than proxies: the header is not ours
    return hops[-trusted_proxies]


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
        incoming = request.headers.get(header, "")
        correlation_id = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        who = None
        if actor is not None:
            try:
                value = actor()
                who = None if value is None else str(value)
            except Exception:
                logger.exception("the audit actor callable failed; recording no actor")
        ip = client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"), trusted_proxies)
        context = audit_context(actor=who, ip=ip, correlation_id=correlation_id)
        context.__enter__()
        setattr(g, _KEY, (context, correlation_id))

    def echo(response: Response) -> Response:
        state = getattr(g, _KEY, None)
        if state is not None:
            response.headers[header] = state[1]
        return response

    def leave(_: BaseException | None) -> None:
        state = g.pop(_KEY, None)
        if state is not None:
            state[0].__exit__(None, None, None)

    app.before_request(enter)
    app.after_request(echo)
    app.teardown_request(leave)
