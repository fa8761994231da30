"""BatchWriter: batching, flushing, back-pressure and failure isolation."""

from __future__ import annotations

import logging
import threading

import pytest

from auditaspect import AuditEvent
from auditaspect.writer import BatchWriter


def make_writer(delivered: list[list[AuditEvent]], **kwargs) -> BatchWriter:
    options = {"batch_size": 10, "flush_interval": 0.01, "queue_size": 100}
    options.update(kwargs)
    return BatchWriter(delivered.append, **options)


def test_flush_delivers_everything_put_before_it():
    """After flush() returns, every earlier event has been delivered, in order."""
    delivered: list[list[AuditEvent]] = []
    writer = make_writer(delivered)
    events = [AuditEvent(event_type="x") for _ in range(35)]
    for event in events:
        writer.put(event)
    assert writer.flush(timeout=10)
    assert events == [e for batch in delivered for e in batch]
    assert all(len(batch) <= 10 for batch in delivered)
    writer.close()


def test_close_delivers_then_stops_and_refuses_more():
    """close() delivers what is buffered, stops the thread, and is idempotent."""
    delivered: list[list[AuditEvent]] = []
    writer = make_writer(delivered, flush_interval=30)
    writer.put(AuditEvent(event_type="x"))
    writer.close()
    writer.close()
    assert 1 == sum(map(len, delivered))
    with pytest.raises(RuntimeError, match="closed"):
        writer.put(AuditEvent(event_type="x"))


def test_flush_before_any_event_returns_at_once():
    """A writer that never started has nothing to flush."""
    writer = make_writer([])
    assert writer.flush(timeout=0) is True
    writer.close()


def test_back_pressure_blocks_callers_instead_of_dropping():
    """With the deliverer stuck, puts beyond the capacity wait; nothing is dropped."""
    gate = threading.Event()
    delivered: list[AuditEvent] = []

    def slow(batch: list[AuditEvent]) -> None:
        gate.wait(30)
        delivered.extend(batch)

    writer = BatchWriter(slow, batch_size=1, flush_interval=0.001, queue_size=2)
    returned: list[int] = []

    def producer() -> None:
        for i in range(10):
            writer.put(AuditEvent(event_type="x"))
            returned.append(i)

    thread = threading.Thread(target=producer)
    thread.start()
    thread.join(0.5)
    # One batch is stuck in delivery and the buffer holds two: the rest wait.
    assert thread.is_alive()
    assert len(returned) <= 3
    gate.set()
    thread.join(30)
    assert writer.flush(timeout=30)
    assert 10 == len(delivered)
    writer.close()


def test_flush_timeout_returns_false():
    """flush(timeout) says False when delivery did not finish in time."""
    gate = threading.Event()
    writer = BatchWriter(lambda b: gate.wait(30), batch_size=1, flush_interval=0.001, queue_size=5)
    writer.put(AuditEvent(event_type="x"))
    assert writer.flush(timeout=0.05) is False
    gate.set()
    assert writer.flush(timeout=30) is True
    writer.close()


def test_a_raising_deliverer_is_logged_and_the_writer_goes_on(caplog):
    """An exception in delivery is logged; later events are still delivered."""
    calls: list[int] = []

    def flaky(batch: list[AuditEvent]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")

    writer = BatchWriter(flaky, batch_size=1, flush_interval=0.001, queue_size=5)
    with caplog.at_level(logging.ERROR, logger="auditaspect"):
        writer.put(AuditEvent(event_type="x"))
        writer.flush(timeout=10)
        writer.put(AuditEvent(event_type="x"))
        writer.flush(timeout=10)
    assert [1, 1] == calls
    assert "could not deliver" in caplog.text
    writer.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"queue_size": 0}, "queue_size"),
        ({"flush_interval": 0}, "flush_interval"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    """Zero sizes and intervals are a ValueError naming the setting."""
    options = {"batch_size": 1, "flush_interval": 0.1, "queue_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        BatchWriter(lambda b: None, **options)


def test_close_all_at_exit_logs_a_failing_writer(caplog, monkeypatch):
    """The atexit hook closes every live writer and logs one that fails."""
    from auditaspect import writer as module

    ok = make_writer([])
    broken = make_writer([])
    monkeypatch.setattr(broken, "close", lambda: (_ for _ in ()).throw(RuntimeError("stuck")))
    with caplog.at_level(logging.ERROR, logger="auditaspect"):
        module._close_all()
    assert "failed to flush at exit" in caplog.text
    assert ok._closed


def test_on_stop_runs_on_the_writer_thread_and_its_errors_are_logged(caplog):
    """on_stop() runs when the writer stops; an error in it is logged."""
    names: list[str] = []

    def on_stop() -> None:
        names.append(threading.current_thread().name)
        raise RuntimeError("cleanup")

    writer = BatchWriter(
        lambda b: None, batch_size=1, flush_interval=0.01, queue_size=2, on_stop=on_stop
    )
    writer.put(AuditEvent(event_type="x"))
    with caplog.at_level(logging.ERROR, logger="auditaspect"):
        writer.close()
    assert ["auditaspect-writer"] == names
    assert "cleanup failed" in caplog.text


@pytest.fixture
def fresh_sigterm(monkeypatch):
    """A clean slate for install_sigterm_handler, restored afterwards."""
    import signal

    from auditaspect import writer as module

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(module, "_sigterm_installed", False)
    yield module
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_handler_is_not_installed_from_a_thread(fresh_sigterm):
    """Only the main thread may install signal handlers."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(fresh_sigterm.install_sigterm_handler()))
    thread.start()
    thread.join()
    assert [False] == result


def test_ignored_sigterm_stays_ignored(fresh_sigterm):
    """A process that ignores SIGTERM keeps ignoring it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    assert fresh_sigterm.install_sigterm_handler() is False
    assert signal.SIG_IGN == signal.getsignal(signal.SIGTERM)


def test_an_earlier_python_handler_is_chained(fresh_sigterm):
    """An application's own SIGTERM handler still runs, and decides what happens."""
    import os
    import signal

    seen: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    assert fresh_sigterm.install_sigterm_handler() is True
    assert fresh_sigterm.install_sigterm_handler() is True  # once is enough
    os.kill(os.getpid(), signal.SIGTERM)
    assert [signal.SIGTERM] == seen
