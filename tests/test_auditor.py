"""Safe for the auditor (issue 13): a read API, a read-only CLI that cannot be
turned against its reader, and no tracebacks, on real files and processes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditaspect import AuditEvent, AuditRecord, PeeweeSink, emit, open_log
from auditaspect.cli import main, neutralise, printable

# Root without the capabilities that bypass file permissions: its reads and
# writes are checked like any other user's.
DROP_FILE_CAPABILITIES = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search,-fowner",
    "--inh-caps=-dac_override,-dac_read_search,-fowner",
]
HOSTILE_ACTOR = "mallory\x1b[2J\x1b]0;pwned\x07\nFAKE  row\u202egnp.exe\x9b31m"


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "auditaspect", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        **kw,
    )


@pytest.fixture
def log(tmp_path) -> tuple[str, Path]:
    path = tmp_path / "audit.db"
    url = f"sqlite:///{path}"
    with PeeweeSink(url):
        emit("auth_failure", actor=HOSTILE_ACTOR, reason='=HYPERLINK("http://x","y")')
        emit("config_changed", actor="alice", key="+1", value="-2", other="@SUM(A1)")
        emit("config_changed", actor="bob", note="\t=cmd|' /C calc'!A0")
    return url, path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the read API ------------------------------------------------------------------


def test_open_log_reads_without_a_sink(log):
    """The documented read path: no sink, no binding of AuditRecord needed."""
    url, path = log
    before = digest(path)
    with open_log(url) as audit:
        rows = list(audit.rows(audit.Record.actor == "alice"))
        assert ["alice"] == [r.actor for r in rows]
        assert 3 == audit.select().count()
        assert audit.verify().ok
        assert 3 == audit.checkpoint().last_id
    assert before == digest(path)
    # SQLite's WAL readers make -shm (and an empty -wal) where the directory
    # allows, to read safely beside a writer; the database is not written.
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_open_log_is_bound_to_its_database_only(tmp_path, log):
    """A handle works side by side with a sink on another database, and neither
    subscribes nor moves AuditRecord."""
    url, _ = log
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with PeeweeSink(other) as sink, open_log(url) as audit:
        emit("session_created", actor="carol")
        assert 3 == audit.select().count()  # the event went to the sink's database only
        assert AuditRecord._meta.database is sink.database
        assert 1 == AuditRecord.select().count()
        with pytest.raises(Exception, match="append-only"):
            audit.Record.create(event_id="x")


def test_open_log_creates_nothing(tmp_path):
    """A missing file, a sqlite+pool URL and a database without audit_log are
    errors; no file appears and a non-audit file keeps its journal mode."""
    for url in (f"sqlite:///{tmp_path / 'missing.db'}", f"sqlite+pool:///{tmp_path / 'p.db'}"):
        with pytest.raises(ValueError, match="no database file"):
            open_log(url)
    assert [] == list(tmp_path.iterdir())
    plain = tmp_path / "plain.db"
    conn = sqlite3.connect(plain)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    before = digest(plain)
    with pytest.raises(ValueError, match="no audit_log table"):
        open_log(f"sqlite:///{plain}")
    result = run("query", "--db", f"sqlite:///{plain}")
    assert 2 == result.returncode
    assert before == digest(plain)  # not switched to WAL (that writes the header)
    assert ["plain.db"] == [p.name for p in tmp_path.iterdir()]


READER = """
import sys
from auditaspect import open_log
with open_log(sys.argv[1]) as audit:
    print(audit.select().count(), audit.verify().ok)
