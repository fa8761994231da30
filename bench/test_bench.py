"""pytest-benchmark suite: the same measurements as compare.py, one per benchmark.

    tox -e bench            (or: pytest bench)

Benchmarks are not tests: they never fail for being slow. compare.py turns
the same measurements into the ratios the targets are stated in.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import peewee

from auditaspect import PeeweeSink
from auditaspect.redaction import Redactor
from baseline_redaction import Redactor as BaselineRedactor
from compare import (
    DETAILS,
    DETAILS10,
    INSERT,
    LARGE,
    apply_plan,
    audited_apply,
    every_rule_scan,
    keyword_dense_text,
    raw_row,
    schema_connection,
    wrapped_apply,
)

ARGS = ("plan-8f3a2c1d", ["billing", "invoices"], 12, "alice@example.com")
ROWS = 1000


def test_bare_call(benchmark):
    benchmark(apply_plan, *ARGS)


def test_wrapt_passthrough(benchmark):
    benchmark(wrapped_apply, *ARGS)


def test_audited_without_receivers(benchmark):
    benchmark(audited_apply, *ARGS)


def test_audited_sync_sink(benchmark, tmp_path: Path):
    with PeeweeSink(f"sqlite:///{tmp_path / 'sync.db'}"):
        benchmark(audited_apply, *ARGS)


def test_audited_buffered_sink_until_flushed(benchmark, tmp_path: Path):
    with PeeweeSink(f"sqlite:///{tmp_path / 'buffered.db'}", mode="buffered") as sink:

        def batch() -> None:
            for _ in range(ROWS):
                audited_apply(*ARGS)
            sink.flush()

        benchmark.pedantic(batch, rounds=5, warmup_rounds=1)


def test_raw_sqlite_executemany(benchmark, tmp_path: Path):
    conn = schema_connection(str(tmp_path / "raw.db"))

    def batch() -> None:
        rows = [raw_row() for _ in range(ROWS)]
        conn.execute("BEGIN")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")

    benchmark.pedantic(batch, rounds=5, warmup_rounds=1)
    conn.close()


def test_raw_sqlite_autocommit(benchmark, tmp_path: Path):
    conn: sqlite3.Connection = schema_connection(str(tmp_path / "one.db"))
    benchmark(lambda: conn.execute(INSERT, raw_row()))
    conn.close()


def test_naive_peewee_create(benchmark, tmp_path: Path):
    from datetime import datetime, timezone
    from uuid import uuid4

    from compare import PRAGMAS, NaiveRecord

    db = peewee.SqliteDatabase(str(tmp_path / "naive.db"), pragmas=PRAGMAS)
    with db.bind_ctx([NaiveRecord]):
        db.create_tables([NaiveRecord])

        def create() -> None:
            NaiveRecord.create(
                event_id=uuid4().hex,
                timestamp=datetime.now(timezone.utc),
                event_type="plan_applied",
                outcome="success",
                target="bench",
                details=DETAILS,
            )

        benchmark(create)
    db.close()


def test_redaction_typical(benchmark):
    benchmark(Redactor().redact, DETAILS)


def test_redaction_large(benchmark):
    benchmark(Redactor().redact, LARGE)


def test_redaction_ten_keys(benchmark):
    benchmark(Redactor().redact, DETAILS10)


def test_redaction_ten_keys_baseline_0_1(benchmark):
    benchmark(BaselineRedactor().redact, DETAILS10)


def test_redact_text_keyword_dense_1mb(benchmark):
    text = keyword_dense_text()
    benchmark.pedantic(Redactor().redact_text, args=(text,), rounds=3)


def test_every_rule_scan_keyword_dense_1mb(benchmark):
    text = keyword_dense_text()
    benchmark.pedantic(every_rule_scan, args=(text,), rounds=3)
