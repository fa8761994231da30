"""The buffered sink's options against raw ``executemany``: writer and batch size.

    python bench/options.py [--events 40000] [--rounds 3]

Each round measures every combination and the raw baseline, in alternating
order; the table gives the median ratio (sink events/s over raw events/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import compare
from auditaspect import PeeweeSink

COMBINATIONS = (("thread", 500), ("thread", 2000), ("process", 500), ("process", 2000))


def rate(tmp: Path, n: int, writer: str, batch_size: int, queue_size: int) -> float:
    url = f"sqlite:///{compare.fresh_db(tmp, writer)}"
    with PeeweeSink(
        url,
        mode="buffered",
        writer=writer,  # type: ignore[arg-type]
        batch_size=batch_size,
        queue_size=queue_size,
    ) as sink:
        compare.call_rate(compare.audited_apply, 1)  # a writer process starts here
        sink.flush()
        start = time.perf_counter()
        compare.call_rate(compare.audited_apply, n)
        sink.flush()
        return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-size", type=int, default=10_000)
    args = parser.parse_args(argv)
    ratios: dict[tuple[str, int], list[float]] = {c: [] for c in COMBINATIONS}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for round_ in range(args.rounds):
            order = COMBINATIONS if round_ % 2 == 0 else COMBINATIONS[::-1]
            for writer, batch in order:
                subject = rate(tmp, args.events, writer, batch, args.queue_size)
                ratios[(writer, batch)].append(subject / compare.raw_executemany(tmp, args.events))
    print(f"buffered sink / raw executemany, {args.events:,} events, median of {args.rounds}:")
    for (writer, batch), values in ratios.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"  writer={writer:<8} batch_size={batch:<5}"
            f" {statistics.median(values):.2f}  ({spread})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
