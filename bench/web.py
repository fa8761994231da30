"""What the web integrations cost a request, and what a sink costs an event loop.

    python bench/web.py [--requests N] [--rounds R]

Used by bench/compare.py (its "web" section) and runnable alone. Each
framework's app is driven in process (Flask and Django through their test
clients, Starlette through a minimal ASGI caller, so the client's own cost is
small and the same for every variant) in three variants, alternated round by
round, median of the rounds:

- bare: the app as written, its view calling an undecorated service;
- off: the integration installed (middleware, route rule, ``@audited``
  service) but nothing listening, so no event is built;
- on: the same with a buffered sink writing to a SQLite file.

Ratios are requests/s of a variant over bare. The loop-stall measurement runs
``@audited async def`` calls on an asyncio loop beside a 1 ms ticker and
reports how late the ticker woke: the time the loop could not serve anyone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auditaspect import PeeweeSink, audited

DETAILS = {"key": "theme", "value": "dark"}


def _service(plain: bool) -> Callable[[str], str]:
    def set_theme(value: str) -> str:
        return value

    return set_theme if plain else audited("config_changed")(set_theme)


def _rate(run: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return n / (time.perf_counter() - start)


# -- Flask -------------------------------------------------------------------------------


def flask_variant(variant: str) -> Callable[[], None]:
    import flask

    from auditaspect.contrib.flask import audit_endpoint, init_app

    app = flask.Flask(f"bench-{variant}")
    service = _service(variant == "bare")

    @app.post("/theme")
    def theme() -> str:
        return service(flask.request.form.get("value", ""))

    if variant != "bare":
        init_app(app, actor=lambda: "alice")
        audit_endpoint(app, "theme", "config_changed")
    client = app.test_client()
    return lambda: client.post("/theme", data=DETAILS).close()  # type: ignore[func-returns-value]


# -- Starlette -----------------------------------------------------------------------------


def starlette_variant(variant: str) -> Callable[[], None]:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from auditaspect.contrib.starlette import AuditMiddleware, audit_route

    service = _service(variant == "bare")

    def theme(request: Any) -> PlainTextResponse:
        return PlainTextResponse(service("dark"))

    middleware = [] if variant == "bare" else [Middleware(AuditMiddleware)]
    app = Starlette(routes=[Route("/theme", theme, methods=["POST"])], middleware=middleware)
    if variant != "bare":
        audit_route(app, theme, "config_changed")
    loop = asyncio.new_event_loop()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/theme",
        "raw_path": b"/theme",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"x-request-id", b"req-1")],
        "client": ("127.0.0.1", 5000),
        "server": ("bench", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    def one() -> None:
        loop.run_until_complete(app(dict(scope), receive, send))

    return one


# -- Django ----------------------------------------------------------------------------------


def _django_setup() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="bench",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            DATABASES={},
            USE_TZ=True,
            AUDITASPECT={},
        )
        django.setup()


urlpatterns: list[Any] = []


def django_variant(variant: str) -> Callable[[], None]:
    _django_setup()
    from django.http import HttpResponse
    from django.test import Client
    from django.urls import path

    from auditaspect.contrib.django import AuditMiddleware, audit_view

    service = _service(variant == "bare")

    def theme(request: Any) -> HttpResponse:
        return HttpResponse(service(request.POST.get("value", "")))

    view = theme if variant == "bare" else audit_view("config_changed")(theme)
    urlpatterns.append(path(f"theme-{variant}", view))
    from django.urls import clear_url_caches

    clear_url_caches()
    client = Client()
    handler = client.handler
    handler.load_middleware()
    if variant != "bare":
        # As if listed in MIDDLEWARE: outermost around the view.
        inner = handler._middleware_chain
        handler._middleware_chain = AuditMiddleware(inner)
    url = f"/theme-{variant}"
    return lambda: client.post(url, DETAILS).close()  # type: ignore[func-returns-value]


FRAMEWORKS: dict[str, Callable[[str], Callable[[], None]]] = {
    "flask": flask_variant,
    "starlette": starlette_variant,
    "django": django_variant,
}


def middleware_overhead(requests: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per framework: median requests/s ratios off/bare and on/bare (alternated rounds)."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in FRAMEWORKS.items():
            try:
                runs = {variant: build(variant) for variant in ("bare", "off", "on")}
            except ImportError:
                continue
            off, on, bare_us = [], [], []
            for r in range(rounds):
                bare = _rate(runs["bare"], requests)
                bare_us.append(1e6 / bare)
                off.append(_rate(runs["off"], requests) / bare)
                sink = PeeweeSink(f"sqlite:///{tmp}/{name}-{r}.db", mode="buffered").connect()
                try:
                    start = time.perf_counter()
                    for _ in range(requests):
                        runs["on"]()
                    sink.flush()
                    on.append(requests / (time.perf_counter() - start) / bare)
                finally:
                    sink.close()
            results[name] = {
                "bare µs/request": statistics.median(bare_us),
                "off / bare": statistics.median(off),
                "on / bare": statistics.median(on),
            }
    return results


# -- the event loop ------------------------------------------------------------------------


@audited("config_changed")
async def set_theme_async(value: str) -> str:
    return value


def loop_stall(tmp: Path, mode: str | None, calls: int = 5000) -> dict[str, float]:
    """How late a 1 ms ticker wakes while the loop runs audited async calls (ms).

    ``mode`` None: nothing listening (the loop's own floor in this run).
    """
    sink = None if mode is None else PeeweeSink(f"sqlite:///{tmp}/loop-{mode}.db", mode=mode)
    if sink is not None:
        sink.connect()
    lateness: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append((time.perf_counter() - before - 0.001) * 1000)

    async def main() -> None:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        for i in range(calls):
            await set_theme_async(f"v{i}")
            if i % 10 == 0:
                await asyncio.sleep(0)  # other requests get their turn
        stop.set()
        await tick

    try:
        asyncio.run(main())
        if sink is not None:
            sink.flush()
    finally:
        if sink is not None:
            sink.close()
    lateness.sort()
    return {
        "p50_ms": lateness[len(lateness) // 2],
        "p99_ms": lateness[int(len(lateness) * 0.99)],
        "max_ms": lateness[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for name, ratios in middleware_overhead(args.requests, args.rounds).items():
        print(f"{name:<10} " + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    with tempfile.TemporaryDirectory() as tmp:
        for mode in (None, "sync", "buffered"):
            stall = loop_stall(Path(tmp), mode)
            label = f"{mode} sink" if mode else "no receiver"
            print(f"loop stall, {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in stall.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
