"""Where the closed-loop caller's tail comes from (issue 15's p99 ratio).

    python bench/tail.py [--calls 40000] [--rounds 3]

Runs the closed loop of bench/figures.py (audited calls one after another)
with a do-nothing receiver and no writer (the baseline), with a buffered
sink's writer thread, and with its writer process, alternating, and reports
for each: percentiles of the call time, and the **slow calls** (over twice
that run's median) split by where their time went:

- *off-CPU*: more than half of the call's wall time was not the calling
  thread's CPU time: it waited for the GIL (the writer took it) or for a
  core (the scheduler ran something else);
- *on-CPU*: the thread ran all along, only slower: caches, memory and the
  clock shared with the other core's work, page faults, interrupts.

Also the calling thread's minor page faults. The count of slow calls is a
steadier figure than the p99 itself, which sits where that count crosses 1 %
of the calls. Timing the thread's CPU time costs a system call per call, so
the percentiles here are higher than figures.py's; compare runs with each
other, not with figures.py.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import compare
from auditaspect import PeeweeSink, signals

PERCENTILES = (0.5, 0.9, 0.99, 0.995, 0.999)


def timed_calls(n: int) -> tuple[list[tuple[int, int]], int]:
    """(wall ns, thread CPU ns) of ``n`` audited calls, and the thread's minor faults."""
    args = ("plan-8f3a2c1d", ["billing", "invoices"], 12, "alice@example.com")
    call, wall, cpu = compare.audited_apply, time.perf_counter_ns, time.thread_time_ns
    samples = []
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(n):
        c0 = cpu()
        t0 = wall()
        call(*args)
        t1 = wall()
        samples.append((t1 - t0, cpu() - c0))
    return samples, resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults


def run(kind: str, n: int, tmp: Path) -> dict[str, Any]:
    if kind == "no-op receiver":

        def receiver(sender: Any, *, event: Any) -> None:
            return None

        signals.audit_event.connect(receiver)
        try:
            samples, faults = timed_calls(n)
        finally:
            signals.audit_event.disconnect(receiver)
    else:
        writer = kind.split()[-1]
        url = f"sqlite:///{compare.fresh_db(tmp, 'tail')}"
        with PeeweeSink(url, mode="buffered", writer=writer) as sink:  # type: ignore[arg-type]
            compare.audited_apply("plan-0", [], 0, "warm-up")  # starts the writer (process)
            sink.flush()
            samples, faults = timed_calls(n)
            sink.flush()
    walls = sorted(w for w, _ in samples)
    median = walls[len(walls) // 2]
    slow = [(w, c) for w, c in samples if w > 2 * median]
    off = sum(1 for w, c in slow if w - c > w / 2)
    return {
        **{f"p{p * 100:g}": walls[int(len(walls) * p)] / 1000 for p in PERCENTILES},
        "slow": len(slow),
        "off-CPU": off,
        "on-CPU": len(slow) - off,
        "faults": faults,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    kinds = ["no-op receiver", "buffered, writer thread", "buffered, writer process"]
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                results[kind].append(run(kind, args.calls, Path(tmp)))
    print(f"closed loop, {args.calls} calls, median of {args.rounds} alternated rounds (µs):")
    for kind, rounds in results.items():
        fields = [
            f"{name} {statistics.median(r[name] for r in rounds):.1f}"
            for name in rounds[0]
            if name.startswith("p")
        ] + [
            f"{name} {statistics.median(r[name] for r in rounds):.0f}"
            for name in ("slow", "off-CPU", "on-CPU", "faults")
        ]
        print(f"  {kind:<26} " + "  ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
