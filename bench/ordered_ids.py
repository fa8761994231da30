"""Random against time-ordered event ids, appending to a log that is already large.

    python bench/ordered_ids.py [--rows 1000000] [--events 20000] [--rounds 3]

For each id scheme, a SQLite audit log of ``--rows`` rows is filled first
(ids of that scheme), then timed: ``--events`` more rows by raw
``executemany`` (the baseline, with ids of the same scheme) and by a buffered
sink (``auditaspect.use_ordered_ids()`` for the ordered scheme). Random ids
land all over the unique index on ``event_id``; ordered ids at its end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import compare
from auditaspect import PeeweeSink, use_ordered_ids

FILL_BATCH = 10_000


def random_id() -> str:
    return os.urandom(16).hex()


def ordered_id() -> str:
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


# The chain columns filled (with stand-ins): a sink continues after such a head.
INSERT = (
    "INSERT INTO audit_log (id, event_id, timestamp, event_type, outcome, actor, plan_id,"
    " target, details, prev_hash, hash, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def chained_row(row_id: int, make_id: Callable[[], str]) -> tuple[object, ...]:
    row = compare.raw_row()
    return (row_id, make_id(), *row[1:6], row[8], row[9], "0" * 64, f"{row_id:064x}", "sha256")


def filled(tmp: Path, rows: int, make_id: Callable[[], str]) -> str:
    """A log of ``rows`` rows whose event ids come from ``make_id`` (chain fields filler)."""
    path = str(tmp / f"log-{make_id.__name__}-{time.monotonic_ns()}.db")
    conn = compare.schema_connection(path)
    for start in range(0, rows, FILL_BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            INSERT,
            [chained_row(i + 1, make_id) for i in range(start, min(rows, start + FILL_BATCH))],
        )
        conn.execute("COMMIT")
    conn.close()
    return path


def raw_rate(path: str, n: int, make_id: Callable[[], str]) -> float:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    for name, value in compare.PRAGMAS:
        conn.execute(f"PRAGMA {name} = {value}")
    conn.execute("DROP TRIGGER IF EXISTS audit_log_append")
    last = conn.execute("SELECT max(id) FROM audit_log").fetchone()[0]
    start = time.perf_counter()
    rows = [chained_row(last + 1 + i, make_id) for i in range(n)]
    for chunk in range(0, n, 500):
        conn.execute("BEGIN")
        conn.executemany(INSERT, rows[chunk : chunk + 500])
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def sink_rate(path: str, n: int, ordered: bool) -> float:
    use_ordered_ids(ordered)
    try:
        with PeeweeSink(f"sqlite:///{path}", mode="buffered") as sink:
            start = time.perf_counter()
            compare.call_rate(compare.audited_apply, n)
            sink.flush()
            return n / (time.perf_counter() - start)
    finally:
        use_ordered_ids(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        logs = {
            "random": filled(tmp, args.rows, random_id),
            "ordered": filled(tmp, args.rows, ordered_id),
        }
        for round_ in range(args.rounds):
            order = ("random", "ordered") if round_ % 2 == 0 else ("ordered", "random")
            for scheme in order:
                make_id = ordered_id if scheme == "ordered" else random_id
                results.setdefault(f"raw, {scheme} ids", []).append(
                    raw_rate(logs[scheme], args.events, make_id)
                )
                results.setdefault(f"sink, {scheme} ids", []).append(
                    sink_rate(logs[scheme], args.events, scheme == "ordered")
                )
    print(f"appending {args.events:,} events to a log of {args.rows:,}+ rows (events/s, median):")
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    for name, rate in medians.items():
        print(f"  {name:<24} {rate:10,.0f}")
    for who in ("raw", "sink"):
        gain = medians[f"{who}, ordered ids"] / medians[f"{who}, random ids"]
        print(f"  {who}: ordered / random = {gain:.2f}")
    print(
        "  sink / raw: random "
        f"{medians['sink, random ids'] / medians['raw, random ids']:.2f}, ordered "
        f"{medians['sink, ordered ids'] / medians['raw, ordered ids']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
