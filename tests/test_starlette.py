"""Starlette/FastAPI: AuditMiddleware and audit_route, through TestClient and a real uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import webservers
from auditaspect import audited, verify
from auditaspect.contrib.starlette import AuditMiddleware, audit_route
from auditaspect.testing import capture_events

FORM = {"username": "alice", "password": "correct-horse-battery-staple"}
XFF = {"X-Forwarded-For": "6.6.6.6, 198.51.100.30"}
EXPECTED = [
    ("auth_failure", "failure", "HTTP 401", None),
    ("auth_success", "success", None, "alice"),
    ("resource_modified", "success", None, "alice"),
    ("config_changed", "success", None, "alice"),
]


def session(send):
    """GET form, failed login, good login, list (GET), post, a sync endpoint, a bad token."""
    auth = {"Authorization": "Bearer tok-alice-0123456789"}
    return [
        send("GET", "/login", None, {}),
        send("POST", "/login", {**FORM, "password": "wrong-guess-42"}, {}),
        send("POST", "/login", FORM, {"X-Request-ID": "req-fastapi-1"}),
        send("GET", "/posts", None, {}),
        send("POST", "/posts", {"title": "hello"}, auth),
        send("PUT", "/theme/dark", None, auth),
        send("POST", "/posts", {"title": "forged"}, {"Authorization": "Bearer nope"}),
    ]


def test_fastapi_through_the_test_client():
    """Outcomes, GETs skipped, actor from a dependency, proxy IP, correlation id, no password."""
    import fastapi_blog

    fastapi_blog.RECORDED_ON.clear()
    with TestClient(fastapi_blog.create_app(), client=("10.0.0.3", 5000)) as client:

        def send(method, path, body, headers):
            response = client.request(method, path, json=body, headers={**XFF, **headers})
            return response.status_code

        with capture_events() as events:
            statuses = session(send)
    assert [200, 401, 200, 200, 200, 200, 401] == statuses
    assert EXPECTED == [(e.event_type, e.outcome, e.error, e.actor) for e in events]
    assert {"198.51.100.30"} == {e.ip for e in events}
    assert "req-fastapi-1" == events[1].correlation_id
    assert "wrong-guess" not in repr([e.to_dict() for e in events])
    # audit_route records off the event loop, in a worker thread.
    assert ["worker", "worker"] == fastapi_blog.RECORDED_ON


def test_fastapi_under_uvicorn(tmp_path):
    """The same session over HTTP against a real uvicorn server writing SQLite."""
    db = tmp_path / "fastapi.db"
    port = webservers.free_port()
    command = [
        sys.executable,
        *("-m", "uvicorn", "--factory", "fastapi_blog:create_app"),
        *("--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers"),
        *("--app-dir", str(Path(__file__).resolve().parent), "--log-level", "warning"),
    ]
    env = {"AUDIT_URL": f"sqlite:///{db}", "AUDIT_MODE": "buffered"}
    headers_seen = []

    def send(method, path, body, headers):
        status, response_headers, _ = webservers.request(
            port, method, path, json_data=body, headers={**XFF, **headers}
        )
        headers_seen.append(response_headers.get("x-request-id"))
        return status

    with webservers.running(command, cwd=tmp_path, env=env, port=port):
        statuses = session(send)
    assert [200, 401, 200, 200, 200, 200, 401] == statuses
    assert "req-fastapi-1" == headers_seen[2]
    rows = webservers.audit_rows(db, "event_type, outcome, error, actor, ip, correlation_id")
    assert [(*e, "198.51.100.30") for e in EXPECTED] == [r[:5] for r in rows]
    assert "req-fastapi-1" == rows[1][5]
    assert verify(f"sqlite:///{db}").ok
    stored = webservers.database_bytes(db)
    assert b"correct-horse" not in stored
    assert b"wrong-guess" not in stored


# -- plain Starlette: its own authentication middleware, mounts, errors -------------------


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn):
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


@audited("entity_deleted")
def drop(name: str) -> str:
    return name


async def delete(request):
    if request.path_params["name"] == "boom":
        raise RuntimeError("storage offline")
    return PlainTextResponse(drop(request.path_params["name"]))


async def ping(request):
    return PlainTextResponse("pong")


def starlette_app(**options):
    app = Starlette(
        routes=[
            Mount("/api", routes=[Route("/items/{name}", delete, methods=["DELETE"])]),
            Route("/ping", ping),
        ],
        middleware=[
            Middleware(AuditMiddleware, **options),
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
        ],
    )
    audit_route(app, delete, "entity_deleted", methods=("DELETE",), on_error="auth_failure")
    return app


def test_starlette_user_mounts_default_details_and_errors():
    """scope['user'] is the actor; a mounted route is found; a raising endpoint is a failure."""
    client = TestClient(starlette_app(), raise_server_exceptions=False)
    with capture_events() as events:
        client.delete("/api/items/old", headers={"x-user": "root-admin"})
        assert 500 == client.delete("/api/items/boom", headers={"x-user": "root-admin"}).status_code
        evil = client.get("/ping", headers={"X-Request-ID": "\x1b]0;evil\x07"})
    assert "\x1b" not in evil.headers["x-request-id"]
    assert 32 == len(evil.headers["x-request-id"])
    service, route, failure = events
    assert ("entity_deleted", "root-admin") == (service.event_type, service.actor)
    assert {"method": "DELETE", "path": "/api/items/old", "status": 200, "name": "old"} == dict(
        route.details
    )
    assert ("auth_failure", "failure") == (failure.event_type, failure.outcome)
    assert "RuntimeError: storage offline" == failure.error
    assert service.correlation_id == route.correlation_id


def test_websockets_and_lifespan_pass_through():
    """Non-HTTP scopes are not touched."""
    from starlette.routing import WebSocketRoute

    async def echo(websocket):
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)], middleware=[Middleware(AuditMiddleware)])
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("hi")
        assert "hi" == ws.receive_text()


def test_route_helper_mistakes():
    """Unknown endpoints, double registration and bad options fail at setup."""
    app = starlette_app()
    with pytest.raises(ValueError, match="no route for endpoint 'nope'"):
        audit_route(app, "nope", "x")
    with pytest.raises(ValueError, match="already audited"):
        audit_route(app, delete, "x")
    with pytest.raises(TypeError, match="failed must be callable"):
        audit_route(app, ping, "x", failed=3)
    with pytest.raises(ValueError, match="trusted_proxies"):
        AuditMiddleware(app, trusted_proxies=-1)
    with pytest.raises(TypeError, match="actor must be a callable"):
        AuditMiddleware(app, actor="alice")


def test_custom_actor_and_header():
    """actor= takes the scope; header= renames the correlation header."""
    app = Starlette(
        routes=[Route("/ping", ping, methods=["POST"])],
        middleware=[
            Middleware(
                AuditMiddleware, actor=lambda scope: scope["path"], header="X-Correlation-ID"
            )
        ],
    )
    audit_route(app, "ping", "config_changed", methods=("post",))
    client = TestClient(app)
    with capture_events() as events:
        response = client.post("/ping", headers={"X-Correlation-ID": "corr-7"})
    assert ("/ping", "corr-7") == (events[0].actor, events[0].correlation_id)
    assert "corr-7" == response.headers["x-correlation-id"]


def test_a_strict_sink_that_cannot_write_answers_500(tmp_path):
    """audit_route with a strict sink on a locked database: no 200 goes out unaudited."""
    import peewee

    from auditaspect import PeeweeSink
    from test_sink import _locked

    app = Starlette(
        routes=[Route("/ping", ping, methods=["POST"])], middleware=[Middleware(AuditMiddleware)]
    )
    audit_route(app, ping, "config_changed")
    client = TestClient(app, raise_server_exceptions=False)
    path = str(tmp_path / "locked.db")
    # One connection for every thread: audit_route writes from Starlette's
    # threadpool, and a per-thread connection left to the garbage collector
    # is an error under Python 3.13's warnings in this suite.
    db = peewee.SqliteDatabase(path, timeout=0.05, thread_safe=False, check_same_thread=False)
    with db.connection_context(), PeeweeSink(db, strict=True):
        blocker = _locked(path)
        try:
            assert 500 == client.post("/ping").status_code
        finally:
            blocker.rollback()
            blocker.close()
        assert 200 == client.post("/ping").status_code
