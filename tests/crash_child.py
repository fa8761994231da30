"""A child process for the crash tests: makes audited calls and reports each one.

    python crash_child.py URL MODE COUNT END [QUEUE_SIZE]

Prints ``ready`` once connected, then one event id per line as soon as the
audited call that produced it has returned (so the parent knows it was
promised). END says how the child ends after COUNT calls: ``exit`` (return
without closing the sink: atexit must flush), ``close`` (sink.close()),
``wait`` (keep calling until killed; COUNT is then ignored).
"""

from __future__ import annotations

import faulthandler
import sys

from auditaspect import AuditEvent, PeeweeSink, audited, signals


@audited("resource_modified")
def modify(resource_id: str) -> None:
    return None


def main() -> int:
    # A child that hangs dumps every thread's stack to stderr and exits, so a
    # failing test shows where (no crash test runs anywhere near this long).
    faulthandler.dump_traceback_later(45, exit=True)
    url, mode, count, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    queue_size = int(sys.argv[5]) if len(sys.argv) > 5 else 10_000
    last: list[str] = []

    def remember(sender: object, *, event: AuditEvent) -> None:
        last.append(event.event_id)

    signals.audit_event.connect(remember, weak=False)
    sink = PeeweeSink(url, mode=mode, queue_size=queue_size, batch_size=100)  # type: ignore[arg-type]
    sink.connect()
    print("ready", flush=True)
    i = 0
    while end == "wait" or i < count:
        modify(f"r{i}")
        print(last.pop(), flush=True)
        i += 1
    if end == "close":
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
