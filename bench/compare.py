"""Measure auditaspect against raw SQLite on the same rows, in one run.

    python bench/compare.py [--events N] [--rounds R] [--json PATH] [--skip-memory]

Prints one table of events per second and the ratios the targets are stated
in (docs/performance.md). Ratios, not absolute numbers, are what count on a
shared, noisy machine: every row of one run shares the machine's state.
Each figure is the best of a few repetitions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import peewee
import wrapt

import auditaspect
import figures
import web as web_bench
from auditaspect import PeeweeSink, audited
from auditaspect.model import create_schema
from auditaspect.redaction import Redactor
from auditaspect.rules import default_rules
from baseline_redaction import Redactor as BaselineRedactor

DETAILS = {
    "plan_id": "plan-8f3a2c1d",
    "projects": ["billing", "invoices"],
    "files_changed": 12,
    "validation": {"lint": "passed", "tests": "passed"},
    "actor": "alice@example.com",
}
LARGE = {
    "items": [
        {"id": i, "name": f"resource-{i}", "tags": ["a", "b", "c"], "meta": {"size": i * 10}}
        for i in range(500)
    ],
    "note": "x" * 20_000,
}
DETAILS10 = {
    **DETAILS,
    "ip": "203.0.113.7",
    "reason": "scheduled rollout",
    "request_id": "req-8f3a2c1d9e7b",
    "duration_ms": 412,
    "status": "applied",
}
PRAGMAS = (("journal_mode", "wal"), ("synchronous", "normal"))


def apply_plan(plan_id: str, projects: list[str], files_changed: int, actor: str) -> None:
    return None


@wrapt.decorator
def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


wrapped_apply = passthrough(apply_plan)
audited_apply = audited("plan_applied", lambda call: DETAILS)(apply_plan)


def call_rate(func: Callable[..., Any], n: int) -> float:
    args = ("plan-8f3a2c1d", ["billing", "invoices"], 12, "alice@example.com")
    start = time.perf_counter()
    for _ in range(n):
        func(*args)
    return n / (time.perf_counter() - start)


def best(measure: Callable[[], float], repeat: int) -> float:
    results = []
    for _ in range(repeat):
        gc.collect()
        results.append(measure())
    return max(results)


def fresh_db(tmp: Path, name: str) -> str:
    path = tmp / f"{name}-{uuid.uuid4().hex[:6]}.db"
    return str(path)


def schema_connection(path: str) -> sqlite3.Connection:
    """A raw connection to an audit_log with the very table and indexes the sink
    creates, without the trigger that refuses rows written around a sink (what
    an application writing its own audit rows would have)."""
    import peewee

    db = peewee.SqliteDatabase(path, pragmas=PRAGMAS)
    create_schema(db)
    db.execute_sql("DROP TRIGGER audit_log_append")
    db.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for name, value in PRAGMAS:
        conn.execute(f"PRAGMA {name} = {value}")
    return conn


INSERT = (
    "INSERT INTO audit_log (event_id, timestamp, event_type, outcome, actor, plan_id, ip,"
    " correlation_id, target, details, error, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def raw_row() -> tuple[Any, ...]:
    return (
        uuid.uuid4().hex,
        datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "plan_applied",
        "success",
        "alice@example.com",
        "plan-8f3a2c1d",
        None,
        None,
        "bench.apply_plan",
        json.dumps(DETAILS, separators=(",", ":")),
        None,
        None,
        None,
    )


def raw_executemany(tmp: Path, n: int) -> float:
    conn = schema_connection(fresh_db(tmp, "raw-many"))
    start = time.perf_counter()
    rows = [raw_row() for _ in range(n)]
    conn.execute("BEGIN")
    conn.executemany(INSERT, rows)
    conn.execute("COMMIT")
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def raw_autocommit(tmp: Path, n: int) -> float:
    conn = schema_connection(fresh_db(tmp, "raw-one"))
    start = time.perf_counter()
    for _ in range(n):
        conn.execute(INSERT, raw_row())
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


class NaiveRecord(peewee.Model):
    """What people write instead of a sink: a peewee model of the same columns."""

    event_id = peewee.CharField(max_length=64, unique=True)
    timestamp = peewee.DateTimeField(index=True)
    event_type = peewee.CharField(max_length=128, index=True)
    outcome = peewee.CharField(max_length=16)
    actor = peewee.TextField(null=True, index=True)
    plan_id = peewee.TextField(null=True, index=True)
    ip = peewee.TextField(null=True)
    correlation_id = peewee.TextField(null=True)
    target = peewee.TextField()
    details = peewee.JSONField()
    error = peewee.TextField(null=True)


def naive_peewee(tmp: Path, n: int) -> float:
    db = peewee.SqliteDatabase(fresh_db(tmp, "naive"), pragmas=PRAGMAS)
    with db.bind_ctx([NaiveRecord]):
        db.create_tables([NaiveRecord])
        start = time.perf_counter()
        for _ in range(n):
            NaiveRecord.create(
                event_id=uuid.uuid4().hex,
                timestamp=datetime.now(timezone.utc),
                event_type="plan_applied",
                outcome="success",
                actor="alice@example.com",
                plan_id="plan-8f3a2c1d",
                target="bench.apply_plan",
                details=DETAILS,
            )
        rate = n / (time.perf_counter() - start)
    db.close()
    return rate


def sink_rate(tmp: Path, n: int, mode: str, writer: str = "thread") -> float:
    return url_sink_rate(f"sqlite:///{fresh_db(tmp, mode)}", n, mode, writer)


def url_sink_rate(url: str, n: int, mode: str, writer: str = "thread") -> float:
    """Audited calls per second into a sink on ``url``, until flush() returns."""
    with PeeweeSink(url, mode=mode, writer=writer) as sink:  # type: ignore[arg-type]
        if writer == "process":  # started on the first batch: not part of the rate
            call_rate(audited_apply, 1)
            sink.flush()
            sink.stats.written -= 1
        start = time.perf_counter()
        call_rate(audited_apply, n)
        sink.flush()
        rate = n / (time.perf_counter() - start)
        assert sink.stats.written == n, sink.stats
    return rate


def _timed_calls(n: int) -> list[int]:
    args = ("plan-8f3a2c1d", ["billing", "invoices"], 12, "alice@example.com")
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        audited_apply(*args)
        samples.append(clock() - t0)
    return samples


def buffered_latency(tmp: Path, n: int, writer: str = "thread") -> dict[str, float]:
    """Caller-side time per audited call while the writer is busy (µs)."""
    url = f"sqlite:///{fresh_db(tmp, 'latency')}"
    with PeeweeSink(url, mode="buffered", writer=writer) as sink:  # type: ignore[arg-type]
        if writer == "process":
            _timed_calls(1)
            sink.flush()
        samples = _timed_calls(n)
        sink.flush()
    return _percentiles(samples)


def receiver_latency(n: int) -> dict[str, float]:
    """The same calls with a do-nothing receiver and no writer thread: the floor (µs)."""
    from auditaspect import signals

    def receiver(sender: Any, *, event: Any) -> None:
        return None

    signals.audit_event.connect(receiver)
    try:
        return _percentiles(_timed_calls(n))
    finally:
        signals.audit_event.disconnect(receiver)


def _percentiles(samples: list[int]) -> dict[str, float]:
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "p999_us": samples[int(len(samples) * 0.999)] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
    }


def redaction_rate(details: dict[str, Any], n: int, redactor: Any = None) -> float:
    redactor = redactor or Redactor()
    start = time.perf_counter()
    for _ in range(n):
        redactor.redact(details)
    return n / (time.perf_counter() - start)


def fresh_details_rate(n: int, redactor: Any) -> float:
    """10-key details whose strings are new on every call (no clean-string cache hits)."""
    batches = [
        {**DETAILS10, "reason": f"rollout {i} of plan {i * 7}", "request_id": f"req-{i:012x}"}
        for i in range(n)
    ]
    start = time.perf_counter()
    for details in batches:
        redactor.redact(details)
    return n / (time.perf_counter() - start)


def keyword_dense_text(size: int = 1_000_000) -> str:
    """Log-like text where secret keywords occur constantly, a few real secrets among them."""
    rng = random.Random(5)
    words = ["password", "token", "secret", "api_key", "Bearer", "key", "auth", "the", "config"]
    parts: list[str] = []
    while sum(map(len, parts)) < size:
        word = rng.choice(words)
        value = "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(3, 24)))
        parts.append(f"{word}: {value} " if rng.random() < 0.5 else f"{word} was {value}, ")
        if rng.random() < 0.01:
            parts.append("ghp_" + "".join(rng.choices(string.ascii_letters, k=36)) + " ")
    return "".join(parts)[:size]


def text_mb_per_s(text: str, scan: Callable[[str], object], repeat: int) -> float:
    def once() -> float:
        start = time.perf_counter()
        scan(text)
        return len(text) / 1e6 / (time.perf_counter() - start)

    return max(once() for _ in range(repeat))


def every_rule_scan(text: str) -> list[Any]:
    """A straightforward port of a scanner's rule set: every rule's regex over the whole text."""
    return [finding for rule in default_rules().rules for finding in rule.findings(text)]


# The details' placeholder is the tenth: a JSONB cast there on PostgreSQL.
PG_INSERT = INSERT.replace("?", "%s").replace("%s, %s, %s, %s)", "%s::jsonb, %s, %s, %s)")


def pg_reset(url: str) -> None:
    from auditaspect.database import close_database, open_database

    db, _ = open_database(url)
    db.execute_sql("DROP TABLE IF EXISTS audit_log, audit_log_schema CASCADE")
    create_schema(db)
    db.execute_sql("DROP TRIGGER audit_log_append ON audit_log")  # as schema_connection
    close_database(db)


def pg_raw_executemany(url: str, n: int) -> float:
    """The psycopg driver's executemany of the same rows, one transaction."""
    import psycopg

    pg_reset(url)
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        rows = [raw_row() for _ in range(n)]
        with conn.cursor() as cursor:
            cursor.executemany(PG_INSERT, rows)
        conn.commit()
        return n / (time.perf_counter() - start)


