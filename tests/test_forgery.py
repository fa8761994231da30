"""Nothing forged unseen (issue 12): each forgery a review found, on real SQLite files.

Every case here failed before schema version 3: the database accepted the
forgery, or verify() did not see it, or raised, or reported a false alarm.
The PostgreSQL cases are in test_postgres.py; the full matrix of attacks is
test_tamper_matrix.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import peewee
import pytest

from auditaspect import AuditError, AuditEvent, AuditRecord, PeeweeSink, emit, verify
from auditaspect.integrity import GENESIS, UNKEYED, key_id, link, row_payload, row_prefix
from auditaspect.model import install_guards

GUARDS = ("audit_log_no_update", "audit_log_no_delete", "audit_log_append")
COPY = (
    "event_id, timestamp, event_type, outcome, actor, plan_id, ip, correlation_id, target,"
    " details, error, prev_hash, hash, key_id"
)


def write(url: str, count: int, **options) -> None:
    with PeeweeSink(url, **options):
        for i in range(count):
            emit("config_changed", key=f"k{i}", new_value=i)


@pytest.fixture
def log(tmp_path) -> tuple[str, Path]:
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    write(url, 5)
    return url, path


def sql(path: Path, *statements: str, drop: bool = False, cover: bool = False) -> None:
    """Run statements on a connection of its own, as anyone with the file can."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if drop:
            for name in GUARDS:
                conn.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()
    if cover:  # put the triggers back, as an attacker hiding the edit would
        db = peewee.SqliteDatabase(str(path))
        install_guards(db)
        db.close()


def forged_copy(source_id: int, new_id: int, event_id: str = "forged") -> str:
    """An INSERT of a copy of one row under another id and event id."""
    columns = COPY.replace("event_id, ", "")
    return (
        f"INSERT INTO audit_log (id, event_id, {columns}) "
        f"SELECT {new_id}, '{event_id}', {columns} FROM audit_log WHERE id = {source_id}"
    )


def count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("row_id", [0, -1, -(2**63)])
def test_rows_with_id_at_most_zero_are_refused_and_seen(log, row_id):
    """Case 1: a plain INSERT with id <= 0 is refused by the database; one
    slipped in with the triggers dropped is read and reported by verify."""
    url, path = log
    with pytest.raises(sqlite3.IntegrityError, match="next id of the sequence"):
        sql(path, forged_copy(3, row_id))
    sql(path, forged_copy(3, row_id), drop=True, cover=True)
    report = verify(url)
    assert 6 == report.rows_checked == count(path)
    assert (False, row_id) == (report.ok, report.bad_id)
    assert {"outside-sequence": 1} == report.counts


def test_a_huge_id_is_refused_and_cannot_capture_the_chain(log):
    """Case 2: one INSERT with id 2**63-1 is refused; slipped in with the
    triggers dropped, it is the row verify blames, and later writes spill
    instead of chaining from it."""
    url, path = log
    with pytest.raises(sqlite3.IntegrityError, match="next id of the sequence"):
        sql(path, forged_copy(5, 2**63 - 1))
    sql(path, forged_copy(5, 2**63 - 1), drop=True, cover=True)
    with PeeweeSink(url, spill_path=path.with_suffix(".spill")) as sink:
        emit("config_changed", key="after")
        assert (0, 1) == (sink.stats.written, sink.stats.spilled)
    report = verify(url)
    assert (False, 2**63 - 1) == (report.ok, report.bad_id)
    assert {"missing": 1, "modified": 1} == report.counts
    assert all(b.id == 2**63 - 1 for b in report.breaks)
    assert "or this row's id was forged" in report.reason


