"""PostgreSQL, for real: a server from scripts/pg-test-server, no mocks.

Skipped on a developer machine without $AUDITASPECT_TEST_POSTGRES_URL;
under CI=true a missing server fails instead.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditaspect import (
    AuditEvent,
    AuditRecord,
    EventType,
    PeeweeSink,
    audit_context,
    audited,
    emit,
    verify,
)
from auditaspect.database import close_database, open_database
from planning import (
    AuthenticationError,
    AuthService,
    ConfigService,
    EntityService,
    Executor,
    PlanService,
    SessionService,
    Store,
)

pytestmark = pytest.mark.postgres

NINE = {member.value for member in EventType}


def run_domain(tmp_path) -> str:
    """Every audited operation of the example domain once; returns the plan id."""
    store = Store(entities={("project", "old"): ["repo:old"]})
    auth = AuthService(store)
    auth.register("alice", "pw")
    with audit_context(actor="alice", ip="198.51.100.7"):
        auth.login("alice", "pw", ip="198.51.100.7")
        with pytest.raises(AuthenticationError):
            auth.login("alice", "nope", ip="198.51.100.7")
        SessionService(store).create("bot", user="alice")
        plans = PlanService(store)
        plan = plans.propose(["billing"], ["a.py"])
        Executor(tmp_path).write_resource(plan.plan_id, "a.py", "x")
        plans.correct(plan.plan_id, guidance="smaller")
        plans.apply(plan, user="alice")
        plans.cancel(plans.propose(["r"], []).plan_id, reason="dup")
        ConfigService(store).set_value("smtp.password", "pg-secret-1", user="alice")
        EntityService(store).delete("project", "old")
    return plan.plan_id


def test_nine_event_types_round_trip_with_queryable_jsonb(pg_url, tmp_path):
    """All nine types land in PostgreSQL; JSONB details are queryable through AuditRecord."""
    with PeeweeSink(pg_url) as sink:
        plan_id = run_domain(tmp_path)
        assert isinstance(sink.database, peewee.PostgresqlDatabase)
        assert NINE == {r.event_type for r in AuditRecord.select(AuditRecord.event_type)}
        [applied] = AuditRecord.select().where(
            AuditRecord.details["plan_id"] == plan_id, AuditRecord.event_type == "plan_applied"
        )
        assert 1 == applied.details["files_changed"]
        secret = AuditRecord.get(AuditRecord.details["key"] == "smtp.password")
        assert "[REDACTED]" == secret.details["new_value"]
        column = sink.database.execute_sql(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'audit_log' AND column_name = 'details'"
        ).fetchone()[0]
        assert "jsonb" == column
    assert verify(pg_url).ok


def test_triggers_reject_update_delete_and_truncate(pg_url):
    """The database itself refuses UPDATE, DELETE and TRUNCATE on audit_log."""
    with PeeweeSink(pg_url) as sink:
        emit("config_changed", key="k")
        db = sink.database
        for statement in (
            "UPDATE audit_log SET actor = 'mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(peewee.ProgrammingError, match="append-only"), db.atomic():
                db.execute_sql(statement)
        assert 1 == AuditRecord.select().count()


WORKER = """
import sys, threading
from auditaspect import PeeweeSink, audited

@audited("resource_modified")
def modify(resource_id):
    return None

with PeeweeSink(sys.argv[1], mode=sys.argv[2]) as sink:
    def work(t):
        for i in range(int(sys.argv[4])):
            modify(f"{sys.argv[3]}-{t}-{i}")
    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()
    sink.flush()
    assert sink.stats.written == 3 * int(sys.argv[4]), sink.stats
