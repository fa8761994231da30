"""Measure how many promised events each way of dying loses.

    python bench/crash_loss.py [--runs 5] [--calls 3000]

A child process makes audited calls and prints each returned event id; the
parent ends it (kill -9, SIGTERM, normal exit) and counts reported ids that
are missing from the database. Figures for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys
from auditaspect import PeeweeSink, audited, signals
ids = []
signals.audit_event.connect(lambda s, *, event: ids.append(event.event_id), weak=False)

@audited("resource_modified")
def modify(resource_id):
    return None

sink = PeeweeSink(sys.argv[1], mode=sys.argv[2], queue_size=int(sys.argv[3]), batch_size=500)
sink.connect()
print("ready", flush=True)
i = 0
while True:
    modify(f"r{i}")
    print(ids.pop(), flush=True)
    i += 1
    if sys.argv[4] == "exit" and i >= int(sys.argv[5]):
        break
"""


def run(mode: str, ending: str, calls: int, queue_size: int) -> tuple[int, int]:
    """Return (events reported by the child, events missing from the database)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "crash.db"
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                f"sqlite:///{db}",
                mode,
                str(queue_size),
                ending,
                str(calls),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        reported = []
        while len(reported) < calls:
            line = child.stdout.readline().strip()
            if not line:
                break
            reported.append(line)
        if ending == "kill9":
            child.send_signal(signal.SIGKILL)
        elif ending == "sigterm":
            child.send_signal(signal.SIGTERM)
        rest, _ = child.communicate(timeout=120)
        reported += rest.split()
        conn = sqlite3.connect(db)
        stored = {r[0] for r in conn.execute("SELECT event_id FROM audit_log")}
        conn.close()
        return len(reported), len(set(reported) - stored)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    cases = [
        ("sync", "kill9", 10_000),
        ("buffered", "exit", 10_000),
        ("buffered", "sigterm", 10_000),
        ("buffered", "kill9", 10_000),
        ("buffered", "kill9", 1_000),
    ]
    results = {}
    for mode, ending, queue_size in cases:
        lost = [run(mode, ending, args.calls, queue_size)[1] for _ in range(args.runs)]
        name = f"{mode} {ending} (queue {queue_size})"
        results[name] = {"runs": args.runs, "lost": lost, "max_lost": max(lost)}
        print(f"{name:<34} lost per run: {lost}  (max {max(lost)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