@pytest.mark.parametrize(
    "spelling",
    [
        "2026-01-01T14:00:00.000000+14:00",  # the same instant at another offset
        "2026-01-01 00:00:00.000000+00:00",
        "2026-01-01~00:00:00.000000+00:00",
        "2026-01-01T00:00:00+00:00",
    ],
)
def test_a_re_spelled_timestamp_is_refused_and_reported(log, spelling):
    """Case 3: the database stores one spelling only; verify reports another."""
    url, path = log
    good = "2026-01-01T00:00:00.000000+00:00"
    insert = forged_copy(5, 6).replace(
        "SELECT 6, 'forged', timestamp", f"SELECT 6, 'forged', '{spelling}'"
    )
    with pytest.raises(sqlite3.IntegrityError, match="timestamp not in the stored form"):
        sql(path, insert)
    sql(path, f"UPDATE audit_log SET timestamp = '{spelling}' WHERE id = 2", drop=True, cover=True)
    report = verify(url)
    assert (False, 2) == (report.ok, report.bad_id)
    if spelling != good:
        assert "non-canonical" in report.counts or "unreadable" in report.counts


def test_duplicate_keys_in_details_are_reported(log):
    """Case 4: {"new_value":1,"new_value":365} reads 1 in SQL and 365 in Python:
    verify reports the row instead of hashing the value Python keeps."""
    url, path = log
    conn = sqlite3.connect(path)
    original = conn.execute("SELECT details FROM audit_log WHERE id = 2").fetchone()[0]
    conn.close()
    assert '"new_value":1' in original
    doubled = original.replace('"new_value":1', '"new_value":365,"new_value":1')
    sql(path, f"UPDATE audit_log SET details = '{doubled}' WHERE id = 2", drop=True, cover=True)
    conn = sqlite3.connect(path)
    assert (
        365
        == conn.execute(
            "SELECT json_extract(details, '$.new_value') FROM audit_log WHERE id = 2"
        ).fetchone()[0]
    )
    conn.close()
    report = verify(url)
    assert (False, 2, {"non-canonical": 1}) == (report.ok, report.bad_id, report.counts)
    assert "repeat the key 'new_value'" in report.reason


@pytest.mark.parametrize(
    "statement",
    [
        # conflicts on the id: REPLACE would delete row 3 without a DELETE trigger
        "INSERT OR REPLACE INTO audit_log (id, "
        + COPY
        + ") SELECT 3, "
        + COPY
        + " FROM audit_log WHERE id = 3",
        # conflicts on the event_id, with the next id
        "REPLACE INTO audit_log (id, "
        + COPY
        + ") SELECT 6, "
        + COPY
        + " FROM audit_log WHERE id = 3",
    ],
)
def test_insert_or_replace_is_refused(log, statement):
    """Case 5: INSERT OR REPLACE cannot rewrite a row with the triggers in place."""
    url, path = log
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        sql(path, statement)
    assert 5 == count(path)
    assert verify(url).ok


def test_an_added_column_and_renumbered_ids_are_reported(log):
    """Case 5: adding a column, or renumbering every id, no longer verifies OK."""
    url, path = log
    sql(path, "ALTER TABLE audit_log ADD COLUMN note TEXT")
    report = verify(url)
    assert (False, {"schema": 1}) == (report.ok, report.counts)
    assert "note" in report.reason

    renumbered = tmp = path.with_name("renumbered.db")
    write(f"sqlite:///{tmp}", 4)
    sql(renumbered, "UPDATE audit_log SET id = id + 10", drop=True, cover=True)
    report = verify(f"sqlite:///{tmp}")
    assert (False, 11) == (report.ok, report.bad_id)
    assert report.counts["modified"] == 4  # each row's id is in its hash


def test_records_cannot_be_created_around_the_sink(log):
    """Case 6: AuditRecord.create() is refused (no unchained row), the log still verifies."""
    url, _ = log
    from auditaspect import AppendOnlyError

    with PeeweeSink(url), pytest.raises(AppendOnlyError, match="append-only"):
        AuditRecord.create(event_id="x", event_type="x", outcome="success", target="", details={})
    assert verify(url).ok


