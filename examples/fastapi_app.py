"""A FastAPI app audited with the Starlette integration: no audit code in the endpoints.

    python -m pip install '.[starlette]' fastapi uvicorn
    python examples/fastapi_app.py                # serves on 127.0.0.1:8000
    curl -X POST localhost:8000/login -H 'Content-Type: application/json' \\
         -d '{"username": "alice", "password": "wrong"}'
    curl -X PUT localhost:8000/config/theme -H 'Authorization: Bearer demo-token-alice' \\
         -H 'Content-Type: application/json' -d '{"value": "dark"}'
    auditaspect query --db sqlite:///audit.db

The login endpoint is audited by audit_route() (a 401 is an auth_failure);
the config change by the @audited service in planning.py. Authentication is a
dependency that runs after the middleware: it sets request.state.audit_actor,
which the middleware's lazy actor reads when the event is built.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from auditaspect import PeeweeSink
from auditaspect.contrib.starlette import AuditMiddleware, audit_route
from planning import ConfigService, Store

USERS = {"alice": "correct-horse-battery-staple"}
TOKENS = {"demo-token-alice": "alice"}


class Credentials(BaseModel):
    username: str
    password: str


class Value(BaseModel):
    value: str


def current_user(request: Request) -> str:
    user = TOKENS.get(request.headers.get("authorization", "").removeprefix("Bearer "))
    if user is None:
        raise HTTPException(status_code=401, detail="bad token")
    request.state.audit_actor = user
    return user


def create_app(database_url: str = "sqlite:///audit.db") -> FastAPI:
    app = FastAPI()
    config = ConfigService(Store())

    @app.post("/login")
    async def login(credentials: Credentials, request: Request) -> dict[str, str]:
        if USERS.get(credentials.username) != credentials.password:
            raise HTTPException(status_code=401, detail="invalid credentials")
        request.state.audit_actor = credentials.username
        return {"token": f"demo-token-{credentials.username}"}

    @app.put("/config/{key}")
    def set_config(key: str, body: Value, user: str = Depends(current_user)) -> dict[str, object]:
        return {"key": key, "previous": config.set_value(key, body.value, user=user)}

    app.add_middleware(AuditMiddleware, trusted_proxies=0)
    audit_route(app, "login", "auth_success", on_error="auth_failure")
    # Buffered: the event loop only queues; a thread writes (docs/performance.md).
    app.state.audit_sink = PeeweeSink(database_url, mode="buffered").connect()
    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=8000)
