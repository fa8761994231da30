"""Flask integration through Flask's own test client."""

from __future__ import annotations

import pytest

flask = pytest.importorskip("flask")

from auditaspect import audited  # noqa: E402
from auditaspect.contrib.flask import audit_endpoint, client_ip, init_app  # noqa: E402
from auditaspect.testing import capture_events  # noqa: E402


@audited("config_changed")
def change(key: str) -> str:
    return key


def make_app(**options):
    app = flask.Flask("test")

    @app.post("/config/<key>")
    def view(key: str):
        return {"changed": change(key)}

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    init_app(app, **options)
    return app


def test_requests_are_attributed():
    """Actor, client IP and a new correlation id reach events; the id is echoed."""
    app = make_app(actor=lambda: flask.request.headers.get("X-User"))
    with capture_events() as events:
        response = app.test_client().post(
            "/config/theme", headers={"X-User": "alice"}, environ_base={"REMOTE_ADDR": "192.0.2.4"}
        )
    assert 200 == response.status_code
    [event] = events
    assert ("alice", "192.0.2.4") == (event.actor, event.ip)
    assert response.headers["X-Request-ID"] == event.correlation_id
    assert 32 == len(event.correlation_id)


def test_incoming_request_id_is_kept_and_bad_ones_replaced():
    """A sane X-Request-ID is used as the correlation id; junk is replaced."""
    client = make_app().test_client()
    with capture_events() as events:
        kept = client.post("/config/a", headers={"X-Request-ID": "req-123"})
        junk = client.post("/config/b", headers={"X-Request-ID": "<script>" * 30})
    assert "req-123" == kept.headers["X-Request-ID"] == events[0].correlation_id
    assert junk.headers["X-Request-ID"] == events[1].correlation_id != "<script>"