def test_a_writer_with_another_key_is_refused_at_connect(tmp_path, monkeypatch):
    """Case 9: a writer without (or with another) chain key among keyed writers
    refuses to connect with one line naming both key ids, never the keys."""
    url = f"sqlite:///{tmp_path / 'keyed.db'}"
    write(url, 2, chain_key="the-real-key")
    for other in (None, "another-key"):
        monkeypatch.delenv("AUDITASPECT_CHAIN_KEY", raising=False)
        with pytest.raises(AuditError) as caught:
            PeeweeSink(url, chain_key=other).connect()
        message = str(caught.value)
        assert 1 == len(message.splitlines())
        assert key_id(b"the-real-key") in message
        assert "the-real-key" not in message
        assert "another-key" not in message
        assert "AUDITASPECT_CHAIN_KEY" in message
    conn = sqlite3.connect(tmp_path / "keyed.db")
    assert {(key_id(b"the-real-key"),)} == set(conn.execute("SELECT key_id FROM audit_log"))
    conn.close()
    assert verify(url, chain_key="the-real-key").ok


def test_a_key_rotation_is_explicit_and_verifies_with_both_keys(tmp_path):
    """rotate_chain_key=True continues the chain with a new key; verify needs both."""
    url = f"sqlite:///{tmp_path / 'rotated.db'}"
    write(url, 2, chain_key="old-key")
    write(url, 2, chain_key="new-key", rotate_chain_key=True)
    assert verify(url, chain_key=["old-key", "new-key"]).ok
    report = verify(url, chain_key="new-key")
    assert (False, 1, {"unknown-key": 2}) == (report.ok, report.bad_id, report.counts)


def test_an_unkeyed_row_in_a_keyed_log_is_reported(tmp_path):
    """A forger without the key who appends a valid SHA-256 link (key id
    "sha256") is reported: the verifier's keyring decides which ids count."""
    path = tmp_path / "keyed.db"
    url = f"sqlite:///{path}"
    write(url, 3, chain_key="k")
    conn = sqlite3.connect(path, isolation_level=None)
    row = conn.execute(
        "SELECT event_id, timestamp, event_type, outcome, actor, plan_id, ip, correlation_id,"
        " target, error, details, hash FROM audit_log WHERE id = 3"
    ).fetchone()
    values = ("forged-event", *row[1:10])
    forged = link(row[11], row_prefix(4, UNKEYED) + row_payload(values, row[10]), None)
    conn.execute(
        "INSERT INTO audit_log (id, event_id, timestamp, event_type, outcome, actor, plan_id, ip,"
        " correlation_id, target, error, details, prev_hash, hash, key_id)"
        " VALUES (4, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*values, row[10], row[11], forged, UNKEYED),
    )
    conn.close()
    report = verify(url, chain_key="k")
    assert (False, 4, {"unknown-key": 1}) == (report.ok, report.bad_id, report.counts)
    assert "without a key" in report.reason


def test_verify_reports_every_break_and_goes_on(tmp_path):
    """Case 10: after a break the rest is still checked; every break is counted,
    the first 100 described."""
    path = tmp_path / "many.db"
    url = f"sqlite:///{path}"
    write(url, 400)
    sql(path, "UPDATE audit_log SET actor = 'x' WHERE id % 3 = 0", drop=True, cover=True)
    report = verify(url)
    assert 400 == report.rows_checked
    assert {"modified": 133} == report.counts
    assert 133 == report.total_breaks
    assert 100 == len(report.breaks)
    assert [3, 6, 9] == [b.id for b in report.breaks[:3]]


def test_deeply_nested_details_are_reported_not_raised(log):
    """Case 10: details nested 100,000 deep raise RecursionError in json: reported."""
    url, path = log
    deep = "[" * 100_000 + "]" * 100_000
    sql(path, f"UPDATE audit_log SET details = '{deep}' WHERE id = 4", drop=True, cover=True)
    report = verify(url)
    assert (False, 4, {"unreadable": 1}) == (report.ok, report.bad_id, report.counts)
    assert "nested too deeply" in report.reason


