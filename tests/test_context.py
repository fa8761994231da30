"""audit_context: contextvars-backed actor, ip and correlation id."""

from __future__ import annotations

import asyncio
import threading

import pytest

from auditaspect import AuditContext, audit_context, current_context


def test_empty_by_default():
    """Outside any context every value is None."""
    assert AuditContext() == current_context()


def test_nested_contexts_override_key_by_key():
    """An inner context keeps outer values it does not set, and restores them on exit."""
    with audit_context(actor="alice", ip="10.0.0.1"):
        with audit_context(correlation_id="req-1", ip="10.0.0.2") as inner:
            assert AuditContext("alice", "10.0.0.2", "req-1") == inner
            assert inner == current_context()
        assert AuditContext("alice", "10.0.0.1", None) == current_context()
    assert AuditContext() == current_context()


def test_context_is_restored_when_the_block_raises():
    """An exception inside the block still restores the outer context."""
    with pytest.raises(RuntimeError), audit_context(actor="alice"):
        raise RuntimeError
    assert current_context().actor is None


def test_context_instance_cannot_be_entered_twice_at_once():
    """Re-entering an active instance is a RuntimeError naming the fix."""
    ctx = audit_context(actor="a")
    with ctx, pytest.raises(RuntimeError, match="already active"), ctx:
        pass


def test_threads_do_not_see_each_others_context():
    """Each thread has its own context."""
    seen: list[str | None] = []
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        with audit_context(actor=name):
            barrier.wait()
            seen.append(current_context().actor)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ["t1", "t2"] == sorted(seen)  # type: ignore[type-var]


def test_asyncio_tasks_inherit_and_isolate_context():
    """A task inherits the context it was created in; changes inside stay inside."""

    async def child(name: str) -> tuple[str | None, str | None]:
        inherited = current_context().actor
        async with audit_context(actor=name):
            await asyncio.sleep(0)
            return inherited, current_context().actor

    async def main() -> list[tuple[str | None, str | None]]:
        with audit_context(actor="parent"):
            results = await asyncio.gather(child("a"), child("b"))
            assert "parent" == current_context().actor
            return list(results)

    assert [("parent", "a"), ("parent", "b")] == asyncio.run(main())