"""


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_four_processes_three_threads_one_chain(pg_url, mode):
    """4 processes x 3 threads writing at once: exact count, no duplicates, chain verifies."""
    with PeeweeSink(pg_url):
        pass  # the schema exists before the writers start, as in a deployment
    per_thread = 60
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, pg_url, mode, f"p{p}", str(per_thread)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    errors = [proc.communicate(timeout=180)[1] for proc in procs]
    assert [0, 0, 0, 0] == [proc.returncode for proc in procs], errors
    db, _ = open_database(pg_url)
    rows = [
        r[0] for r in db.execute_sql("SELECT details->>'resource_id' FROM audit_log").fetchall()
    ]
    close_database(db)
    assert 4 * 3 * per_thread == len(rows)
    assert len(rows) == len(set(rows))
    report = verify(pg_url)
    assert report.ok, report
    assert len(rows) == report.rows_checked


def test_terminated_backend_loses_nothing(pg_url, tmp_path):
    """pg_terminate_backend mid-run: failed writes spill and are replayed; all arrive once."""

    @audited("config_changed")
    def change(n: int) -> None:
        return None

    admin, _ = open_database(pg_url)
    with PeeweeSink(pg_url, spill_path=tmp_path / "spill.jsonl") as sink:
        for n in range(20):
            change(n)
        pid = sink.database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        admin.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
        for n in range(20, 40):
            change(n)  # the first of these hits the dead connection
        time.sleep(1.1)  # past the probe interval
        for n in range(40, 60):
            change(n)
        stats = sink.stats
    close_database(admin)
    assert stats.failed >= 1
    assert 0 == stats.lost
    assert stats.spilled == stats.replayed
    db, _ = open_database(pg_url)
    ns = sorted(r[0] for r in db.execute_sql("SELECT (details->>'n')::int FROM audit_log"))
    close_database(db)
    assert list(range(60)) == ns
    assert verify(pg_url).ok


def test_sync_writes_from_many_short_threads_return_pooled_connections(pg_url):
    """Threads that come and go do not exhaust the pool: each write returns its connection."""

    @audited("session_created")
    def create(n: int) -> None:
        return None

    with PeeweeSink(pg_url) as sink:
        for batch in range(5):
            threads = [threading.Thread(target=create, args=(batch * 20 + i,)) for i in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert 100 == sink.stats.written
        assert 0 == sink.stats.failed
    assert 100 == verify(pg_url).rows_checked


@pytest.mark.postgres
def test_replay_sets_aside_an_event_the_database_refuses(pg_url, tmp_path):
    """PostgreSQL refuses one spilled event for its content: the others replay, it is
    quarantined and counted, and nothing stays stuck behind it."""
    from auditaspect import AuditEvent

    with PeeweeSink(pg_url, spill_path=tmp_path / "pg.spill") as sink:
        good = [AuditEvent(event_type="ok", details={"i": i}) for i in range(5)]
        bad = AuditEvent(event_type="bad", event_id="e" * 100)  # over VARCHAR(64)
        sink.spill.append([good[0], bad, *good[1:]])
        assert 5 == sink.replay()
        assert 1 == sink.stats.quarantined
        assert not sink.spill.pending()
        with open(sink.spill.quarantine_path, encoding="utf-8") as handle:
            assert "e" * 100 in handle.read()
    assert verify(pg_url).ok


@pytest.mark.postgres
def test_a_long_transaction_holding_the_append_lock_does_not_stall_other_writers(pg_url):
    """A sync write inside a long application transaction holds the append lock; another
    writer waits a bounded time, then spills, while the holder still holds it."""
    holder_db = open_database(pg_url)[0]
    holder = PeeweeSink(holder_db).connect()
    other = PeeweeSink(pg_url, spill_path=None).connect()
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with holder_db.atomic():
            holder.write(AuditEvent(event_type="long_txn"))
            holding.set()
            release.wait(60)  # the watchdog: a test that would hang fails instead

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(30)
        other.write(AuditEvent(event_type="blocked"))
        still_holding = not release.is_set()
    finally:
        release.set()
        thread.join(60)
        other.flush(30)
        holder.close()
        close_database(holder_db)
    assert still_holding
    assert 1 == other.stats.spilled
    other._retry_at = 0
    assert 1 == other.replay()
    other.close()
    assert verify(pg_url).ok


@pytest.mark.postgres
def test_more_threads_than_pooled_connections_wait_instead_of_spilling(pg_url):
    """64 threads writing at once through a pool of 32 connections: none spills."""
    with PeeweeSink(pg_url) as sink:
        barrier = threading.Barrier(64)

        def work(n: int) -> None:
            barrier.wait(30)
            for i in range(10):
                sink.write(AuditEvent(event_type="pooled", details={"t": n, "i": i}))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert 0 == sink.stats.spilled
        assert 640 == sink.stats.written
    assert verify(pg_url).ok


# -- nothing forged unseen (issue 12) -------------------------------------------------------

WRITER_ROLE = "auditaspect_test_writer"


@pytest.fixture
def writer_url(pg_url):
    """The documented least-privilege writer role: SELECT and INSERT on audit_log."""
    with PeeweeSink(pg_url) as sink:  # the owner creates the schema
        for i in range(3):
            emit("config_changed", key=f"k{i}")
        db = sink.database
        db.execute_sql(
            f"DO $$ BEGIN CREATE ROLE {WRITER_ROLE} LOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        db.execute_sql(f"GRANT SELECT, INSERT ON audit_log TO {WRITER_ROLE}")
        db.execute_sql(f"GRANT SELECT ON audit_log_schema TO {WRITER_ROLE}")
    return pg_url.replace("postgresql://postgres@", f"postgresql://{WRITER_ROLE}@")


COLUMNS = (
    "event_id, timestamp, event_type, outcome, actor, plan_id, ip, correlation_id, target,"
    " details, error, prev_hash, hash, key_id"
)


@pytest.mark.parametrize("row_id", [0, -5, 10**9, 4 + 10**6])
def test_the_writer_role_cannot_insert_around_the_sequence(writer_url, row_id):
    """Cases 1 and 2 as the writer role: ids <= 0 and far ids are refused by the
    trigger; UPDATE, DELETE and TRUNCATE are refused too."""
    db, _ = open_database(writer_url)
    try:
        for statement in (
            f"INSERT INTO audit_log (id, {COLUMNS}) SELECT {row_id}, 'forged-{row_id}', "
            + COLUMNS.split(", ", 1)[1]
            + " FROM audit_log WHERE id = 2",
            "UPDATE audit_log SET actor = 'mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises((peewee.IntegrityError, peewee.ProgrammingError)), db.atomic():
                db.execute_sql(statement)
    finally:
        close_database(db)
    report = verify(writer_url)
    assert (True, 3) == (report.ok, report.rows_checked)


def test_the_writer_role_writes_through_the_sink(writer_url):
    """A sink connected as the writer role appends (no ownership needed)."""
    with PeeweeSink(writer_url) as sink:
        emit("config_changed", key="as-writer")
        assert 1 == sink.stats.written
    assert (True, 4) == (verify(writer_url).ok, verify(writer_url).rows_checked)


def test_rows_outside_the_sequence_are_read_and_reported(pg_url):
    """With the triggers dropped (the owner), a row at id 0 is still read by verify."""
    with PeeweeSink(pg_url) as sink:
        for i in range(3):
            emit("config_changed", key=f"k{i}")
        db = sink.database
        db.execute_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append")
        db.execute_sql(
            f"INSERT INTO audit_log (id, {COLUMNS}) SELECT 0, 'forged', "
            + COLUMNS.split(", ", 1)[1]
            + " FROM audit_log WHERE id = 2"
        )
        db.execute_sql("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append")
    report = verify(pg_url)
    assert (False, 0, 4) == (report.ok, report.bad_id, report.rows_checked)
    assert {"outside-sequence": 1} == report.counts


BIG_NUMBERS = {
    "e16": 1e16,
    "huge": 1.5e300,
    "max": 1.7976931348623157e308,
    "neg_zero": -0.0,
    "small": 1e-7,
    "tiny": 5e-324,
    "int": 10**20,
    "nested": [{"x": 2.5e17, "y": -3e16}],
}


def test_jsonb_number_normalisation_is_not_a_false_alarm(pg_url):
    """Case 7: floats >= 1e16 come back from JSONB as integers, -0.0 as 0.0:
    the untouched row still verifies."""
    with PeeweeSink(pg_url) as sink:
        emit("config_changed", **BIG_NUMBERS)
        db = sink.database
        stored = db.execute_sql("SELECT details::text FROM audit_log").fetchone()[0]
    assert "10000000000000000" in stored  # what JSONB did to 1e16
    report = verify(pg_url)
    assert report.ok, report.breaks


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(details=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_any_details_we_store_verify_after_a_jsonb_round_trip(pg_url, details):
    """Case 7, generated: whatever details the pipeline accepts verifies on PostgreSQL."""
    with PeeweeSink(pg_url) as sink:
        sink.write(AuditEvent(event_type="generated", details=details))
        assert 1 == sink.stats.written
    report = verify(pg_url)
    assert report.ok, (details, report.breaks)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("commit", [True, False])
def test_a_write_joining_a_snapshot_transaction_does_not_fork_the_chain(pg_url, isolation, commit):
    """Case 8: a sync write inside the caller's REPEATABLE READ / SERIALIZABLE
    transaction, whose snapshot predates another writer's row, is written
    after the commit from a fresh view of the head (nothing when it rolls back)."""
    with PeeweeSink(pg_url) as sink, PeeweeSink(pg_url) as other:
        db = sink.database
        with db.atomic() as transaction:
            db.execute_sql(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            db.execute_sql("SELECT count(*) FROM audit_log")  # the snapshot is taken here
            done = threading.Event()

            def elsewhere():
                with other.database.connection_context():
                    other.write(AuditEvent(event_type="other_writer"))
                done.set()

            threading.Thread(target=elsewhere).start()
            assert done.wait(30)
            sink.write(AuditEvent(event_type="in_transaction"))
            if not commit:
                transaction.rollback()
        rows = db.execute_sql("SELECT event_type, prev_hash FROM audit_log ORDER BY id").fetchall()
    expected = ["other_writer", "in_transaction"] if commit else ["other_writer"]
    assert expected == [r[0] for r in rows]
    assert len({r[1] for r in rows}) == len(rows)  # no two rows share a predecessor
    report = verify(pg_url)
    assert report.ok, report.breaks


V2_TABLE = """
CREATE TABLE audit_log (id BIGSERIAL PRIMARY KEY, event_id VARCHAR(64) NOT NULL UNIQUE,
    timestamp TIMESTAMPTZ NOT NULL, event_type VARCHAR(128) NOT NULL, outcome VARCHAR(16) NOT NULL,
    actor TEXT, plan_id TEXT, ip TEXT, correlation_id TEXT, target TEXT NOT NULL,
    details JSONB NOT NULL, error TEXT, prev_hash VARCHAR(64), hash VARCHAR(64));
