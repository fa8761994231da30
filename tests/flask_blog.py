"""A small Flask blog as a user would write it: register, login, posts; audited from outside.

Authentication runs in the views (a bearer token checked in the view, like a
JWT extension), after init_app's request hook: the lazy actor must see it.
Served by the Flask test client and by gunicorn (`flask_blog:create_app()`).
"""

from __future__ import annotations

import os

from flask import Flask, abort, g, request

from auditaspect import PeeweeSink, audited
from auditaspect.contrib.flask import audit_endpoint, init_app

PASSWORD = "correct-horse-battery-staple"
TOKENS = {"tok-alice-0123456789": "alice"}


@audited("resource_modified", lambda call: {"title": call.arguments["title"]})
def publish(title: str) -> str:
    return title


def login_details(call):
    # The whole form, password included: redaction must keep it out of the log.
    return {"username": call.instance.form.get("username"), "form": dict(call.instance.form)}


def create_app(url: str | None = None) -> Flask:
    app = Flask(__name__)

    @app.route("/register", methods=["GET", "POST"])
    def register():
        if request.method == "GET":
            return "<form method=post>register</form>"
        return "registered", 201

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if request.method == "GET":
            return "<form method=post>login</form>"
        if request.form.get("password") != PASSWORD:
            return "invalid credentials", 401
        g.user = request.form["username"]
        return "welcome"

    @app.route("/posts", methods=["GET", "POST"])
    def posts():
        if request.method == "GET":
            return {"posts": []}
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        g.user = TOKENS.get(token)  # authentication, after the request hook
        if g.user is None:
            abort(401)
        return {"published": publish(request.form["title"])}

    @app.get("/whoami")
    def whoami():
        from auditaspect import current_context

        context = current_context()
        return {"ip": context.ip, "correlation_id": context.correlation_id}

    init_app(app, actor=lambda: g.get("user"), trusted_proxies=1)
    audit_endpoint(app, "login", "auth_success", on_error="auth_failure", extractor=login_details)
    audit_endpoint(app, "register", "session_created", extractor=login_details)
    url = url or os.environ.get("AUDIT_URL")
    if url:
        app.extensions["auditaspect_sink"] = PeeweeSink(url).connect()
    return app
