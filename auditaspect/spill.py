"""Where events go when the database cannot take them: the spill file.

One record per redacted event, appended, flushed and fsync'd before the
audited call goes on, in a file created readable by its owner only (0600).

The format survives a hostile world:

* **Self-delimiting and checksummed.** A record is one line,
  ``<crc32 of the JSON, 8 hex digits> <JSON>``. An append first makes sure the
  file ends with a newline, so a record torn by a full disk or a crash stays
  one damaged line and never swallows the next record. A line whose checksum
  or JSON does not hold (torn, a torn multi-byte character, edited) is set
  aside in the quarantine file and counted, never replayed and never deleted.
* **Bound to one database.** Every record names the database (and table) it
  was meant for; a sink replays only its own database's records, and leaves
  the rest where they are.
* **No symlinks.** The file is opened with ``O_NOFOLLOW``: a spill path that
  is a symlink is refused rather than followed (an attacker's link to
  another file would have it appended to or truncated).

Appends take an exclusive ``flock``, so several threads and processes can
share one file. Replay streams: the file is first renamed aside (under the
lock, so appends go on into a fresh file at once), then read a bounded batch
at a time, so neither a caller nor memory waits on the size of the backlog. A
replay interrupted by a crash leaves its renamed file, which the next replay
picks up; the database's unique ``event_id`` keeps every event exactly once.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import logging
import os
import stat
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from .events import AuditEvent

__all__ = ["SpillFile", "SpillRefusedError"]

logger = logging.getLogger("auditaspect")

REPLAY_BATCH = 1000
_REPLAYING = ".replaying"
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)


class SpillRefusedError(OSError):
    """The spill path cannot be used safely (it is a symlink, or not a regular file)."""


def encode_record(event: AuditEvent, origin: str) -> bytes:
    """One checksummed line holding ``event`` for the database ``origin``."""
    body = json.dumps(
        {"db": origin, "event": event.to_dict()},
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
    ).encode("utf-8", "surrogatepass")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_record(line: bytes) -> tuple[str, AuditEvent]:
    """Return (origin, event) from one line; ``ValueError`` if it is damaged."""
    checksum, _, body = line.rstrip(b"\r\n").partition(b" ")
    if len(checksum) != 8 or int(checksum, 16) != zlib.crc32(body):
        raise ValueError("checksum mismatch")
    data: dict[str, Any] = json.loads(body.decode("utf-8"))
    fields: dict[str, Any] = dict(data["event"])
    fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
    return str(data["db"]), AuditEvent(**fields)


def _open_private(path: str) -> int:
    """Open (creating 0600) a regular file for appending, never through a symlink."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpillRefusedError(
                exc.errno, f"spill path {path} is a symbolic link; refusing to follow it"
            ) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SpillRefusedError(errno.EINVAL, f"spill path {path} is not a regular file")
    if info.st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd


class SpillFile:
    """An append-only file of checksummed event records waiting for one database.

    ``origin`` names that database (URL without password, and table); records
    of other origins found in the file are kept for their own sink.
    """

    def __init__(self, path: str | os.PathLike[str], *, origin: str = "") -> None:
        self.path = os.fspath(path)
        self.origin = origin
        self.quarantine_path = self.path + ".quarantine"
        self._lock = threading.Lock()
        self._sequence = 0

    def __repr__(self) -> str:
        return f"SpillFile({self.path!r})"

    def after_fork(self) -> None:  # pragma: no cover - forked child
        """Forget a lock a parent thread may have held at ``fork()``."""
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self, path: str) -> Iterator[int]:
        with self._lock:
            fd = _open_private(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)  # closing releases the flock

    def append(self, events: Sequence[AuditEvent]) -> None:
        """Append events durably (written and fsync'd before returning).

        Raises ``OSError`` when the file cannot be written (disk full, no
        permission, a symlink): the caller decides what that means.
        """
        self._append(self.path, b"".join(encode_record(e, self.origin) for e in events))

    def _append(self, path: str, data: bytes) -> None:
        with self._locked(path) as fd:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a torn last record stays one damaged line
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)

    def probe(self) -> None:
        """Make sure the spill file can be written (creating it, 0600); raise ``OSError`` if not."""
        os.close(_open_private(self.path))

    def quarantine(self, events: Sequence[AuditEvent], reason: str) -> None:
        """Set events aside that the database refuses for their content (never replayed)."""
        self._append(self.quarantine_path, b"".join(encode_record(e, reason) for e in events))

    def _quarantine_raw(self, line: bytes, where: str, number: int, problem: str) -> None:
        logger.error("set aside damaged line %d of %s (%s)", number, where, problem)
        record = json.dumps(
            {"damaged": line.decode("utf-8", "replace"), "from": where, "line": number},
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")
        self._append(self.quarantine_path, b"%08x %s\n" % (zlib.crc32(record), record))

    def pending(self) -> bool:
        """Tell whether records wait for replay (a stat or two, no lock)."""
        try:
            if os.lstat(self.path).st_size > 0:
                return True
        except FileNotFoundError:
            pass
        return bool(glob.glob(glob.escape(self.path) + _REPLAYING + "*"))

    def drain(self, write: Callable[[list[AuditEvent]], int], *, batch: int = REPLAY_BATCH) -> int:
        """Hand this database's spilled events to ``write``, ``batch`` at a time, in order.

        ``write`` must store the events it gets (skipping those the database
        already has) or raise. If it raises, the records not yet confirmed
        stay on disk for the next replay and the error propagates. Damaged
        lines go to the quarantine file; other databases' records go back to
        the spill file. Returns the sum of what ``write`` returned.
        """
        stored = 0
        for path in self._claim():
            stored += self._replay_file(path, write, batch)
        return stored

    def _claim(self) -> list[str]:
        """Rename the spill file aside, and find replays a crash left; return them, oldest first."""
        claimed = sorted(glob.glob(glob.escape(self.path) + _REPLAYING + "*"), key=_mtime)
        try:
            if os.lstat(self.path).st_size == 0:
                return claimed
        except FileNotFoundError:
            return claimed
        with self._locked(self.path):
            self._sequence += 1
            target = f"{self.path}{_REPLAYING}-{os.getpid()}-{self._sequence}"
            try:
                os.rename(self.path, target)
            except FileNotFoundError:  # another process renamed it while we waited: theirs
                return claimed
        return [*claimed, target]

    def _replay_file(self, path: str, write: Callable[[list[AuditEvent]], int], batch: int) -> int:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return 0
        try:
            try:  # another process replaying this very file: leave it to them
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            stored, foreign = 0, []
            with open(fd, "rb", closefd=False) as handle:
                chunk: list[AuditEvent] = []
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        origin, event = decode_record(line)
                    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
                        self._quarantine_raw(line, path, number, str(exc))
                        continue
                    if origin != self.origin:
                        foreign.append(line if line.endswith(b"\n") else line + b"\n")
                        continue
                    chunk.append(event)
                    if len(chunk) >= batch:
                        stored += write(chunk)
                        chunk = []
                if chunk:
                    stored += write(chunk)
            if foreign:
                self._append(self.path, b"".join(foreign))
            os.unlink(path)
            return stored
        finally:
            os.close(fd)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