def test_a_corrupt_page_is_reported_not_raised(tmp_path):
    """Case 10: a damaged page of the file is an 'unreadable' break, and the
    command line prints it and exits 1, never a traceback."""
    path = tmp_path / "corrupt.db"
    url = f"sqlite:///{path}"
    with PeeweeSink(url):
        for i in range(300):
            emit("config_changed", key=f"k{i}", padding="p" * 400)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with open(path, "r+b") as handle:  # scribble over a leaf page in the middle
        handle.seek(page_size * (pages // 2))
        handle.write(b"\xff" * page_size)
    report = verify(url)
    assert not report.ok
    assert "unreadable" in report.counts, report.breaks
    result = subprocess.run(
        [sys.executable, "-m", "auditaspect", "verify", "--db", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 1 == result.returncode, result.stderr
    assert "unreadable" in result.stdout
    assert "Traceback" not in result.stderr


def test_upgrade_from_version_2_keeps_rows_and_chain(tmp_path):
    """v2 -> v3 with playhouse.migrate: old rows keep their links (verified in
    their own form), ids with gaps are renumbered, new rows chain on."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(V2_SCHEMA)
    prev = GENESIS
    for number, row_id in enumerate((1, 2, 5, 9), 1):  # gaps, as a PostgreSQL sequence leaves
        values = (
            f"e{number}",
            f"2026-01-0{number}T00:00:00.000000+00:00",
            "x",
            "success",
            "alice",
            None,
            None,
            None,
            "t",
            None,
        )
        details = f'{{"n":{number}}}'
        from auditaspect.integrity import legacy_payload

        current = link(prev, legacy_payload(values, details), None)
        conn.execute(
            "INSERT INTO audit_log (id, event_id, timestamp, event_type, outcome, actor, plan_id,"
            " ip, correlation_id, target, error, details, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row_id, *values, details, prev, current),
        )
        prev = current
    conn.execute("INSERT INTO audit_log_schema (version) VALUES (2)")
    conn.close()
    url = f"sqlite:///{path}"
    write(url, 2)
    conn = sqlite3.connect(path)
    ids = [r[0] for r in conn.execute("SELECT id FROM audit_log ORDER BY id")]
    keys = [r[0] for r in conn.execute("SELECT key_id FROM audit_log ORDER BY id")]
    version = conn.execute("SELECT max(version) FROM audit_log_schema").fetchone()[0]
    conn.close()
    assert ([1, 2, 3, 4, 5, 6], 3) == (ids, version)
    assert [None] * 4 + [UNKEYED] * 2 == keys
    assert verify(url).ok
    # A forger may not write a row in the old form after new ones.
    sql(
        path,
        forged_copy(2, 7, "old-form").replace("key_id FROM", "NULL FROM"),
        drop=True,
        cover=True,
    )
    report = verify(url)
    assert (False, 7) == (report.ok, report.bad_id)


V2_SCHEMA = """
CREATE TABLE audit_log (id INTEGER NOT NULL PRIMARY KEY, event_id VARCHAR(64) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL, event_type VARCHAR(128) NOT NULL, outcome VARCHAR(16) NOT NULL,
    actor TEXT, plan_id TEXT, ip TEXT, correlation_id TEXT, target TEXT NOT NULL,
    details JSON NOT NULL, error TEXT, prev_hash VARCHAR(64), hash VARCHAR(64));
CREATE UNIQUE INDEX audit_log_event_id ON audit_log (event_id);
CREATE TABLE audit_log_schema (id INTEGER NOT NULL PRIMARY KEY, version INTEGER NOT NULL);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END;
"""


def test_verify_cli_prints_breaks_escaped(log):
    """Break descriptions carry stored text: the command line escapes control characters."""
    url, path = log
    sql(
        path,
        "UPDATE audit_log SET timestamp = 'x' || char(27) || '[2J' WHERE id = 2",
        drop=True,
        cover=True,
    )
    result = subprocess.run(
        [sys.executable, "-m", "auditaspect", "verify", "--db", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 1 == result.returncode
    assert "\x1b" not in result.stdout
    assert "\\x1b" in result.stdout


def test_env_key_is_not_needed_to_read_key_ids(log):
    """Key ids are stored; the keys never are."""
    _, path = log
    conn = sqlite3.connect(path)
    stored = {r[0] for r in conn.execute("SELECT key_id FROM audit_log")}
    conn.close()
    assert {UNKEYED} == stored
    assert os.environ.get("AUDITASPECT_CHAIN_KEY") is None
    assert json.dumps(sorted(stored))


BUILD = """
import sqlite3, sys, uuid
import peewee
from auditaspect.integrity import GENESIS, UNKEYED, canonical, link_row
from auditaspect.model import create_schema

path, count = sys.argv[1], int(sys.argv[2])
db = peewee.SqliteDatabase(path)
create_schema(db)
db.close()
conn = sqlite3.connect(path, isolation_level=None)
prev = GENESIS
stamp = "2026-11-30T12:00:00.000000+00:00"
for start in range(0, count, 10_000):
    rows = []
    for row_id in range(start + 1, min(count, start + 10_000) + 1):
        scalars = (uuid.uuid4().hex, stamp, "config_changed", "success", "alice", None, None,
                   None, "svc.set", None)
        details = '{"key":"k%d","new_value":%d}' % (row_id, row_id)
        current = link_row(prev, row_id, UNKEYED, canonical(scalars, details), None)
        rows.append((row_id, *scalars, details, prev, current, UNKEYED))
        prev = current
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO audit_log (id, event_id, timestamp, event_type, outcome, actor, plan_id,"
        " ip, correlation_id, target, error, details, prev_hash, hash, key_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
conn.close()
"""

VERIFY = """
import resource, sys
from auditaspect import verify
seen = []
report = verify("sqlite:///" + sys.argv[1], progress=seen.append)
assert report.ok, report.breaks
assert seen == sorted(seen) and seen[-1] == report.rows_checked, seen[-3:]
print(report.rows_checked, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_verify_memory_does_not_grow_with_the_log(tmp_path):
    """verify() reads a page at a time: 200,000 rows take no more memory than 20,000."""
    peaks = {}
    for count in (20_000, 200_000):
        path = str(tmp_path / f"log-{count}.db")
        subprocess.run([sys.executable, "-c", BUILD, path, str(count)], check=True, timeout=600)
        result = subprocess.run(
            [sys.executable, "-c", VERIFY, path],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        rows, peak_kib = map(int, result.stdout.split())
        assert count == rows
        peaks[count] = peak_kib
    assert peaks[200_000] - peaks[20_000] < 16 * 1024, peaks  # KiB


def test_text_that_is_not_utf8_is_one_unreadable_row(log):
    """Bytes cast to TEXT in one row do not stop verify from checking the rest."""
    url, path = log
    sql(
        path,
        "UPDATE audit_log SET actor = CAST(x'ff00fe' AS TEXT) WHERE id = 2",
        drop=True,
        cover=True,
    )
    report = verify(url)
    assert (False, 2, 5) == (report.ok, report.bad_id, report.rows_checked)
    assert {"unreadable": 1} == report.counts


def test_the_command_line_shows_rows_outside_the_sequence(log):
    """`auditaspect query` lists a forged row at id 0 too (it used to start after 0)."""
    url, path = log
    sql(path, forged_copy(3, 0, "forged-zero"), drop=True, cover=True)
    result = subprocess.run(
        [sys.executable, "-m", "auditaspect", "query", "--db", url, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ids = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert [0, 1, 2, 3, 4, 5] == ids


def test_a_writer_whose_key_differs_from_the_head_spills_instead_of_chaining(tmp_path):
    """Case 9 at write time: a keyed sink connected to an empty log; an unkeyed
    writer got in first. The keyed sink's write is refused and spilled, not chained."""
    path = tmp_path / "race.db"
    url = f"sqlite:///{path}"
    keyed = PeeweeSink(url, chain_key="k", spill_path=tmp_path / "keyed.spill").connect()
    try:
        with PeeweeSink(url) as unkeyed:
            unkeyed.write(AuditEvent(event_type="first"))
        keyed.write(AuditEvent(event_type="second"))
        assert (0, 1) == (keyed.stats.written, keyed.stats.spilled)
    finally:
        keyed.close()
    assert 1 == count(path)
    assert verify(url).ok


def test_missing_triggers_are_put_back_and_logged(log, caplog):
    """A sink connecting to a v3 log whose triggers were dropped puts them back, loudly."""
    url, path = log
    sql(path, "DROP TRIGGER audit_log_append")
    assert "append-only triggers removed" in verify(url).reason
    with PeeweeSink(url):
        pass
    assert "audit_log_append were missing on audit_log; put back" in caplog.text
    assert verify(url).ok


def test_verify_reports_what_it_cannot_read(tmp_path, log):
    """Not a database, a row without a link, an int timestamp, a v2 log not yet
    upgraded: reports, never exceptions."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00not a sqlite file\xff" * 200)
    report = verify(f"sqlite:///{garbage}")
    assert (False, {"unreadable": 1}) == (report.ok, report.counts)
    url, path = log
    sql(
        path,
        "UPDATE audit_log SET hash = NULL WHERE id = 2",
        "UPDATE audit_log SET timestamp = 12345 WHERE id = 4",
        drop=True,
        cover=True,
    )
    report = verify(url)
    assert [2, 3, 4] == [b.id for b in report.breaks]  # 2 unlinked, so 3 does not follow
    assert "no chain link" in report.breaks[0].detail
    assert report.breaks[2].kind == "unreadable"
    with pytest.raises(ValueError, match="at least one key"):
        verify(url, chain_key=[])


def test_verify_leaves_the_evidence_as_it_found_it(tmp_path, log):
    """An auditor verifies the copy of a log they were handed (one file, in
    rollback-journal mode): verify() changes no byte of it and leaves no file
    beside it. A path that names no file is a ValueError, and creates none."""
    _, path = log
    evidence = tmp_path / "evidence" / "copy.db"
    evidence.parent.mkdir()
    source, copy = sqlite3.connect(path), sqlite3.connect(evidence)
    source.backup(copy)
    copy.execute("PRAGMA journal_mode=delete")
    (rows,) = copy.execute("SELECT count(*) FROM audit_log").fetchone()
    copy.close()
    source.close()
    before = evidence.read_bytes()
    report = verify(f"sqlite:///{evidence}")
    assert (True, rows) == (report.ok, report.rows_checked), report.breaks
    assert before == evidence.read_bytes()
    assert ["copy.db"] == sorted(p.name for p in evidence.parent.iterdir())
    typo = evidence.parent / "copy.sqlite"
    with pytest.raises(ValueError, match="no database file"):
        verify(f"sqlite:///{typo}")
    assert ["copy.db"] == sorted(p.name for p in evidence.parent.iterdir())


def test_a_version_2_log_verifies_before_its_upgrade(tmp_path):
    """verify() reads a log an older release wrote, without changing it."""
    from auditaspect.integrity import legacy_payload

    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(V2_SCHEMA)
    values = (
        "e1",
        "2026-01-01T00:00:00.000000+00:00",
        "x",
        "success",
        None,
        None,
        None,
        None,
        "t",
        None,
    )
    current = link(GENESIS, legacy_payload(values, "{}"), None)
    conn.execute(
        "INSERT INTO audit_log (id, event_id, timestamp, event_type, outcome, actor, plan_id,"
        " ip, correlation_id, target, error, details, prev_hash, hash)"
        " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}', ?, ?)",
        (*values, GENESIS, current),
    )
    conn.execute("INSERT INTO audit_log_schema (version) VALUES (2)")
    conn.close()
    report = verify(f"sqlite:///{path}")
    assert (True, 1) == (report.ok, report.rows_checked), report.breaks
