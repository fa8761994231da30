"""The optional writer process: ``PeeweeSink(mode="buffered", writer="process")``.

A writer *thread* shares the interpreter's GIL with the application: its
Python (chaining, parameters) and every return from SQLite wait for the
callers, and it cannot use a second core. With ``writer="process"`` the
buffered sink's writer thread only hands batches of rows (plain tuples,
already redacted) to a child process (``python -c`` running :func:`main`),
which appends them with a sync :class:`~auditaspect.PeeweeSink` of its own, on
its own core, and answers each batch with what it did (written, spilled, ...).

Why a ``subprocess`` and not ``multiprocessing``: a spawned
``multiprocessing`` child re-imports the application's ``__main__`` (which
breaks for code read from ``<stdin>`` and scripts without a ``__main__``
guard); a forked one inherits every lock and thread of the application.

Promises, and how they are kept:

* Nothing lost: a batch counts as delivered only when the child has
  answered for it (so ``flush()`` waits for the child). If the child dies,
  cannot start or stops answering, the parent spills the unanswered batch
  itself (events the child had committed before dying are skipped by the
  replay, which never writes an ``event_id`` twice), spills for a second,
  then starts a new child, whose connect replays the spill file.
* Exit: the child ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C
  or hangup, or a service manager, signals the whole group), from the moment
  it is forked (it starts with them blocked), and leaves when its stdin
  closes:
  when the parent closes the sink or exits, however it exits, after the
  batches already sent are written.
* Fork: a forked child of the application forgets the parent's writer
  process (closing its copies of the pipes, so the writer process still sees
  its parent leave) and starts its own on its first batch.

Costs: one process per sink and application process (about 43 MB resident),
started on the first batch (the first ``flush()`` waits for it: 0.23 to 0.29 s
measured).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["WriterProcess", "WriterProcessError", "main"]

logger = logging.getLogger("auditaspect")

_HEADER = struct.Struct("!Q")
# The child imports the very auditaspect the parent runs (not whatever its
# working directory holds), and runs main(). Not ``-m``: the package imports
# this module, and runpy would run a second copy of it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD = (
    f"import sys; sys.path[0] = {_ROOT!r}; "
    "from auditaspect.writer_process import main; sys.exit(main())"
)
# The longest the parent waits for the child to answer for one batch: longer
# than any write can take (SQLite's busy timeout, PostgreSQL's lock timeout,
# a spill) by far; a child that takes longer is taken for hung.
ANSWER_TIMEOUT = 120.0
# What a terminal or a service manager sends the application's process group.
_GROUP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
# The child's counters the parent adds to its own stats.
COUNTS = ("written", "spilled", "replayed", "failed", "quarantined", "lost")


class WriterProcessError(Exception):
    """The writer process could not be started, died, or stopped answering.

    ``rows`` are those it had not answered for.
    """

    def __init__(self, message: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows or []


def _write_message(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _widen_pipe(fd: int) -> None:
    """Let a whole batch fit in the pipe (Linux): a write that blocks gives up the
    GIL, and winning it back from busy callers takes up to 5 ms."""
    setter = getattr(fcntl, "F_SETPIPE_SZ", 1031 if sys.platform == "linux" else None)
    if setter is None:  # pragma: no cover - not Linux
        return
    for size in (4 << 20, 1 << 20):  # the most an unprivileged process may ask is 1 MiB by default
        try:
            fcntl.fcntl(fd, setter, size)
            return
        except OSError:
            continue


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int) -> Any:
    """The next message, or ``None`` at the end of the stream."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    data = _read_exact(fd, _HEADER.unpack(header)[0])
    if data is None:
        return None
    return pickle.loads(data)


