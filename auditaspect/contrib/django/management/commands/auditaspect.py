"""``python manage.py auditaspect <command> ...``: the read-only CLI on the project's log."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from auditaspect import cli
from auditaspect.contrib.django import settings


def _argv(args: list[str]) -> list[str]:
    url = settings().get("DATABASE_URL")
    return ["--db", str(url), *args] if url else list(args)


class Command(BaseCommand):  # type: ignore[misc]
    help = "Query, export, verify or tail the audit log (auditaspect's CLI, read-only)."

    def run_from_argv(self, argv: list[str]) -> None:
        # The CLI parses its own options (Django's parser would take --help).
        status = cli.main(_argv(argv[2:]))
        if status:
            sys.exit(status)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER)

    def handle(self, *args: str, **options: Any) -> None:
        # The wrapped stream: Django's OutputWrapper would add a newline to each write.
        status = cli.main(_argv(list(args)), out=self.stdout._out)
        if status:
            raise CommandError(f"auditaspect exited with status {status}", returncode=status)