def test_trusted_proxies_pick_the_right_forwarded_address():
    """With N trusted proxies the client is N hops from the right of X-Forwarded-For."""
    client = make_app(trusted_proxies=1).test_client()
    with capture_events() as events:
        client.post(
            "/config/a",
            headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.9"},
            environ_base={"REMOTE_ADDR": "10.0.0.1"},
        )
        client.post("/config/b", environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert ["198.51.100.9", "10.0.0.1"] == [e.ip for e in events]


def test_client_ip_rules():
    """Spoofed hops beyond the trusted proxies are ignored."""
    assert "1.1.1.1" == client_ip("1.1.1.1", "9.9.9.9", 0)
    assert "9.9.9.9" == client_ip("1.1.1.1", "6.6.6.6, 9.9.9.9", 1)
    assert "6.6.6.6" == client_ip("1.1.1.1", "6.6.6.6, 9.9.9.9", 2)
    assert "1.1.1.1" == client_ip("1.1.1.1", "9.9.9.9", 2)
    assert "1.1.1.1" == client_ip("1.1.1.1", None, 1)


def test_context_ends_with_the_request_and_actor_errors_are_logged(caplog):
    """A failing actor callable is logged; no context leaks into the next request."""
    from auditaspect import current_context

    def broken_actor():
        raise LookupError("no session")

    app = make_app(actor=broken_actor)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    with capture_events() as events:
        assert 200 == client.post("/config/a").status_code
        assert 500 == client.get("/boom").status_code
    assert events[0].actor is None
    assert "actor callable failed" in caplog.text
    assert current_context().correlation_id is None


def test_bad_options():
    """Nonsense options fail at init_app."""
    with pytest.raises(ValueError, match="trusted_proxies"):
        init_app(flask.Flask("x"), trusted_proxies=-1)
    with pytest.raises(TypeError, match="actor must be a callable"):
        init_app(flask.Flask("x"), actor="alice")


def test_example_flask_app(tmp_path):
    """examples/flask_app.py records a config change with the request's actor and IP."""
    from auditaspect import AuditRecord
    from flask_app import create_app

    app = create_app(f"sqlite:///{tmp_path / 'flask.db'}")
    response = app.test_client().post(
        "/config/theme",
        data={"value": "dark"},
        headers={"X-User": "alice"},
        environ_base={"REMOTE_ADDR": "203.0.113.50"},
    )
    assert 200 == response.status_code
    [row] = AuditRecord.select()
    assert ("config_changed", "alice", "203.0.113.50") == (row.event_type, row.actor, row.ip)
    assert response.headers["X-Request-ID"] == row.correlation_id
    app.extensions["auditaspect_sink"].close()


# -- audit_endpoint: a real blog app, audited without touching its views -----------------

BLOG_FORM = {"username": "alice", "password": "correct-horse-battery-staple"}


def blog_requests(post):
    """The issue's session: form GETs, register, a failed and a good login, a post."""
    post("GET", "/register", None, {})
    post("POST", "/register", BLOG_FORM, {})
    post("GET", "/login", None, {})
    post("POST", "/login", {**BLOG_FORM, "password": "wrong-guess-42"}, {})
    post("POST", "/login", BLOG_FORM, {"X-Request-ID": "req-login-1"})
    post("GET", "/posts", None, {})
    post("POST", "/posts", {"title": "hello"}, {"Authorization": "Bearer tok-alice-0123456789"})
    post("POST", "/posts", {"title": "forged"}, {"Authorization": "Bearer nope"})


EXPECTED_BLOG = [
    ("session_created", "success", None, None),
    ("auth_failure", "failure", "HTTP 401", None),
    ("auth_success", "success", None, "alice"),
    ("resource_modified", "success", None, "alice"),
]


def test_audit_endpoint_records_outcomes_skips_gets_and_sees_late_auth():
    """Issue 14 through Flask's test client: types, outcomes, no GETs, lazy actor, no password."""
    from flask_blog import create_app

    client = create_app().test_client()
    sent = []

    def post(method, path, form, headers):
        response = client.open(
            path,
            method=method,
            data=form,
            headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.20", **headers},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},
        )
        sent.append(response.status_code)

    with capture_events() as events:
        blog_requests(post)
    assert [200, 201, 200, 401, 200, 200, 200, 401] == sent
    assert EXPECTED_BLOG == [(e.event_type, e.outcome, e.error, e.actor) for e in events]
    assert {"198.51.100.20"} == {e.ip for e in events}  # the spoofed 6.6.6.6 is ignored
    assert "req-login-1" == events[2].correlation_id
    assert events[0].details["form"]["username"] == "alice"
    assert "correct-horse" not in repr([e.to_dict() for e in events])
    assert "wrong-guess" not in repr([e.to_dict() for e in events])
    assert {"title": "hello"} == dict(events[3].details)


def test_audit_endpoint_default_details_and_a_view_that_raises():
    """Without an extractor: method, path, status, URL args; a raising view is a failed 500."""
    app = flask.Flask("raising")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.post("/items/<int:item_id>/delete")
    def delete(item_id):
        if item_id == 13:
            raise RuntimeError("unlucky")
        return "deleted"

    audit_endpoint(app, "delete", "entity_deleted")
    client = app.test_client()
    with capture_events() as events:
        client.post("/items/7/delete")
        client.post("/items/13/delete")
    assert [
        ({"method": "POST", "path": "/items/7/delete", "status": 200, "item_id": 7}, None),
        ({"method": "POST", "path": "/items/13/delete", "status": 500, "item_id": 13}, "HTTP 500"),
    ] == [(dict(e.details), e.error) for e in events]
    assert events[0].target.endswith(".delete")


def test_audit_endpoint_custom_failed_and_methods():
    """A login that re-renders its form with 200 is caught by a custom failed= rule."""
    app = flask.Flask("rerender")

    @app.route("/login", methods=["POST", "PUT"])
    def login():
        ok = flask.request.form.get("password") == "good-password-1"
        return "welcome" if ok else "<p>Invalid password</p>"

    audit_endpoint(
        app,
        "login",
        "auth_success",
        methods=("post",),
        on_error="auth_failure",
        failed=lambda response: b"Invalid" in response.get_data() and "bad password",
    )
    client = app.test_client()
    with capture_events() as events:
        client.post("/login", data={"password": "good-password-1"})
        client.post("/login", data={"password": "x"})
        client.put("/login", data={"password": "x"})
    assert [("auth_success", None), ("auth_failure", "bad password")] == [
        (e.event_type, e.error) for e in events
    ]


def test_audit_endpoint_mistakes():
    """Unknown endpoint, double registration and bad rules fail at setup, in one line."""
    app = flask.Flask("mistakes")

    @app.post("/x")
    def x():
        return "x"

    with pytest.raises(ValueError, match=r"no endpoint 'auth\.login' \(known: static, x\)"):
        audit_endpoint(app, "auth.login", "auth_success")
    audit_endpoint(app, "x", "config_changed")
    with pytest.raises(ValueError, match="already audited"):
        audit_endpoint(app, "x", "config_changed")
    with pytest.raises(TypeError, match="failed must be callable"):
        audit_endpoint(app, "x", "config_changed", failed="yes")


def test_traceparent_gives_the_correlation_id():
    """A W3C traceparent's trace id is the correlation id when there is no X-Request-ID."""
    from flask_blog import create_app

    client = create_app().test_client()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    good = client.get("/whoami", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    zero = client.get("/whoami", headers={"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"})
    junk = client.get("/whoami", headers={"traceparent": "\x1b[31m-evil"})
    assert trace == good.get_json()["correlation_id"] == good.headers["X-Request-ID"]
    assert len({trace, zero.get_json()["correlation_id"], junk.get_json()["correlation_id"]}) == 3


def test_blog_under_gunicorn_with_two_workers(tmp_path):
    """The same session over HTTP against gunicorn (2 workers) writing one SQLite file."""
    import sys
    from pathlib import Path

    from auditaspect import verify
    from webservers import audit_rows, database_bytes, free_port, request, running

    db = tmp_path / "blog.db"
    port = free_port()
    tests_dir = str(Path(__file__).resolve().parent)
    command = [
        sys.executable,
        *("-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}"),
        *("--pythonpath", tests_dir, "--log-level", "warning"),
        "flask_blog:create_app()",
    ]
    statuses = []

    def post(method, path, form, headers):
        status, _, _ = request(
            port,
            method,
            path,
            form=form,
            headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.20", **headers},
        )
        statuses.append(status)

    # The file does not exist yet: the workers create it at the same moment,
    # as on a first deployment.
    with running(command, cwd=tmp_path, env={"AUDIT_URL": f"sqlite:///{db}"}, port=port):
        blog_requests(post)
    assert [200, 201, 200, 401, 200, 200, 200, 401] == statuses
    rows = audit_rows(db, "event_type, outcome, error, actor, ip")
    assert [(*e, "198.51.100.20") for e in EXPECTED_BLOG] == rows
    assert verify(f"sqlite:///{db}").ok
    stored = database_bytes(db)
    assert b"alice" in stored
    assert b"correct-horse" not in stored
    assert b"wrong-guess" not in stored


def test_the_lazy_actor_is_not_called_when_no_event_is_built():
    """init_app does not call the actor at the start of the request, only per event."""
    calls = []

    def actor():
        calls.append(1)
        return "alice"

    app = make_app(actor=actor)
    client = app.test_client()
    client.post("/config/a")  # nothing listening: no event, no actor lookup
    assert [] == calls
    with capture_events() as events:
        client.post("/config/b")
    assert [1] == calls
    assert "alice" == events[0].actor


def test_a_strict_sink_that_cannot_write_turns_the_response_into_a_500(tmp_path):
    """A locked database and a strict sink: the login is not answered 200 unaudited."""
    import peewee

    from auditaspect import PeeweeSink
    from test_sink import _locked

    app = flask.Flask("strict")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.post("/login")
    def login():
        return "welcome"

    audit_endpoint(app, "login", "auth_success")
    path = str(tmp_path / "locked.db")
    db = peewee.SqliteDatabase(path, timeout=0.05)
    with db.connection_context(), PeeweeSink(db, strict=True):
        blocker = _locked(path)
        try:
            assert 500 == app.test_client().post("/login").status_code
        finally:
            blocker.rollback()
            blocker.close()
        assert 200 == app.test_client().post("/login").status_code