class WriterProcess:
    """The parent's side: a child process that appends the batches it is given.

    ``config`` says what the child opens: ``database`` (a URL), ``chain_key``,
    ``rotate_chain_key`` and ``spill_path``. The child is started on the first
    :meth:`deliver`, and again after it died or after a fork.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._child: subprocess.Popen[bytes] | None = None
        self._pid = 0  # the process that started _child
        self._lock = threading.Lock()
        # Batches sent and not answered for yet (at most two), oldest first.
        self._unanswered: collections.deque[Sequence[tuple[Any, ...]]] = collections.deque()

    def deliver(self, rows: Sequence[tuple[Any, ...]], *, more: bool) -> dict[str, int]:
        """Send ``rows`` to the child; return its counts for the batches it answered for.

        With ``more`` (another batch is about to follow), the answer for this
        batch may be left outstanding: the child then always has the next
        batch in its pipe while the parent waits for the GIL. Without it,
        every batch sent is answered for before this returns. Raises
        :class:`WriterProcessError` when the child failed; its ``rows`` are
        every batch not answered for (they may or may not be in the
        database: the caller spills them, and the replay skips those that are).
        """
        with self._lock:
            self._unanswered.append(rows)
            child = self._started()
            try:
                assert child.stdin is not None
                _write_message(child.stdin.fileno(), list(rows))
            except (OSError, pickle.PickleError) as exc:
                self._failed(child, f"the audit writer process failed: {exc}")
            return self._collect(child, 1 if more else 0)

    def settle(self) -> dict[str, int]:
        """Wait until the child has answered for every batch sent; return its counts."""
        with self._lock:
            child = self._child
            if child is None or self._pid != os.getpid():
                return dict.fromkeys(COUNTS, 0)
            return self._collect(child, 0)

    def close(self, timeout: float = 30.0) -> dict[str, int]:
        """Collect the last answers, then let the child exit (killed after ``timeout``)."""
        counts = self.settle()
        with self._lock:
            child, self._child = self._child, None
            if child is None or self._pid != os.getpid():
                return counts
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.close()  # end of stream: the child closes its sink and leaves
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.error("audit writer process %d did not exit; killing it", child.pid)
                child.kill()
                child.wait()
            child.stdout.close()
        return counts

    def _collect(self, child: subprocess.Popen[bytes], keep: int) -> dict[str, int]:
        """Read answers until at most ``keep`` batches are outstanding; sum their counts."""
        total = dict.fromkeys(COUNTS, 0)
        while len(self._unanswered) > keep:
            try:
                answer = self._answer(child)
            except (OSError, pickle.PickleError, EOFError) as exc:
                self._failed(child, f"the audit writer process failed: {exc}")
            if not isinstance(answer, dict):
                self._failed(
                    child,
                    "the audit writer process closed its pipe before it answered for a"
                    " batch; see its log lines above",
                )
            self._unanswered.popleft()
            for name in COUNTS:
                total[name] += int(answer.get(name, 0))
        return total

    def _failed(self, child: subprocess.Popen[bytes], message: str) -> NoReturn:
        self._discard(child)
        rows = [row for batch in self._unanswered for row in batch]
        self._unanswered.clear()
        raise WriterProcessError(f"{message}; {_how_it_ended(child)}", rows)

    def after_fork_in_child(self) -> None:  # pragma: no cover - forked child
        # The parent's writer process is not ours. Close our copies of its
        # pipes (else it would not see its parent leave) without waiting for it.
        child, self._child = self._child, None
        self._lock = threading.Lock()
        self._unanswered = collections.deque()
        if child is not None:
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        os.close(stream.fileno())
            _forgotten.append(child)

    def _started(self) -> subprocess.Popen[bytes]:
        child = self._child
        if child is not None and self._pid == os.getpid() and child.poll() is None:
            return child
        if child is not None and self._pid == os.getpid():
            if len(self._unanswered) > 1:  # it died with a batch not answered for
                self._failed(child, "the audit writer process died with a batch unanswered")
            logger.warning(
                "audit writer process %d ended (%s); starting another",
                child.pid,
                _how_it_ended(child),
            )
            self._discard(child)
        child = None
        try:
            # The child is in the application's process group from the fork
            # until its setsid, and dies of SIGINT, SIGTERM or SIGHUP until
            # main() ignores them: it starts with them blocked (the mask is
            # inherited through fork and exec), so one sent to the group
            # meanwhile stays pending and main() discards it.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
            try:
                child = subprocess.Popen(
                    [sys.executable, "-c", _CHILD],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    bufsize=0,
                    close_fds=True,
                    # Out of the terminal's process group: Ctrl-C is the parent's.
                    start_new_session=True,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            assert child.stdin is not None
            _widen_pipe(child.stdin.fileno())
            _write_message(child.stdin.fileno(), self._config)
        except OSError as exc:
            ended = ""
            if child is not None:  # started, but gone before it read its config
                self._discard(child)
                ended = f"; {_how_it_ended(child)}"
            rows = [row for batch in self._unanswered for row in batch]
            self._unanswered.clear()
            raise WriterProcessError(
                f"cannot start the audit writer process: {exc}{ended}", rows
            ) from exc
        self._child, self._pid = child, os.getpid()
        logger.info("audit writer process %d started", child.pid)
        return child

    def _answer(self, child: subprocess.Popen[bytes]) -> Any:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        # A bounded wait: a hung child must not hang flush() and exit for ever.
        ready, _, _ = select.select([fd], [], [], ANSWER_TIMEOUT)
        if not ready:
            raise OSError(f"no answer within {ANSWER_TIMEOUT:.0f} s")
        return _read_message(fd)

    def _discard(self, child: subprocess.Popen[bytes]) -> None:
        """Stop a child that failed (it may be hung) and forget it."""
        self._child = None
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def _how_it_ended(child: subprocess.Popen[bytes]) -> str:
    """How a discarded child ended, for the one-line error: its status or its signal."""
    code = child.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"it was killed by {signal.Signals(-code).name}"
    return f"it exited with status {code}"


# Children a forked process inherited and forgot: kept from Popen.__del__.
_forgotten: list[Any] = []


def main() -> int:  # pragma: no cover - runs in the writer process (test_writer_process.py)
    """The child: read the config, then batches of rows; answer each with counts."""
    # The parent decides when the child stops (by closing the pipe): a
    # signal meant for the application's process group must not cut a batch.
    # Ignoring a blocked signal discards it if pending: one sent to the group
    # while this process was still in it (see WriterProcess._started).
    for signum in _GROUP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _GROUP_SIGNALS)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"auditaspect writer process {os.getpid()}: %(levelname)s %(message)s",
    )
    read_fd, write_fd = os.dup(0), os.dup(1)
    # Nothing else may write into the answer pipe.
    os.dup2(2, 1)
    config = _read_message(read_fd)
    if not isinstance(config, dict):
        return 2
    from .sink import PeeweeSink  # the child's only reason to exist

    sink = PeeweeSink(
        config["database"],
        chain_key=config.get("chain_key"),
        rotate_chain_key=bool(config.get("rotate_chain_key")),
        spill_path=config.get("spill_path"),
        handle_sigterm=False,
    )
    sink.connect()
    try:
        while (rows := _read_message(read_fd)) is not None:
            before = [getattr(sink.stats, name) for name in COUNTS]
            sink._deliver(rows)
            after = [getattr(sink.stats, name) for name in COUNTS]
            counts = {n: a - b for n, a, b in zip(COUNTS, after, before, strict=True)}
            _write_message(write_fd, counts)
    finally:
        sink.close()
    return 0
