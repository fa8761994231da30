"""Django: AuditMiddleware, audit_view, the app config and the management command.

In process through Django's test client (the project in tests/djangoblog,
with no sink: events are captured), and for real under gunicorn with two
workers writing one SQLite file through the sink the app config opens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

from auditaspect import PeeweeSink, verify
from auditaspect.testing import capture_events
from webservers import audit_rows, database_bytes, free_port, request, running

TESTS = Path(__file__).resolve().parent
FORM = {"username": "alice", "password": "correct-horse-battery-staple"}
XFF = {"X-Forwarded-For": "6.6.6.6, 198.51.100.40"}
EXPECTED = [
    ("session_created", "success", None, None),
    ("auth_failure", "failure", "HTTP 401", None),
    ("auth_success", "success", None, "alice"),
    ("resource_modified", "success", None, "alice"),
]
STATUSES = [200, 201, 200, 401, 200, 200, 200, 401]


def session(send):
    """The issue's session: form GETs, register, failed and good login, list, post, bad token."""
    auth = {"Authorization": "Bearer tok-alice-0123456789"}
    return [
        send("GET", "/register", None, {}),
        send("POST", "/register", FORM, {}),
        send("GET", "/login", None, {}),
        send("POST", "/login", {**FORM, "password": "wrong-guess-42"}, {}),
        send("POST", "/login", FORM, {"X-Request-ID": "req-django-1"}),
        send("GET", "/posts", None, {}),
        send("POST", "/posts", {"title": "hello"}, auth),
        send("POST", "/posts", {"title": "forged"}, {"Authorization": "Bearer nope"}),
    ]


def test_django_through_the_test_client(django_client):
    """Outcomes, GETs skipped, actor set by in-view authentication, proxy IP, no password."""

    def send(method, path, form, headers):
        response = django_client.generic(
            method,
            path,
            data="" if form is None else "&".join(f"{k}={v}" for k, v in form.items()),
            content_type="application/x-www-form-urlencoded",
            headers={**XFF, **headers},
        )
        return response.status_code

    with capture_events() as events:
        statuses = session(send)
    assert STATUSES == statuses
    assert EXPECTED == [(e.event_type, e.outcome, e.error, e.actor) for e in events]
    assert {"198.51.100.40"} == {e.ip for e in events}
    assert "req-django-1" == events[2].correlation_id
    assert "alice" == events[0].details["form"]["username"]
    assert "correct-horse" not in repr([e.to_dict() for e in events])


def test_a_raising_view_is_a_recorded_failure(django_client):
    """A view that raises is recorded as a failure with its exception, then re-raised."""
    django_client.raise_request_exception = True
    with capture_events() as events:
        with pytest.raises(RuntimeError, match="storage offline"):
            django_client.post("/items/boom/delete")
        assert 200 == django_client.post("/items/old/delete").status_code
    assert [("failure", "RuntimeError: storage offline"), ("success", None)] == [
        (e.outcome, e.error) for e in events
    ]
    assert {"method": "POST", "path": "/items/old/delete", "status": 200, "name": "old"} == dict(
        events[1].details
    )


