"""What every web integration reads from a request: client address and correlation id.

No framework is imported here; the integrations pass in the header values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from ..decorator import Extractor, Predicate, Recorder
from ..events import new_id

__all__ = [
    "HEADER",
    "client_ip",
    "correlation_id",
    "http_failure",
    "method_set",
    "response_recorder",
]

HEADER = "X-Request-ID"
# An incoming request id is used only when it is a sane token: it lands in a
# column, in logs and in the response header.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted_proxies: int
) -> str | None:
    """The client's address, trusting only the last ``trusted_proxies`` hops.

    Each trusted reverse proxy appends the address it received from to
    ``X-Forwarded-For``; entries left of those were written by the client
    (or its proxies) and are never trusted. With fewer entries than trusted
    proxies the header did not come through them, and the peer's address is
    used.
    """
    if trusted_proxies <= 0 or not forwarded_for:
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if len(hops) < trusted_proxies:
        return remote_addr
    return hops[-trusted_proxies]


def correlation_id(request_id: str | None, traceparent: str | None = None) -> str:
    """The request's correlation id: a sane ``X-Request-ID``, a W3C trace id, or a new one.

    A ``traceparent`` header (W3C Trace Context) gives its 32-hex trace id,
    so audit rows join the traces of the same request; an all-zero trace id
    is invalid by that spec and ignored.
    """
    if request_id and _SANE_ID.fullmatch(request_id):
        return request_id
    if traceparent:
        match = _TRACEPARENT.fullmatch(traceparent.strip())
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    return new_id()


def http_failure(status_code: int) -> bool | str:
    """The default ``failed`` rule of the web helpers: 4xx and 5xx, as ``"HTTP 401"``."""
    return status_code >= 400 and f"HTTP {status_code}"


def method_set(methods: Collection[str]) -> frozenset[str]:
    """HTTP methods as the upper-case names requests carry."""
    return frozenset(method.upper() for method in methods)


def response_recorder(
    target: str,
    event_type: str,
    *,
    on_error: str | None,
    failed: Callable[[Any], bool | str] | None,
    extractor: Extractor | None,
    summary: Extractor,
    when: Predicate | None,
) -> Recorder:
    """The Recorder of a web helper: ``failed`` judges the response (``call.result``).

    ``summary`` is the extractor used when the user gave none. A ``failed``
    that is not callable is a ``TypeError``, as for ``@audited``.
    """
    if failed is not None and not callable(failed):
        raise TypeError(f"failed must be callable or None, not {type(failed).__name__}")
    check = failed
    return Recorder(
        target,
        event_type,
        extractor if extractor is not None else summary,
        on_error,
        when=when,
        failed=None if check is None else (lambda call: check(call.result)),
    )