"""


def test_a_reader_without_write_access_reads_a_quiet_log(tmp_path, log):
    """A 0444 file in a 0555 directory, read by a process whose permissions are
    checked (root without the capabilities that bypass them, like any other
    user): verify, query and open_log work, and nothing is written."""
    url, path = log
    for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert not leftover.exists()
    before = digest(path)
    path.chmod(0o444)
    path.parent.chmod(0o555)
    drop = DROP_FILE_CAPABILITIES
    try:
        probe = subprocess.run([*drop, "touch", str(path.parent / "probe")], capture_output=True)
        assert 0 != probe.returncode, "the permission checks are not in force"
        for args in (["verify"], ["query", "--format", "json"], ["stats"], ["tail", "-n", "1"]):
            result = subprocess.run(
                [*drop, sys.executable, "-m", "auditaspect", *args, "--db", url],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert 0 == result.returncode, (args, result.stderr)
        result = subprocess.run(
            [*drop, sys.executable, "-c", READER, url], capture_output=True, text=True, timeout=120
        )
        assert "3 True" == result.stdout.strip(), result.stderr
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o600)
    assert before == digest(path)
    assert ["audit.db"] == sorted(p.name for p in path.parent.iterdir())


def test_immutable_reads_a_snapshot(log):
    url, _ = log
    result = run("--immutable", "verify", "--db", url)
    assert (0, "OK: 3 rows, hash chain intact") == (result.returncode, result.stdout.strip())


# -- the CLI cannot be turned against its reader ------------------------------------


def test_printable_escapes_controls_and_bidi():
    assert "a\\x1b[2Jb\\x0a\\u202ec\\x9b" == printable("a\x1b[2Jb\n\u202ec\x9b")
    assert "plain text, ünïcode" == printable("plain text, ünïcode")


@pytest.mark.parametrize(
    "args",
    [
        ["query"],
        ["query", "--format", "table", "--limit", "5"],
        ["tail", "-n", "5"],
        ["stats"],
    ],
)
def test_human_formats_cannot_drive_the_terminal(log, args):
    """Escape sequences, C1 controls, bidi overrides and newlines in stored
    values are shown escaped: one line per row, nothing for the terminal to run."""
    url, _ = log
    result = run(*args, "--db", url)
    assert 0 == result.returncode, result.stderr
    for bad in ("\x1b", "\x9b", "\u202e", "\x07"):
        assert bad not in result.stdout
    assert "\\x1b[2J" in result.stdout
    assert "FAKE  row" not in result.stdout.splitlines()[0]
    if args[0] != "stats":
        assert not any(line.startswith("FAKE") for line in result.stdout.splitlines())
        assert 3 + 2 == len(result.stdout.splitlines())  # header, rule, three rows


def test_json_output_escapes_c1_and_bidi_and_round_trips(log):
    url, _ = log
    result = run("query", "--format", "json", "--db", url)
    assert "\u202e" not in result.stdout
    assert "\x9b" not in result.stdout
    actors = [json.loads(line)["actor"] for line in result.stdout.splitlines()]
    assert HOSTILE_ACTOR in actors


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(log, tmp_path):
    """The OWASP rule: a leading = + - @ tab or CR gets a ' (not with --raw-csv)."""
    url, _ = log
    assert "'=1" == neutralise("=1")
    assert "plain" == neutralise("plain")
    for args in (["query", "--format", "csv"], ["export", "--format", "csv"]):
        safe = run(*args, "--db", url).stdout
        cells = [c for row in csv.reader(io.StringIO(safe)) for c in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
        raw = run(*args, "--raw-csv", "--db", url).stdout
        raw_cells = [c for row in csv.reader(io.StringIO(raw)) for c in row]
        assert any(c.startswith("{") and '"=HYPERLINK' in c for c in raw_cells)
    details = [json.loads(c) for c in cells if c.startswith("{")]
    assert any(d.get("key") == "+1" for d in details)  # JSON cells start with { anyway


@pytest.mark.parametrize("where", ["option", "environment"])
def test_no_message_shows_a_database_password(tmp_path, where):
    url = "postgresql://auditor:s3cret-Pa55@127.0.0.1:9/audit"
    env = {**os.environ}
    args = ["verify"]
    if where == "option":
        args += ["--db", url]
    else:
        env["AUDITASPECT_DATABASE_URL"] = url
    result = run(*args, env=env)
    assert 2 == result.returncode
    assert "s3cret-Pa55" not in result.stderr + result.stdout
    assert "auditor:***@127.0.0.1" in result.stderr
    assert 1 == len(result.stderr.splitlines())


def test_sink_log_lines_show_no_password(tmp_path, caplog):
    """A sink that cannot reach its PostgreSQL server logs where, never the password."""
    caplog.set_level(logging.INFO, logger="auditaspect")
    sink = PeeweeSink(
        "postgresql://writer:s3cret-Pa55@127.0.0.1:9/audit", spill_path=tmp_path / "s.jsonl"
    )
    sink.connect()
    try:
        emit("config_changed", key="k")
    finally:
        sink.close()
    assert "s3cret-Pa55" not in caplog.text
    assert "127.0.0.1" in caplog.text


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", ".spill.jsonl", ".spill.jsonl.quarantine"])
def test_export_never_overwrites_the_log_itself(log, suffix):
    url, path = log
    target = Path(f"{path}{suffix}")
    before = digest(path)
    result = run("export", "--format", "jsonl", "--output", str(target), "--db", url)
    assert 2 == result.returncode
    assert "a file of the audit log itself" in result.stderr
    assert before == digest(path)
    if suffix:  # nothing exported into the log's other files either
        assert not target.exists() or b'"event_type"' not in target.read_bytes()
    assert 3 == len(run("query", "--format", "json", "--db", url).stdout.splitlines())


def test_export_files_are_private_and_whole(log, tmp_path):
    url, _ = log
    target = tmp_path / "out.jsonl"
    target.write_text("previous export\n")
    result = run("export", "--format", "jsonl", "--output", str(target), "--db", url)
    assert 0 == result.returncode, result.stderr
    assert 0o600 == stat.S_IMODE(target.stat().st_mode)
    assert 3 == len(target.read_text().splitlines())
    assert [] == [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    missing_dir = run(
        "export", "--format", "csv", "--output", str(tmp_path / "no" / "x.csv"), "--db", url
    )
    assert 2 == missing_dir.returncode
    assert 1 == len(missing_dir.stderr.splitlines())


# -- no tracebacks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--since", "99999999999d"], "too far in the past"),
        (["query", "--since", "1000000000w"], "too far in the past"),
        (["query", "--since", "0001-01-01T00:00+14:00"], "bad time"),
        (["query", "--since", "2026-11-01", "--until", "7d"], "--until 7d is ambiguous"),
        (["query", "--until", "+3d"], "in the future"),
        (["tail", "-n", "-1"], "-n must be >= 0"),
        (["--db", "mysql://u:pw@h/db", "stats"], "cannot open mysql://u:***@h/db"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(log, args, message):
    url, _ = log
    result = run(*args, env={**os.environ, "AUDITASPECT_DATABASE_URL": url})
    assert 2 == result.returncode, result.stdout
    assert 1 == len(result.stderr.strip().splitlines()), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_until_takes_a_signed_age_and_stats_prints_dates(log):
    url, _ = log
    recent = run("query", "--since", "1h", "--until", "+0", "--format", "json", "--db", url)
    assert 3 == len(recent.stdout.splitlines()), recent.stderr
    old = run("query", "--until", "-1d", "--format", "json", "--db", url)
    assert ("", "") == (old.stdout, old.stderr)
    assert "" == run("query", "--until=-1d", "--format", "json", "--db", url).stdout
    now = run("query", "--until", "now", "--format", "json", "--db", url)
    assert 3 == len(now.stdout.splitlines())
    stats = run("stats", "--db", url).stdout
    day_lines = stats.split("by day (UTC):\n")[1].splitlines()
    assert 1 == len(day_lines)
    assert len(day_lines[0].split()[1]) == len("2026-11-30")


def test_stats_on_a_malformed_database_is_one_line(tmp_path, log):
    _, path = log
    broken = tmp_path / "broken.db"
    data = bytearray(path.read_bytes())
    data[4096:] = b"\x00" * (len(data) - 4096)  # the table pages gone, the schema kept
    broken.write_bytes(bytes(data))
    result = run("stats", "--db", f"sqlite:///{broken}")
    assert result.returncode in (0, 2)
    assert "Traceback" not in result.stderr


WORDS = st.sampled_from(
    [
        "query",
        "tail",
        "export",
        "verify",
        "stats",
        "checkpoint",
        "--format",
        "table",
        "json",
        "csv",
        "jsonl",
        "--since",
        "--until",
        "7d",
        "-7d",
        "+0",
        "now",
        "2026-01-01",
        "--limit",
        "-1",
        "0",
        "5",
        "-n",
        "--type",
        "--actor",
        "--outcome",
        "success",
        "--key",
        "--checkpoint",
        "--db",
        "--immutable",
        "--raw-csv",
        "--output",
        "--public-key",
        "--sign",
        "--bogus",
        "",
        "\x1b[2J",
        "99999999999999999999",
        "sqlite:///",
        "postgresql://u:p@127.0.0.1:9/x",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(argv=st.lists(WORDS | st.text(max_size=12), max_size=7))
def test_the_command_line_never_raises(log, tmp_path, monkeypatch, capsys, argv):
    """Whatever the arguments, main() returns 0, 1 or 2 and prints no traceback."""
    url, _ = log
    monkeypatch.setenv("AUDITASPECT_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    if "-f" in argv or "--follow" in argv or "redact-check" in argv:
        return
    status = main(list(argv), out=io.StringIO())
    captured = capsys.readouterr()
    assert status in (0, 1, 2)
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) <= 3, captured.err


# -- memory does not grow with the log -------------------------------------------------

MEASURE = """
import io, resource, sys
from auditaspect.cli import main

class Sink(io.TextIOBase):
    def write(self, text):
        return len(text)

status = main(sys.argv[1:], out=Sink())
print(status, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.fixture(scope="module")
def big_logs(tmp_path_factory) -> dict[int, Path]:
    """Logs of 20,000 and 200,000 rows, built once for the streaming tests."""
    from test_forgery import BUILD

    where = tmp_path_factory.mktemp("big")
    logs = {}
    for count in (20_000, 200_000):
        logs[count] = where / f"log-{count}.db"
        subprocess.run([sys.executable, "-c", BUILD, str(logs[count]), str(count)], check=True)
    return logs


@pytest.mark.parametrize(
    "args",
    [
        ["query"],
        ["query", "--format", "json"],
        ["export", "--format", "csv"],
        ["tail", "-n", "200000"],
    ],
)
def test_reading_the_log_streams(big_logs, args):
    """Each format holds a page, not the log: 200,000 rows take about the memory
    20,000 do."""
    peaks = {}
    for count, path in big_logs.items():
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, *args, "--db", f"sqlite:///{path}"],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        status, peak = map(int, result.stdout.split())
        assert 0 == status, result.stderr
        peaks[count] = peak
    assert peaks[200_000] - peaks[20_000] < 16 * 1024, peaks  # KiB


def test_help_shows_the_exit_codes():
    result = run("--help")
    assert 0 == result.returncode
    assert "exit status:" in result.stdout
    for line in ("  0 ", "  1 ", "  2 ", "  130 "):
        assert line in result.stdout


def test_hand_written_events_keep_every_column(log):
    """Columns come back as written through open_log, whatever the row's id."""
    url, _ = log
    with open_log(url) as audit:
        actors = [row.actor for row in audit.rows()]
    assert HOSTILE_ACTOR in actors
    assert isinstance(AuditEvent(event_type="x"), AuditEvent)


def test_log_lines_mask_any_url_password(caplog):
    """The package's logger masks a password in any URL it is handed."""
    caplog.set_level(logging.INFO, logger="auditaspect")
    logging.getLogger("auditaspect").error("cannot reach %s", "postgresql://w:pw123456@db/x")
    assert "pw123456" not in caplog.text
    assert "postgresql://w:***@db/x" in caplog.text


def test_an_empty_result_prints_the_header(log):
    url, _ = log
    result = run("query", "--actor", "nobody", "--db", url)
    assert 2 == len(result.stdout.splitlines())


def test_a_failed_export_leaves_the_previous_file(log, tmp_path, monkeypatch, capsys):
    """Whole or not at all: the temporary file goes, the old export stays."""
    from auditaspect import cli

    url, _ = log
    target = tmp_path / "out.jsonl"
    target.write_text("previous export\n")
    calls = []

    def failing_row(self, record):
        calls.append(record.id)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        self.out.write("partial\n")

    monkeypatch.setattr(cli._Output, "row", failing_row)
    assert 2 == main(["export", "--format", "jsonl", "--output", str(target), "--db", url])
    assert "No space left on device" in capsys.readouterr().err
    assert "previous export\n" == target.read_text()
    assert ["out.jsonl"] == [p.name for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_a_closed_pipe_and_ctrl_c_end_quietly(tmp_path):
    """`auditaspect query | head -1` exits 0 without a traceback; Ctrl-C in
    `tail -f` exits 130."""
    import signal
    import time

    url = f"sqlite:///{tmp_path / 'many.db'}"
    with PeeweeSink(url):
        for i in range(3000):
            emit("config_changed", key=f"k{i}")
    reader = subprocess.Popen(
        [sys.executable, "-m", "auditaspect", "query", "--format", "json", "--db", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    reader.stdout.readline()
    reader.stdout.close()
    _, errors = reader.communicate(timeout=60)
    assert (0, b"") == (reader.returncode, errors)
    follower = subprocess.Popen(
        [sys.executable, "-m", "auditaspect", "tail", "-f", "-n", "1", "--db", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    assert "k2999" in follower.stdout.readline() + follower.stdout.readline() + (
        follower.stdout.readline()
    )
    with PeeweeSink(url):
        emit("config_changed", key="followed")
    deadline = time.monotonic() + 30
    seen = ""
    while "followed" not in seen and time.monotonic() < deadline:
        seen += follower.stdout.readline()
    follower.send_signal(signal.SIGINT)
    _, errors = follower.communicate(timeout=30)
    assert (130, "") == (follower.returncode, errors)
    assert "followed" in seen


def test_passwords_are_masked_in_any_spelling():
    from auditaspect.database import mask_url

    url = "postgresql://u:p%40ss@h/db"
    assert "cannot connect as u:***@h" == mask_url("cannot connect as u:p@ss@h", url)
    assert "x postgresql://u:***@h/db" == mask_url(f"x {url}")
    assert "postgresql://u:***@h:bad/db" == mask_url(
        "postgresql://u:pw@h:bad/db", "postgresql://u:pw@h:bad/db"
    )


def test_open_log_variants(tmp_path, log):
    import peewee

    url, path = log
    db = peewee.SqliteDatabase(str(path))
    with open_log(db) as audit:  # a Database of the caller's: used, and left open
        assert 3 == audit.select().count()
    assert not db.is_closed()
    db.close()
    with open_log(url, readonly=False) as audit:
        assert 3 == audit.select().count()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, not even close" * 100)
    with pytest.raises(ValueError, match="cannot read the audit log"):
        open_log(f"sqlite:///{garbage}")
    with pytest.raises(ValueError, match="names no file"):
        open_log("sqlite:///")


def test_a_pending_wal_in_an_unwritable_directory_is_one_clear_line(log):
    url, path = log
    Path(f"{path}-wal").write_bytes(b"")
    path.parent.chmod(0o555)
    drop = DROP_FILE_CAPABILITIES
    try:
        result = subprocess.run(
            [*drop, sys.executable, "-m", "auditaspect", "verify", "--db", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        path.parent.chmod(0o755)
    assert 2 == result.returncode
    assert "a writer left" in result.stderr
    assert 1 == len(result.stderr.splitlines())