def pg_sink_rate(url: str, n: int) -> float:
    pg_reset(url)
    return url_sink_rate(url, n, "buffered")


MEMORY_SCRIPT = """
import resource, sys, tempfile, os
sys.path.insert(0, {bench!r})
from compare import audited_apply
from auditaspect import PeeweeSink
n = int(sys.argv[1])
args = ("plan-8f3a2c1d", ["billing", "invoices"], 12, "alice@example.com")
with tempfile.TemporaryDirectory() as tmp:
    with PeeweeSink(f"sqlite:///{{tmp}}/mem.db", mode="buffered") as sink:
        for _ in range(2000):
            audited_apply(*args)
        sink.flush()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        for _ in range(n):
            audited_apply(*args)
        sink.flush()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        written = sink.stats.written
print(before, after, written)
"""


def memory_growth(n: int) -> dict[str, float]:
    script = MEMORY_SCRIPT.format(bench=str(Path(__file__).resolve().parent))
    out = subprocess.run(
        [sys.executable, "-c", script, str(n)], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, written = (int(x) for x in out)
    return {
        "calls": n,
        "written": written,
        "peak_rss_before_mb": before / 1024,
        "peak_rss_after_mb": after / 1024,
        "peak_rss_growth_mb": (after - before) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="rows per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (best is kept)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--memory-calls", type=int, default=1_000_000)
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1M-call RSS run")
    parser.add_argument(
        "--skip-web", action="store_true", help="skip the web middleware and event-loop runs"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternated rounds of the speed contract's ratios (median reported)",
    )
    parser.add_argument(
        "--skip-contract", action="store_true", help="skip the speed contract (bench/figures.py)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("AUDITASPECT_TEST_POSTGRES_URL"),
        help="also measure against this PostgreSQL (default: $AUDITASPECT_TEST_POSTGRES_URL)",
    )
    args = parser.parse_args(argv)
    n, repeat = args.events, args.repeat

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        calls = n * 10
        rates = {
            "bare call": best(lambda: call_rate(apply_plan, calls), repeat),
            "wrapt pass-through": best(lambda: call_rate(wrapped_apply, calls), repeat),
            "@audited, no receiver": best(lambda: call_rate(audited_apply, calls), repeat),
            "@audited -> sync sink": best(lambda: sink_rate(tmp, n, "sync"), repeat),
            "@audited -> buffered sink": best(lambda: sink_rate(tmp, n, "buffered"), repeat),
            "raw sqlite3 executemany": best(lambda: raw_executemany(tmp, n), repeat),
            "raw sqlite3 autocommit": best(lambda: raw_autocommit(tmp, n), repeat),
            "naive peewee create": best(lambda: naive_peewee(tmp, n // 4), repeat),
            "redaction, typical": best(lambda: redaction_rate(DETAILS, n * 2), repeat),
            "redaction, large": best(lambda: redaction_rate(LARGE, 50), repeat),
            "redaction, 10 keys": best(lambda: redaction_rate(DETAILS10, n * 2), repeat),
            "0.1 redaction, 10 keys": best(
                lambda: redaction_rate(DETAILS10, n * 2, BaselineRedactor()), repeat
            ),
            "redaction, 10 fresh keys": best(lambda: fresh_details_rate(n, Redactor()), repeat),
            "0.1 redaction, 10 fresh keys": best(
                lambda: fresh_details_rate(n, BaselineRedactor()), repeat
            ),
        }
        dense = keyword_dense_text()
        text_rates = {
            "redact_text, 1 MB keyword-dense": text_mb_per_s(dense, Redactor().redact_text, repeat),
            "every rule over the text (naive port)": text_mb_per_s(dense, every_rule_scan, repeat),
        }
        latency = buffered_latency(tmp, n * 2)
        floor = receiver_latency(n * 2)
    ratios = {
        "buffered / raw executemany (>= 0.5)": rates["@audited -> buffered sink"]
        / rates["raw sqlite3 executemany"],
        "sync / raw autocommit (>= 0.5)": rates["@audited -> sync sink"]
        / rates["raw sqlite3 autocommit"],
        "no-receiver time / wrapt time (<= 1.5)": rates["wrapt pass-through"]
        / rates["@audited, no receiver"],
        "buffered p99 / no-op receiver p99": latency["p99_us"] / floor["p99_us"],
        "redaction time / 0.1 redaction time, 10 keys (<= 1.3)": rates["0.1 redaction, 10 keys"]
        / rates["redaction, 10 keys"],
        "same, fresh strings (<= 1.3)": rates["0.1 redaction, 10 fresh keys"]
        / rates["redaction, 10 fresh keys"],
        "1 MB keyword-dense: speed / naive port (>= 2)": text_rates[
            "redact_text, 1 MB keyword-dense"
        ]
        / text_rates["every rule over the text (naive port)"],
    }
    memory = None if args.skip_memory else memory_growth(args.memory_calls)
    postgres = None
    if args.postgres:
        postgres = {
            "@audited -> buffered sink": best(lambda: pg_sink_rate(args.postgres, n), repeat),
            "raw psycopg executemany": best(lambda: pg_raw_executemany(args.postgres, n), repeat),
        }
        ratios["postgres buffered / raw executemany (>= 0.5)"] = (
            postgres["@audited -> buffered sink"] / postgres["raw psycopg executemany"]
        )

    contract = None if args.skip_contract else figures.measure(n, args.rounds, args.postgres)
    web = None
    if not args.skip_web:
        with tempfile.TemporaryDirectory() as tmpdir:
            web = {
                "requests/s ratios": web_bench.middleware_overhead(n // 10, max(repeat, 3)),
                "loop stall": {
                    str(mode or "no receiver"): web_bench.loop_stall(Path(tmpdir), mode)
                    for mode in (None, "sync", "buffered")
                },
            }

    width = max(map(len, [*rates, *("PostgreSQL: " + k for k in postgres or {})]))
    print(f"{'measurement':<{width}}  events/s   µs/event")
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:>10,.0f}  {1e6 / rate:>8.2f}")
    for name, rate in (postgres or {}).items():
        print(f"{'PostgreSQL: ' + name:<{width}}  {rate:>10,.0f}  {1e6 / rate:>8.2f}")
    for name, mb_s in text_rates.items():
        print(f"{name:<{width}}  {mb_s:>10.2f} MB/s")
    print()
    for name, ratio in ratios.items():
        print(f"{name:<54} {ratio:6.2f}")
    print(
        "buffered caller latency (µs): "
        + ", ".join(f"{k} {v:.1f}" for k, v in latency.items())
        + "  (target p99 <= 50)"
    )
    print(
        "same calls, no-op receiver, no writer (µs): "
        + ", ".join(f"{k} {v:.1f}" for k, v in floor.items())
    )
    if contract is not None:
        figures.report(contract)
    if web is not None:
        print("web integrations, requests/s over the bare app (median of alternated rounds):")
        for name, numbers in web["requests/s ratios"].items():
            print(f"  {name:<10} " + "  ".join(f"{k} {v:.2f}" for k, v in numbers.items()))
        for name, stall in web["loop stall"].items():
            print(
                f"  event-loop stall, {name}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in stall.items())
            )
    if memory is not None:
        print(
            f"memory: {memory['calls']:,} buffered calls, {memory['written']:,} written, "
            f"peak RSS {memory['peak_rss_before_mb']:.1f} -> {memory['peak_rss_after_mb']:.1f} MB, "
            f"growth {memory['peak_rss_growth_mb']:.1f} MB (target < 50)"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "version": auditaspect.__version__,
                    "python": sys.version.split()[0],
                    "events": n,
                    "rates": rates,
                    "text_mb_per_s": text_rates,
                    "ratios": ratios,
                    "buffered_latency": latency,
                    "noop_receiver_latency": floor,
                    "memory": memory,
                    "postgres": postgres,
                    "web": web,
                    "contract": contract,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