def test_correlation_headers(django_client):
    """X-Request-ID is echoed; a traceparent's trace id is used; junk is replaced."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    good = django_client.get("/whoami", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    junk = django_client.get("/whoami", headers={"X-Request-ID": "\x1b[2J" * 5})
    assert trace == json.loads(good.content)["correlation_id"] == good["X-Request-ID"]
    assert "\x1b" not in junk["X-Request-ID"]
    assert json.loads(junk.content)["correlation_id"] == junk["X-Request-ID"]


def test_middleware_options(django_client, settings_override):
    """ACTOR as a dotted path, a custom header, and a bad TRUSTED_PROXIES fail clearly."""
    from auditaspect.contrib.django import AuditMiddleware

    settings_override(ACTOR="djangoblog.views:form_details", HEADER="X-Correlation-ID")
    middleware = AuditMiddleware(lambda request: None)
    assert "X-Correlation-ID" == middleware.header
    settings_override(TRUSTED_PROXIES=-1)
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        AuditMiddleware(lambda request: None)


@pytest.fixture
def settings_override():
    from django.conf import settings

    saved = dict(settings.AUDITASPECT)

    def change(**values):
        settings.AUDITASPECT.update(values)

    yield change
    settings.AUDITASPECT.clear()
    settings.AUDITASPECT.update(saved)


def django_env(db: Path) -> dict[str, str]:
    return {
        "AUDIT_URL": f"sqlite:///{db}",
        "DJANGO_SETTINGS_MODULE": "djangoblog.settings",
        "PYTHONPATH": str(TESTS),
    }


def test_django_under_gunicorn_with_two_workers(tmp_path):
    """The same session against gunicorn (2 workers); the app config opens the sink."""
    db = tmp_path / "django.db"
    port = free_port()
    command = [
        sys.executable,
        *("-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning"),
        "djangoblog.wsgi:application",
    ]

    def send(method, path, form, headers):
        status, _, _ = request(port, method, path, form=form, headers={**XFF, **headers})
        return status

    # The file does not exist yet: the workers create it at the same moment,
    # as on a first deployment.
    with running(command, cwd=tmp_path, env=django_env(db), port=port):
        statuses = session(send)
    assert STATUSES == statuses
    rows = audit_rows(db, "event_type, outcome, error, actor, ip")
    assert [(*e, "198.51.100.40") for e in EXPECTED] == rows
    assert verify(f"sqlite:///{db}").ok
    stored = database_bytes(db)
    assert b"correct-horse" not in stored
    assert b"wrong-guess" not in stored

    # The management command reads the same log, read-only, from the settings' URL.
    os.chmod(db, 0o444)
    done = subprocess.run(
        [sys.executable, "-m", "django", "auditaspect", "query", "--format", "json"],
        env={**os.environ, **django_env(db)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert ["session_created", "auth_failure", "auth_success", "resource_modified"] == [
        json.loads(line)["event_type"] for line in done.stdout.splitlines()
    ]
    verified = subprocess.run(
        [sys.executable, "-m", "django", "auditaspect", "verify"],
        env={**os.environ, **django_env(db)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert 0 == verified.returncode, verified.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "django", "auditaspect", "query", "--since", "yesterday-ish"],
        env={**os.environ, **django_env(db)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert 2 == bad.returncode
    assert 1 == len(bad.stderr.strip().splitlines())


def test_management_command_through_call_command(django_client, tmp_path, settings_override):
    """call_command('auditaspect', ...) runs the CLI; a failure is a CommandError."""
    from django.core.management import CommandError, call_command

    from auditaspect import emit

    db = tmp_path / "cmd.db"
    with PeeweeSink(f"sqlite:///{db}"):
        emit("config_changed", key="theme")
    settings_override(DATABASE_URL=f"sqlite:///{db}")
    import io

    out = io.StringIO()
    call_command("auditaspect", "query", "--format", "json", stdout=out)
    assert "config_changed" == json.loads(out.getvalue())["event_type"]
    with pytest.raises(CommandError, match="status 2"):
        call_command("auditaspect", "query", "--since", "never", stdout=io.StringIO())


def test_app_config_opens_the_sink_from_settings(django_client, tmp_path, settings_override):
    """ready() connects a PeeweeSink on AUDITASPECT['DATABASE_URL'] with SINK_OPTIONS."""
    from django.apps import apps

    db = tmp_path / "ready.db"
    settings_override(DATABASE_URL=f"sqlite:///{db}", SINK_OPTIONS={"mode": "buffered"})
    config = apps.get_app_config("auditaspect")
    config.ready()
    try:
        assert config.sink is not None
        assert "buffered" == config.sink.mode
        with capture_events():
            django_client.post("/items/x/delete")
        config.sink.flush()
    finally:
        config.sink.close()
        config.sink = None
    assert 1 == len(audit_rows(db, "event_type"))


def test_audit_view_on_an_async_view(django_client):
    """An async def view is audited after its await, success and failure alike."""
    import asyncio

    from django.http import HttpResponse
    from django.test import RequestFactory

    from auditaspect.contrib.django import audit_view

    @audit_view("auth_success", on_error="auth_failure")
    async def login(request):
        await asyncio.sleep(0)
        if request.POST.get("password") == "boom":
            raise RuntimeError("backend down")
        return HttpResponse(status=200 if request.POST.get("password") == "ok" else 403)

    factory = RequestFactory()
    with capture_events() as events:
        asyncio.run(login(factory.post("/login", {"password": "ok"})))
        asyncio.run(login(factory.post("/login", {"password": "no"})))
        asyncio.run(login(factory.get("/login")))
        with pytest.raises(RuntimeError, match="backend down"):
            asyncio.run(login(factory.post("/login", {"password": "boom"})))
    assert [
        ("auth_success", None),
        ("auth_failure", "HTTP 403"),
        ("auth_failure", "RuntimeError: backend down"),
    ] == [(e.event_type, e.error) for e in events]
