"""The Django app: opens the sink named by ``settings.AUDITASPECT`` at startup."""

from __future__ import annotations

import sys
from typing import Any

from django.apps import AppConfig

from ...sink import PeeweeSink


class AuditConfig(AppConfig):  # type: ignore[misc]
    """``INSTALLED_APPS = [..., "auditaspect.contrib.django"]``.

    With ``AUDITASPECT["DATABASE_URL"]`` set, :meth:`ready` connects a
    :class:`~auditaspect.PeeweeSink` with ``AUDITASPECT["SINK_OPTIONS"]`` (its
    keyword arguments) and keeps it as ``.sink``; a sink that cannot open its
    database fails startup with its one-line error rather than serving
    unaudited requests. Without a URL no sink is opened (connect your own).
    ``manage.py auditaspect ...`` (the read-only CLI) opens no sink: an
    auditor's read-only account must be able to run it.
    """

    name = "auditaspect.contrib.django"
    label = "auditaspect"
    verbose_name = "auditaspect"
    default = True
    sink: PeeweeSink | None = None

    def ready(self) -> None:
        from . import settings

        config = settings()
        url = config.get("DATABASE_URL")
        if url and sys.argv[1:2] != ["auditaspect"]:
            options: dict[str, Any] = dict(config.get("SINK_OPTIONS") or {})
            self.sink = PeeweeSink(url, **options).connect()
