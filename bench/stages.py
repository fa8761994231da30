"""Where the time of one audited event goes, stage by stage (µs per event).

    python bench/stages.py [--events N]

Each stage is timed alone, single-threaded, best of 5 runs of N events, on
the same 5-key details as compare.py. Absolute microseconds move with the
machine; the split between stages is what this is for.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import compare
from auditaspect import PeeweeSink, signals
from auditaspect.decorator import build_event
from auditaspect.events import dumps_details
from auditaspect.integrity import canonical, link_row
from auditaspect.model import format_timestamp
from auditaspect.redaction import get_redactor
from auditaspect.rows import PAYLOAD, prepare_row

ARGS = ("plan-8f3a2c1d", ["billing", "invoices"], 12, "alice@example.com")


def per_event(run: Callable[[int], Any], n: int) -> float:
    """Best of 5: µs per event of ``run(n)``."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        run(n)
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def repeat(step: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            step()

    return run


def caller_stages(n: int) -> dict[str, float]:
    redactor = get_redactor()
    event = build_event("plan_applied", compare.DETAILS, target="bench.apply_plan")
    clean, _ = redactor.redact_checked(compare.DETAILS)
    scalars = prepare_row(event, redactor)[:10]
    stages = {
        "wrapt pass-through (baseline)": per_event(repeat(lambda: compare.wrapped_apply(*ARGS)), n),
        "@audited, nobody listening": per_event(repeat(lambda: compare.audited_apply(*ARGS)), n),
        "redaction of the details": per_event(repeat(lambda: redactor.redact(compare.DETAILS)), n),
        "details to JSON text": per_event(repeat(lambda: dumps_details(clean, float_free=True)), n),
        "build_event (context, redaction, JSON, event)": per_event(
            repeat(lambda: build_event("plan_applied", compare.DETAILS, target="x")), n
        ),
        "timestamp text": per_event(repeat(lambda: format_timestamp(event.timestamp)), n),
        "bytes the link hashes": per_event(repeat(lambda: canonical(scalars, "{}")), n),
        "prepare_row (the row the sink queues)": per_event(
            repeat(lambda: prepare_row(event, redactor)), n
        ),
    }

    def receiver(sender: Any, *, event: Any) -> None:
        return None

    signals.audit_event.connect(receiver)
    try:
        stages["@audited call, do-nothing receiver"] = per_event(
            repeat(lambda: compare.audited_apply(*ARGS)), n
        )
    finally:
        signals.audit_event.disconnect(receiver)
    return stages


def writer_stages(n: int) -> dict[str, float]:
    redactor = get_redactor()
    rows = [
        prepare_row(build_event("plan_applied", compare.DETAILS, target="x"), redactor)
        for _ in range(n)
    ]
    stages = {
        "chain link (SHA-256)": per_event(
            repeat(lambda: link_row("0" * 64, 7, "sha256", rows[0][PAYLOAD], None)), n
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        with PeeweeSink(f"sqlite:///{tmp}/batches.db") as sink:
            fresh = iter(
                [
                    prepare_row(build_event("plan_applied", compare.DETAILS, target="x"), redactor)
                    for _ in range(5 * n)
                ]
            )

            def batches(count: int) -> None:
                for _ in range(0, count, 500):
                    sink._deliver([next(fresh) for _ in range(min(500, count))])

            stages["append a batch of 500 rows, per row (one statement)"] = per_event(batches, n)
        with PeeweeSink(f"sqlite:///{tmp}/single.db") as sink:
            singles = iter(
                [
                    prepare_row(build_event("plan_applied", compare.DETAILS, target="x"), redactor)
                    for _ in range(5 * (n // 10))
                ]
            )
            stages["sync append of one row (commit included)"] = per_event(
                repeat(lambda: sink._deliver([next(singles)])), n // 10
            )
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    for title, stages in (
        ("caller (the audited call's thread)", caller_stages(args.events)),
        ("writer (thread or process)", writer_stages(args.events)),
    ):
        print(title)
        for name, micros in stages.items():
            print(f"  {name:<56} {micros:7.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
