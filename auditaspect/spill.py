"""Where events go when the database cannot take them: the spill file.

One JSON line per redacted event, appended, flushed and fsync'd before the
audited call goes on, in a file created readable by its owner only (0600).
Appends and replays take an exclusive ``flock`` on the file, so several
threads and processes can share one spill file without losing a line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from .events import AuditEvent

__all__ = ["SpillFile"]

logger = logging.getLogger("auditaspect")


def _encode(event: AuditEvent) -> str:
    return json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _decode(line: str) -> AuditEvent:
    data: dict[str, Any] = json.loads(line)
    data["timestamp"] = datetime.fromisoformat(data["timestamp"])
    return AuditEvent(**data)


class SpillFile:
    """An append-only JSON-lines file of events waiting for the database."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SpillFile({self.path!r})"

    def after_fork(self) -> None:  # pragma: no cover - forked child
        """Forget a lock a parent thread may have held at ``fork()``."""
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[int]:
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)  # closing releases the flock

    def append(self, events: Sequence[AuditEvent]) -> None:
        """Append events durably (written and fsync'd before returning).

        Raises ``OSError`` when the file cannot be written (disk full, no
        permission): the caller decides what that means.
        """
        data = "".join(_encode(e) + "\n" for e in events).encode("utf-8")
        with self._locked() as fd:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)

    def pending(self) -> bool:
        """Tell whether the file holds events (a cheap stat, no lock)."""
        try:
            return os.stat(self.path).st_size > 0
        except FileNotFoundError:
            return False

    def drain(self, write: Callable[[list[AuditEvent]], int]) -> int:
        """Hand every spilled event to ``write``, then empty the file.

        ``write`` gets the events in spill order and must store them (exactly
        once: it should skip events the database already has) or raise. If it
        raises, the file is left as it was and the error propagates. Holds the
        file lock throughout, so no append is lost between reading and
        emptying. A line that cannot be parsed (a crash mid-append) is logged
        and skipped. Returns what ``write`` returned.
        """
        if not self.pending():
            return 0
        with self._locked() as fd:
            with open(fd, encoding="utf-8", closefd=False) as handle:
                handle.seek(0)
                lines = handle.read().splitlines()
            events = []
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    events.append(_decode(line))
                except (ValueError, TypeError, KeyError) as exc:
                    logger.error("skipping unreadable line %d of %s: %s", number, self.path, exc)
            stored = write(events) if events else 0
            os.ftruncate(fd, 0)
            os.fsync(fd)
        return stored
