"""Flask integration through Flask's own test client."""

from __future__ import annotations

import pytest

flask = pytest.importorskip("flask")

from auditaspect import audited  # noqa: E402
from auditaspect.contrib.flask import client_ip, init_app  # noqa: E402
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
