"""Fixtures shared by the suite: clean global state, a real SQLite file, the example domain."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from blinker.base import ANY_ID

from auditaspect import AuditEvent, AuditRecord, PeeweeSink, signals
from auditaspect.redaction import get_redactor, set_redactor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def _all_signals() -> list[Any]:
    return list(signals.namespace.values())


@pytest.fixture(autouse=True)
def _clean_global_state() -> Iterator[None]:
    """Disconnect receivers a test connected, restore the redactor, unbind the model."""
    before = {id(sig): set(sig.receivers) for sig in _all_signals()}
    redactor = get_redactor()
    yield
    for sig in _all_signals():
        for key in set(sig.receivers) - before.get(id(sig), set()):
            # The receiver object may be gone (weakly held); its id is enough.
            sig._disconnect(key, ANY_ID)
    set_redactor(redactor)
    AuditRecord.bind(None)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A URL of a fresh SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def sink(db_url: str) -> Iterator[PeeweeSink]:
    """A connected synchronous sink on a fresh SQLite file."""
    with PeeweeSink(db_url) as connected:
        yield connected


class Captured(list[AuditEvent]):
    """Events a test receiver got, with their senders."""

    def __init__(self) -> None:
        super().__init__()
        self.senders: list[Any] = []

    def __call__(self, sender: Any, *, event: AuditEvent) -> None:
        self.senders.append(sender)
        self.append(event)


@pytest.fixture
def captured() -> Captured:
    """Every event sent on ``signals.audit_event`` during the test."""
    receiver = Captured()
    signals.audit_event.connect(receiver, weak=False)
    return receiver
