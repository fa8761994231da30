"""Does an audited call starve other threads of the GIL? (issue 15)

    python bench/starvation.py [--seconds 1]

A thread sleeps 5 ms in a loop while the main thread makes audited calls
(with a receiver, so every call builds an event). CPython hands the GIL to a
waiting thread after a switch interval (5 ms) without a switch; code that
gives the GIL up and takes it back more often than that restarts the wait
each time, and the waiting thread starves. Reported: how long the 5 ms
sleeps took (median and worst), next to the same sleeps beside a loop of
plain Python. About 10 ms for both is healthy (the sleep plus one interval).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import compare
from auditaspect import signals


def sleeper_delays(work: Callable[[], Any], seconds: float) -> list[float]:
    """Milliseconds each 5 ms sleep of another thread took while ``work`` ran in a loop."""
    delays: list[float] = []
    stop = threading.Event()

    def sleeper() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            time.sleep(0.005)
            delays.append((time.perf_counter() - start) * 1000)

    thread = threading.Thread(target=sleeper)
    thread.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            work()
    stop.set()
    thread.join()
    return sorted(delays)


def plain_python() -> int:
    return sum(i * 2 for i in range(200))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    call = ("plan-8f3a2c1d", ["billing", "invoices"], 12, "alice@example.com")

    def receiver(sender: Any, *, event: Any) -> None:
        return None

    signals.audit_event.connect(receiver)
    try:
        cases = {
            "plain Python": plain_python,
            "audited calls": lambda: compare.audited_apply(*call),
        }
        print("a thread's 5 ms sleeps while the main thread runs (ms):")
        for name, work in cases.items():
            delays = sleeper_delays(work, args.seconds)
            print(
                f"  {name:<14} sleeps {len(delays):4d}  median {delays[len(delays) // 2]:6.1f}"
                f"  worst {delays[-1]:6.1f}"
            )
    finally:
        signals.audit_event.disconnect(receiver)
    return 0


if __name__ == "__main__":
    sys.exit(main())
