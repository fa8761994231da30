"""A FastAPI app as a user would write it, audited with the Starlette integration.

Authentication is a dependency (runs after the middleware) that sets
``request.state.audit_actor``. Served by Starlette's TestClient and by uvicorn
(`fastapi_blog:create_app` with --factory).
"""

from __future__ import annotations

import os
import threading

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from auditaspect import PeeweeSink, audited, current_context
from auditaspect.contrib.starlette import AuditMiddleware, audit_route

PASSWORD = "correct-horse-battery-staple"
TOKENS = {"tok-alice-0123456789": "alice"}
# Which thread each audit_route event was recorded on (the loop's is "loop").
RECORDED_ON: list[str] = []


class Credentials(BaseModel):
    username: str
    password: str


class Post(BaseModel):
    title: str


def current_user(request: Request) -> str:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    user = TOKENS.get(token)
    if user is None:
        raise HTTPException(status_code=401, detail="bad token")
    request.state.audit_actor = user  # seen by the lazy actor
    return user


@audited("resource_modified")
async def publish(title: str) -> str:
    return title


@audited("config_changed")
def set_theme(theme: str) -> str:
    return theme


def create_app(url: str | None = None) -> FastAPI:
    app = FastAPI()
    loop_thread: dict[str, int] = {}

    @app.get("/login")
    async def login_form() -> dict[str, str]:
        return {"form": "login"}

    @app.post("/login")
    async def login(credentials: Credentials, request: Request) -> dict[str, str]:
        loop_thread["id"] = threading.get_ident()
        if credentials.password != PASSWORD:
            raise HTTPException(status_code=401, detail="invalid credentials")
        request.state.audit_actor = credentials.username
        return {"welcome": credentials.username}

    @app.get("/posts")
    async def list_posts() -> dict[str, list[str]]:
        return {"posts": []}

    @app.post("/posts")
    async def create_post(post: Post, user: str = Depends(current_user)) -> dict[str, str]:
        return {"published": await publish(post.title)}

    @app.put("/theme/{theme}")
    def put_theme(theme: str, user: str = Depends(current_user)) -> dict[str, str]:
        return {"theme": set_theme(theme)}  # a sync endpoint: runs in the threadpool

    @app.get("/whoami")
    async def whoami() -> dict[str, str | None]:
        context = current_context()
        return {"ip": context.ip, "correlation_id": context.correlation_id}

    def where(call):
        same = threading.get_ident() == loop_thread.get("id")
        RECORDED_ON.append("loop" if same else "worker")
        return {"status": call.result.status_code}

    app.add_middleware(AuditMiddleware, trusted_proxies=1)
    audit_route(app, "login", "auth_success", on_error="auth_failure", extractor=where)
    url = url or os.environ.get("AUDIT_URL")
    if url:
        app.state.sink = PeeweeSink(url, mode=os.environ.get("AUDIT_MODE", "sync")).connect()
    return app
