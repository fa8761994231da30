"""A Celery task whose audit events name the user whose request queued it.

    python -m pip install '.[celery]' 'celery[redis]'
    export REDIS_URL=redis://127.0.0.1:6379/0
    celery -A celery_tasks worker --loglevel=INFO      # in examples/, one terminal
    python examples/celery_tasks.py                    # another: queue one task
    auditaspect query --db sqlite:///audit.db

init_celery() writes the audit context into each task message's headers and
restores it in the worker; the service called by the task is audited as
usual (planning.py). Both sides import this module, so both call init_celery().
"""

from __future__ import annotations

import os

from celery import Celery, signals

from auditaspect import PeeweeSink, audit_context
from auditaspect.contrib.celery import init_celery
from planning import EntityService, Store

app = Celery(
    "celery_tasks",
    broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
init_celery()

store = Store(entities={("project", "old"): ["repo:old", "ci:old"]})


@signals.worker_process_init.connect
def open_sink(**_: object) -> None:
    """Each worker process writes the audit log (the sink is opened after the fork)."""
    global sink
    sink = PeeweeSink(os.environ.get("AUDIT_URL", "sqlite:///audit.db")).connect()


@app.task
def delete_project(name: str) -> list[str]:
    return EntityService(store).delete("project", name)


if __name__ == "__main__":
    # In a web app, the framework integration sets this context per request.
    with audit_context(actor="alice", ip="192.0.2.10", correlation_id="req-1234"):
        result = delete_project.delay("old")
    print("released:", result.get(timeout=30))
