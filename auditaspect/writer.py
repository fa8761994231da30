"""The background writer behind ``PeeweeSink(mode="buffered")``.

Callers only enqueue; one daemon thread drains a **bounded** queue and hands
batches to a delivery function, a batch when it is full or when the flush
interval has passed since its first event. A full queue makes callers wait
(back-pressure) instead of dropping events: a caller that outran the writer
would otherwise starve it and grow the loss window without bound.

Shutdown: :func:`atexit` closes every live writer (flushing it), and so does a
``multiprocessing`` finalizer in a child process (which leaves through
``os._exit``, skipping atexit); a SIGTERM handler (installed only over the
default action, chaining any earlier Python handler) raises ``SystemExit`` so
the atexit flush runs. Flushing inside the
signal handler could deadlock on a lock the interrupted thread holds.

After ``os.fork()`` the child gets an empty queue and a fresh thread, started
on its first event: the parent's queued events stay the parent's.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Generic, TypeVar

__all__ = ["BatchWriter", "install_sigterm_handler"]

logger = logging.getLogger("auditaspect")

T = TypeVar("T")

# How often a writer that is collecting a batch looks at the buffer again.
_POLL = 0.005
_live: weakref.WeakSet[BatchWriter[Any]] = weakref.WeakSet()


class _Buffer(Generic[T]):
    """A bounded FIFO of events that the writer empties a batch at a time.

    ``queue.Queue`` wakes a waiting consumer on every put and costs a lock
    round trip per item on both sides. Here the writer swaps out everything
    (up to a batch) in constant time under the lock, and is woken only when it
    was idle or when someone waits for a flush. Flushes are counted, not
    queued: ``flush()`` waits until the writer has delivered as many events as
    had been put when it was called.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._wake = threading.Condition(self._lock)
        self._delivered_cond = threading.Condition(self._lock)
        self._idle = False
        self.put_count = 0
        self.delivered = 0
        self.urgent = False  # a flush or close is waiting: do not wait for a full batch
        self.closing = False

    def put(self, item: T) -> None:
        """Append ``item``; wait while the buffer is full. Never drops it."""
        with self._lock:
            while len(self._items) >= self.capacity:
                self._not_full.wait()
            self._items.append(item)
            self.put_count += 1
            if self._idle:
                self._wake.notify()

    def wait_for_work(self) -> bool:
        """Block until there are items or the buffer closes; ``False`` means stop."""
        with self._lock:
            while not self._items and not self.closing:
                self._idle = True
                self._wake.wait()
            self._idle = False
            return bool(self._items) or not self.closing

    def take(self, limit: int) -> list[T]:
        """Remove and return up to ``limit`` items."""
        with self._lock:
            items = self._items
            if not items:
                return []
            if len(items) <= limit:
                self._items = collections.deque()
                taken = list(items)
            else:
                taken = [items.popleft() for _ in range(limit)]
            self._not_full.notify_all()
            return taken

    def mark_delivered(self, count: int) -> None:
        with self._lock:
            self.delivered += count
            if not self._items:
                self.urgent = False
            self._delivered_cond.notify_all()

    def wait_delivered(self, timeout: float | None) -> bool:
        """Block until every item put before this call has been delivered."""
        with self._lock:
            target = self.put_count
            if self.delivered >= target:
                return True
            self.urgent = True
            if self._idle:
                self._wake.notify()
            return self._delivered_cond.wait_for(lambda: self.delivered >= target, timeout)

    def close(self) -> None:
        with self._lock:
            self.closing = True
            self.urgent = True
            self._wake.notify_all()


