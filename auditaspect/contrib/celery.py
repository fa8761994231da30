"""Celery integration: the audit context travels with a task.

    from auditaspect.contrib.celery import init_celery
    init_celery()          # in the module that creates your Celery app (client and worker)

When a task is published, the publishing thread's audit context (actor, ip,
correlation id, lazy values resolved then) is written into the message
headers; the worker restores it for the task's run and clears it afterwards,
so an event recorded in the task names the user whose request queued it, and
shares that request's correlation id. A task published with no context runs
with none; a header that is not what we write (a forged or malformed message)
is ignored, value by value.

Anyone who can publish to the broker can claim any actor: the broker is part
of the trust boundary, as it is for the task arguments themselves.
Install with ``pip install 'auditaspect[celery]'``.
"""

from __future__ import annotations

from typing import Any

from ..context import audit_context, current_context
from ..events import COLUMN_LIMITS

__all__ = ["HEADER", "init_celery"]

HEADER = "auditaspect_context"
_FIELDS = ("actor", "ip", "correlation_id")
# task id -> the context entered for its run (prerun and postrun run in the
# same worker thread, one task at a time per thread).
_active: dict[str, audit_context] = {}


def init_celery() -> None:
    """Connect the publish/prerun/postrun handlers (idempotent, held strongly).

    Call it in the client and in the worker: importing the module that creates
    the Celery app is the usual place.
    """
    from celery import signals

    uid = "auditaspect.contrib.celery."
    signals.before_task_publish.connect(_publish, weak=False, dispatch_uid=uid + "publish")
    signals.task_prerun.connect(_enter, weak=False, dispatch_uid=uid + "enter")
    signals.task_postrun.connect(_leave, weak=False, dispatch_uid=uid + "leave")


def _publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    context = current_context()
    values = {name: getattr(context, name) for name in _FIELDS}
    if any(value is not None for value in values.values()):
        headers[HEADER] = values


def _clean(raw: object) -> dict[str, str | None]:
    """The header's values that are text of a sane size; anything else is dropped."""
    data = raw if isinstance(raw, dict) else {}
    limit = max(COLUMN_LIMITS.values())
    return {
        name: value if isinstance(value, str) and 0 < len(value) <= limit else None
        for name in _FIELDS
        for value in (data.get(name),)
    }


def _enter(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    raw = request.get(HEADER) if request is not None else None
    if raw is None or task_id is None:
        return
    context = audit_context(**_clean(raw))
    context.__enter__()
    _active[task_id] = context


def _leave(task_id: str | None = None, **_: Any) -> None:
    context = _active.pop(task_id or "", None)
    if context is not None:
        context.__exit__(None, None, None)
