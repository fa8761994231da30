"""Compare the sink of two checkouts in one run: is a change slower?

    git worktree add /tmp/before <commit>
    python bench/ab.py /tmp/before . [--rounds 5] [--events 20000]

Each round measures both checkouts, alternating, each in a fresh process
that imports that checkout's ``auditaspect`` and ``bench/compare.py``: the
buffered sink against that process's raw ``executemany`` of the same rows,
the sync sink against raw one-row autocommit. Prints each round and the
medians; ratios from the same process are what count on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, tempfile
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
import compare
tmp, n = Path(tempfile.mkdtemp()), int(sys.argv[2])
best = {}
for _ in range(2):
    for name, measure in (
        ("raw executemany", lambda: compare.raw_executemany(tmp, n)),
        ("buffered", lambda: compare.sink_rate(tmp, n, "buffered")),
        ("raw autocommit", lambda: compare.raw_autocommit(tmp, n // 4)),
        ("sync", lambda: compare.sink_rate(tmp, n // 4, "sync")),
    ):
        best[name] = max(best.get(name, 0.0), measure())
print(json.dumps(best))
"""


def measure(tree: Path, events: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree.resolve()), str(events)],
        capture_output=True,
        text=True,
        cwd=tree.resolve().parent,
        check=True,
    )
    rates: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "buffered / raw executemany": rates["buffered"] / rates["raw executemany"],
        "sync / raw autocommit": rates["sync"] / rates["raw autocommit"],
        "buffered events/s": rates["buffered"],
        "sync events/s": rates["sync"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for number in range(1, args.rounds + 1):
        for label, tree in (("before", args.before), ("after", args.after)):
            figures = measure(tree, args.events)
            runs[label].append(figures)
            shown = ", ".join(f"{k} {v:,.3f}" for k, v in figures.items())
            print(f"round {number} {label:6}: {shown}", flush=True)
    print()
    for key in runs["before"][0]:
        before = statistics.median(r[key] for r in runs["before"])
        after = statistics.median(r[key] for r in runs["after"])
        print(f"{key:28} before {before:12,.3f}  after {after:12,.3f}  ({after / before - 1:+.1%})")


if __name__ == "__main__":
    main()