CREATE TABLE audit_log_schema (id SERIAL PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO audit_log_schema (version) VALUES (2);
"""


def test_upgrade_from_version_2_keeps_rows_and_chain(pg_url):
    """v2 -> v3 on PostgreSQL: rows with sequence gaps are renumbered, keep their
    links, and new rows chain on."""
    from auditaspect.integrity import GENESIS, legacy_payload, link

    db, _ = open_database(pg_url)
    try:
        db.execute_sql(V2_TABLE)
        prev = GENESIS
        for number, row_id in enumerate((3, 4, 8), 1):
            values = (
                f"e{number}",
                "2026-01-02T03:04:05.000006+00:00",
                "x",
                "success",
                "alice",
                None,
                None,
                None,
                "t",
                None,
            )
            details = f'{{"n": {number}, "big": 1e+16}}'
            current = link(prev, legacy_payload(values, details), None)
            db.execute_sql(
                "INSERT INTO audit_log (id, event_id, timestamp, event_type, outcome, actor,"
                " plan_id, ip, correlation_id, target, error, details, prev_hash, hash)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (row_id, *values, details, prev, current),
            )
            prev = current
    finally:
        close_database(db)
    with PeeweeSink(pg_url) as sink:
        emit("config_changed", key="after upgrade")
        ids = [r[0] for r in sink.database.execute_sql("SELECT id FROM audit_log ORDER BY id")]
    assert [1, 2, 3, 4] == ids
    report = verify(pg_url)
    assert report.ok, report.breaks


def test_signed_checkpoints_on_postgresql(pg_url, tmp_path):
    """The command line signs and checks a PostgreSQL log's checkpoint."""
    with PeeweeSink(pg_url):
        for i in range(3):
            emit("config_changed", key=f"k{i}")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "auditaspect", "--db", pg_url, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )

    assert (
        0
        == subprocess.run(
            [sys.executable, "-m", "auditaspect", "keygen", "--out", "k.pem"], cwd=tmp_path
        ).returncode
    )
    made = cli("checkpoint", "--sign", "k.pem", "--out", "cp.json")
    assert 0 == made.returncode, made.stderr
    checked = cli("verify", "--checkpoint", "cp.json", "--public-key", "k.pem.pub")
    assert 0 == checked.returncode, checked.stdout + checked.stderr
    assert "OK: 3 rows, hash chain intact, 1 checkpoint(s) extended" in checked.stdout
    assert "postgres@" not in (tmp_path / "cp.json").read_text()  # origin without credentials


def test_the_command_line_reads_postgresql_read_only(pg_url, tmp_path):
    """stats (a GroupingError before), query, tail and verify on PostgreSQL; the
    read API's session cannot write."""
    from auditaspect import open_log

    with PeeweeSink(pg_url):
        for i in range(3):
            emit("config_changed", actor=f"user{i % 2}", key=f"k{i}")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "auditaspect", "--db", pg_url, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    stats = cli("stats")
    assert 0 == stats.returncode, stats.stderr
    day = stats.stdout.split("by day (UTC):\n")[1].split()
    assert ("3", 10) == (day[0], len(day[1]))  # "2026-11-30", a date
    for args in (
        ["query", "--format", "csv"],
        ["tail", "-n", "2"],
        ["verify"],
        ["export", "--format", "jsonl", "--output", str(tmp_path / "export.jsonl")],
    ):
        result = cli(*args)
        assert 0 == result.returncode, (args, result.stderr)
    with open_log(pg_url) as log:
        assert 3 == log.select().count()
        with pytest.raises(peewee.InternalError, match="read-only transaction"):
            log.database.execute_sql("CREATE TABLE should_not_exist (x int)")
