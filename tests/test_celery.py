"""Celery: the audit context travels with a task, through a real Redis broker and worker.

The worker is a real ``celery worker`` process on Debian's redis-server
(started by .ci/run and scripts/redis-test-server). An event recorded in the
task names the user whose request queued it and carries that request's
correlation id; a task published without a context records none, and a
context never leaks from one task into the next.
"""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

celery = pytest.importorskip("celery")

from auditaspect import audit_context  # noqa: E402
from auditaspect.contrib import celery as audit_celery  # noqa: E402
from auditaspect.testing import capture_events  # noqa: E402
from webservers import audit_rows, running  # noqa: E402

TASKS = """
import os

from celery import Celery

from auditaspect import PeeweeSink, audited, emit
from auditaspect.contrib.celery import init_celery

app = Celery("audit_tasks", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue=os.environ["QUEUE"],
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
init_celery()

if os.environ.get("AUDIT_WORKER"):
    sink = PeeweeSink(os.environ["AUDIT_URL"]).connect()


@audited("entity_deleted")
def delete(entity):
    return entity


@app.task
def purge(entity):
    delete(entity)
    return entity


@app.task
def fails(entity):
    emit("entity_deleted", entity=entity, outcome="failure")
    raise RuntimeError("refused")
"""


@pytest.fixture
def worker(tmp_path, redis_server, monkeypatch):
    """A real Celery worker on its own queue; yields (tasks module, audit database path)."""
    queue = f"audit-{uuid.uuid4().hex}"
    db = tmp_path / "worker.db"
    (tmp_path / "audit_tasks.py").write_text(textwrap.dedent(TASKS), encoding="utf-8")
    env = {"REDIS_URL": redis_server, "QUEUE": queue, "AUDIT_URL": f"sqlite:///{db}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)  # Celery's Django fixup
    monkeypatch.syspath_prepend(str(tmp_path))
    command = [
        sys.executable,
        *("-m", "celery", "-A", "audit_tasks", "worker"),
        *("--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", "-Q", queue),
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]
    with running(
        command, cwd=tmp_path, env={**env, "AUDIT_WORKER": "1"}, ready="ready.", timeout=90
    ):
        import audit_tasks

        try:
            yield audit_tasks, db
        finally:
            audit_tasks.app.close()
            sys.modules.pop("audit_tasks", None)


def rows(db):
    return audit_rows(db, "details, actor, ip, correlation_id, outcome")


def test_task_events_name_the_user_who_queued_them(worker):
    """actor, ip and correlation id of the publishing request reach the task's events."""
    tasks, db = worker
    with audit_context(actor="alice", ip="192.0.2.7", correlation_id="req-42"):
        assert "p1" == tasks.purge.delay("p1").get(timeout=60)
    # A lazy actor is resolved when the task is published.
    user = {"name": None}
    with audit_context(actor=lambda: user["name"], correlation_id="req-43"):
        user["name"] = "bob"
        assert "p2" == tasks.purge.delay("p2").get(timeout=60)
    # No context: none recorded, and nothing left over from the tasks before.
    assert "p3" == tasks.purge.delay("p3").get(timeout=60)
    with audit_context(actor="carol"), pytest.raises(RuntimeError, match="refused"):
        tasks.fails.delay("p4").get(timeout=60, propagate=True)
    assert "p5" == tasks.purge.delay("p5").get(timeout=60)
    assert [
        ('{"entity":"p1"}', "alice", "192.0.2.7", "req-42", "success"),
        ('{"entity":"p2"}', "bob", None, "req-43", "success"),
        ('{"entity":"p3"}', None, None, None, "success"),
        ('{"entity":"p4"}', "carol", None, None, "failure"),
        ('{"entity":"p5"}', None, None, None, "success"),
    ] == rows(db)


def test_forged_or_malformed_headers_are_ignored_value_by_value(worker):
    """A message whose context header is not what we write records only sane text values."""
    tasks, db = worker
    forged = {"actor": 5, "ip": "x" * 100_000, "correlation_id": "ok-1", "admin": True}
    tasks.purge.apply_async(("f1",), headers={audit_celery.HEADER: forged}).get(timeout=60)
    tasks.purge.apply_async(("f2",), headers={audit_celery.HEADER: "junk"}).get(timeout=60)
    assert [
        ('{"entity":"f1"}', None, None, "ok-1", "success"),
        ('{"entity":"f2"}', None, None, None, "success"),
    ] == rows(db)


def test_handlers_in_process(monkeypatch):
    """The publish/prerun/postrun handlers on a real Celery task's request context."""
    app = celery.Celery("inproc", set_as_current=False)
    audit_celery.init_celery()
    audit_celery.init_celery()  # idempotent

    @app.task
    def job():
        return None

    headers: dict = {}
    audit_celery._publish(headers=headers)
    assert {} == headers  # no context, no header
    with audit_context(actor=lambda: "dora", correlation_id="c-1"):
        audit_celery._publish(headers=headers)
    assert {"actor": "dora", "ip": None, "correlation_id": "c-1"} == headers[audit_celery.HEADER]
    audit_celery._publish(headers=None)  # some publishers send none

    from auditaspect import emit

    job.push_request(**headers)
    try:
        audit_celery._enter(task_id="t1", task=job)
        with capture_events() as events:
            emit("config_changed", key="k")
        audit_celery._leave(task_id="t1")
        with capture_events() as after:
            emit("config_changed", key="k")
    finally:
        job.pop_request()
    assert [("dora", "c-1")] == [(e.actor, e.correlation_id) for e in events]
    assert [(None, None)] == [(e.actor, e.correlation_id) for e in after]
    audit_celery._enter(task_id=None, task=job)  # nothing to restore
    audit_celery._leave(task_id="unknown")


@pytest.mark.parametrize("framework", ["flask", "starlette", "django"])
def test_a_web_request_reaches_its_task(worker, framework, request):
    """Each framework's request context (actor, correlation id) is in the task's event."""
    tasks, db = worker
    headers = {"X-Request-ID": f"req-{framework}-9", "X-User": "erin"}
    if framework == "flask":
        flask = pytest.importorskip("flask")
        from auditaspect.contrib.flask import init_app

        app = flask.Flask("queueing")
        app.post("/queue")(lambda: {"done": tasks.purge.delay("q").get(timeout=60)})
        init_app(app, actor=lambda: flask.request.headers.get("X-User"))
        status = app.test_client().post("/queue", headers=headers).status_code
    elif framework == "starlette":
        pytest.importorskip("starlette")
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient

        from auditaspect.contrib.starlette import AuditMiddleware

        def endpoint(request):  # sync: Starlette runs it in its threadpool
            return JSONResponse({"done": tasks.purge.delay("q").get(timeout=60)})

        def actor(scope):
            return dict(scope["headers"]).get(b"x-user", b"").decode()

        app = Starlette(
            routes=[Route("/queue", endpoint, methods=["POST"])],
            middleware=[Middleware(AuditMiddleware, actor=actor)],
        )
        status = TestClient(app).post("/queue", headers=headers).status_code
    else:
        client = request.getfixturevalue("django_client")
        status = client.post("/queue", headers=headers).status_code
    assert 200 == status
    [(details, actor, _, correlation, outcome)] = rows(db)
    assert ('{"entity":"q"}', "erin", f"req-{framework}-9", "success") == (
        details,
        actor,
        correlation,
        outcome,
    )
