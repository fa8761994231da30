"""A Flask app whose views call audited services: attribution comes from the request.

    pip install 'auditaspect[flask]'
    python examples/flask_app.py            # serves on 127.0.0.1:5000
    curl -X POST -H 'X-User: alice' localhost:5000/config/theme -d value=dark
    auditaspect query --db sqlite:///audit.db

The services are the example domain's (planning.py); the only audit-related
lines here are init_app() and the sink.
"""

from __future__ import annotations

from flask import Flask, request

from auditaspect import PeeweeSink
from auditaspect.contrib.flask import init_app
from planning import ConfigService, Store


def create_app(database_url: str = "sqlite:///audit.db") -> Flask:
    app = Flask(__name__)
    store = Store()
    config = ConfigService(store)

    @app.post("/config/<key>")
    def set_config(key: str) -> dict[str, object]:
        user = request.headers.get("X-User", "anonymous")
        old = config.set_value(key, request.form.get("value", ""), user=user)
        return {"key": key, "previous": old}

    # Who is acting: here a header; in a real app, your session's user.
    init_app(app, actor=lambda: request.headers.get("X-User"), trusted_proxies=0)
    app.extensions["auditaspect_sink"] = PeeweeSink(database_url).connect()
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=5000)