class BatchWriter(Generic[T]):
    """A bounded buffer and one thread that delivers its events in batches.

    ``deliver(batch)`` must not raise; if it does, the error is logged and the
    writer goes on (the thread never dies, so callers never block forever).
    ``on_stop()`` runs on the writer thread when it stops (to close what the
    thread opened, such as its database connection).
    """

    def __init__(
        self,
        deliver: Callable[[list[T]], None],
        *,
        batch_size: int,
        flush_interval: float,
        queue_size: int,
        on_stop: Callable[[], None] | None = None,
        name: str = "auditaspect-writer",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be a positive number of seconds")
        self._deliver = deliver
        self._on_stop = on_stop
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self._name = name
        self._buffer: _Buffer[T] = _Buffer(queue_size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        _live.add(self)

    @property
    def closed(self) -> bool:
        """Whether the writer has stopped (closed, or flushed at interpreter exit)."""
        return self._closed

    def put(self, item: T) -> None:
        """Enqueue one item; wait while the buffer is full. Never drops it.

        Raises ``RuntimeError`` once the writer is closed: its owner must
        then write the item itself.
        """
        if self._closed:
            raise RuntimeError("the audit writer is closed; connect the sink again")
        # No getpid() here (a system call per event): every fork Python makes
        # runs the at-fork hook below, which empties a child's writer and
        # forgets its thread, so a child's first put starts its own.
        if self._thread is None:
            self._start()
        self._buffer.put(item)

    def pending(self) -> bool:
        """Whether items are waiting for a batch (a hint: no lock is taken)."""
        return bool(self._buffer._items)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event enqueued before this call is delivered.

        Returns ``False`` if ``timeout`` (seconds) passed first.
        """
        if self._thread is None or self._pid != os.getpid():
            return True
        return self._buffer.wait_delivered(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Deliver what is buffered, then stop the thread. Safe to call twice."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            self._buffer.close()
            thread.join(timeout)
        _live.discard(self)

    def _after_fork_in_child(self) -> None:  # pragma: no cover - forked child
        # The parent's buffer, thread and locks (any of which a parent thread
        # may have held at the fork) are not ours: start empty.
        self._buffer = _Buffer(self.queue_size)
        self._thread = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                _flush_at_child_exit()
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._on_stop is not None:
                try:
                    self._on_stop()
                except Exception:
                    logger.exception("audit writer cleanup failed")

    def _loop(self) -> None:
        buffer = self._buffer
        while buffer.wait_for_work():
            deadline = time.monotonic() + self.flush_interval
            batch = buffer.take(self.batch_size)
            while len(batch) < self.batch_size and not buffer.urgent:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Sleep rather than wait to be woken: being woken by every
                # put would ping-pong the GIL between caller and writer.
                time.sleep(min(remaining, _POLL))
                batch.extend(buffer.take(self.batch_size - len(batch)))
            if batch:
                self._deliver_safely(batch)
            buffer.mark_delivered(len(batch))

    def _deliver_safely(self, batch: list[T]) -> None:
        try:
            self._deliver(batch)
        except Exception:
            logger.exception("audit writer could not deliver a batch of %d events", len(batch))


def _close_all() -> None:
    for writer in list(_live):
        try:
            writer.close()
        except Exception:
            logger.exception("audit writer failed to flush at exit")


atexit.register(_close_all)


def _reset_after_fork() -> None:  # pragma: no cover - forked child
    global _sigterm_lock
    _sigterm_lock = threading.Lock()
    for writer in list(_live):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - not on Windows
    os.register_at_fork(after_in_child=_reset_after_fork)
_finalizer_pid = 0


def _flush_at_child_exit() -> None:
    """In a ``multiprocessing`` child, flush the writers when it exits.

    Such a child leaves through ``os._exit()``: atexit never runs there, but
    multiprocessing's own finalizers do (``Process`` and ``Pool`` workers,
    fork and spawn alike).
    """
    global _finalizer_pid
    if _finalizer_pid == os.getpid():
        return
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return
    from multiprocessing import util  # pragma: no cover - a multiprocessing child (unmeasured)

    util.Finalize(None, _close_all, exitpriority=100)  # pragma: no cover - as above
    _finalizer_pid = os.getpid()  # pragma: no cover - as above


_sigterm_lock = threading.Lock()
_sigterm_installed = False


def install_sigterm_handler() -> bool:
    """Make SIGTERM exit through ``SystemExit`` so atexit flushes the writers.

    Installed once, from the main thread, and only when SIGTERM has the
    default action or a Python handler (which is chained: called first, and
    then it decides). An ignored SIGTERM stays ignored. Returns whether the
    handler is in place.
    """
    global _sigterm_installed
    with _sigterm_lock:
        if _sigterm_installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN or previous is None:
            return False

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(signum, frame)
                return
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)
        _sigterm_installed = True
        return True
