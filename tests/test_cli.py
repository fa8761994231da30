"""The auditaspect command line, run as a real subprocess against a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
import os
import select
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from auditaspect import AuditEvent, EventType, PeeweeSink
from auditaspect.cli import main, parse_when


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditaspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def log(tmp_path) -> str:
    """A log with events of several types, actors, outcomes and days."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    now = datetime.now(timezone.utc)
    with PeeweeSink(url) as sink:
        for i, (kind, actor, outcome, age) in enumerate(
            [
                ("plan_applied", "alice", "success", timedelta(days=3)),
                ("plan_applied", "bob", "success", timedelta(hours=5)),
                ("auth_failure", "mallory", "failure", timedelta(minutes=30)),
                ("config_changed", "alice", "success", timedelta(minutes=5)),
            ]
        ):
            sink.write(
                AuditEvent(
                    event_type=kind,
                    actor=actor,
                    outcome=outcome,
                    plan_id=f"plan-{i}" if kind == "plan_applied" else None,
                    timestamp=now - age,
                    details={"n": i, "note": "é"},
                )
            )
    return url


def test_query_json_pipes_into_a_json_parser(log):
    """query --format json prints one JSON object per line, ready for jq."""
    result = run("query", "--db", log, "--format", "json")
    assert 0 == result.returncode, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [0, 1, 2, 3] == [r["details"]["n"] for r in rows]
    assert {"id", "event_id", "timestamp", "event_type", "hash", "prev_hash"} <= set(rows[0])


def test_query_filters(log):
    """--type (repeatable), --actor, --plan, --outcome, --since, --until, --limit."""

    def ns(*args: str) -> list[int]:
        out = run("--db", log, "query", "--format", "json", *args)
        assert 0 == out.returncode, out.stderr
        return [json.loads(line)["details"]["n"] for line in out.stdout.splitlines()]

    assert [0, 1, 3] == ns("--type", "plan_applied", "--type", "config_changed")
    assert [0, 3] == ns("--actor", "alice")
    assert [1] == ns("--plan", "plan-1")
    assert [2] == ns("--outcome", "failure")
    assert [2, 3] == ns("--since", "1h")
    assert [0, 1] == ns("--until", "-2h")
    since = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert [1, 2, 3] == ns("--since", since)
    assert [0, 1] == ns("--limit", "2")


def test_query_table_and_csv(log):
    """The default is a readable table; csv has a header and one row per event."""
    table = run("query", "--db", log)
    assert 0 == table.returncode
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "timestamp", "event_type"]
    assert 6 == len(lines)
    out = run("query", "--db", log, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert ["alice", "bob", "mallory", "alice"] == [r["actor"] for r in rows]
    assert {"n": 2, "note": "é"} == json.loads(rows[2]["details"])


def test_environment_variable_names_the_database(log):
    """Without --db the CLI reads $AUDITASPECT_DATABASE_URL."""
    result = run("stats", env={"AUDITASPECT_DATABASE_URL": log})
    assert 0 == result.returncode
    assert result.stdout.startswith("4 events")
    assert "mallory" in result.stdout
    assert "by day (UTC)" in result.stdout


def test_tail_and_follow(log):
    """tail prints the newest rows; -f keeps printing rows as they are added."""
    result = run("tail", "--db", log, "-n", "2", "--format", "json")
    assert [2, 3] == [json.loads(line)["details"]["n"] for line in result.stdout.splitlines()]
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auditaspect",
            "tail",
            "--db",
            log,
            "-n",
            "1",
            "-f",
            "--format",
            "json",
            "--interval",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None

    def next_line() -> dict:
        ready, _, _ = select.select([follower.stdout], [], [], 60)
        assert ready, "tail -f printed nothing within 60 s"
        return json.loads(follower.stdout.readline())

    try:
        assert 3 == next_line()["details"]["n"]  # the newest row: the follower is running
        with PeeweeSink(log) as sink:
            sink.write(AuditEvent(event_type="session_created", details={"n": 99}))
        assert 99 == next_line()["details"]["n"]
    finally:
        follower.terminate()
        follower.communicate(timeout=30)


def test_export_jsonl_and_csv_to_files_and_stdout(log, tmp_path):
    """export streams every row, to a file or standard output, with no progress bar when piped."""
    target = tmp_path / "export.jsonl"
    result = run("export", "--db", log, "--format", "jsonl", "--output", str(target))
    assert 0 == result.returncode
    assert "" == result.stderr  # stderr is not a terminal here: no progress bar
    assert 4 == len(target.read_text(encoding="utf-8").splitlines())
    piped = run("export", "--db", log, "--format", "csv")
    assert 5 == len(piped.stdout.splitlines())


def test_export_streams_many_rows_in_pages(tmp_path, capsys):
    """More rows than one page come out complete and in order."""
    url = f"sqlite:///{tmp_path / 'big.db'}"
    with PeeweeSink(url, mode="buffered") as sink:
        for i in range(2500):
            sink.write(AuditEvent(event_type="x", details={"n": i}))
    assert 0 == main(["--db", url, "export", "--format", "jsonl"])
    out = capsys.readouterr().out.splitlines()
    assert list(range(2500)) == [json.loads(line)["details"]["n"] for line in out]


def test_verify_exit_status_and_checkpoints(log, tmp_path):
    """verify exits 0 when intact, 1 with the first broken row; checkpoints round-trip."""
    mark = tmp_path / "mark.json"
    ok = run("verify", "--db", log, "--write-checkpoint", str(mark))
    assert (0, "OK: 4 rows, hash chain intact") == (ok.returncode, ok.stdout.strip())
    assert 4 == json.loads(mark.read_text())["last_id"]
    assert 0 == run("verify", "--db", log, "--checkpoint", str(mark)).returncode
    path = log.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = 'eve' WHERE id = 2")
    conn.close()
    broken = run("verify", "--db", log)
    assert 1 == broken.returncode
    assert broken.stdout.startswith("BROKEN: 2 break(s) in 4 rows checked\n")
    assert "  modified: row 2: the row's content does not match its hash" in broken.stdout
    assert "  schema: append-only triggers removed: ['audit_log_no_update']" in broken.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--since", "yesterday"], "bad time 'yesterday'"),
        (["query", "--bogus"], "unrecognized arguments: --bogus"),
        (["query", "--limit", "-1"], "--limit must be >= 0"),
        (["--db", "mongodb://h/db", "query"], "cannot open mongodb://h/db"),
        (["--db", "sqlite:///missing.db", "stats"], "no database file 'missing.db'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["verify", "--checkpoint", "nope.json"], "checkpoint file nope.json does not exist"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(log, tmp_path, args, message):
    """Mistakes get one clear line on stderr and exit status 2, never a traceback."""
    env = {"AUDITASPECT_DATABASE_URL": log}
    result = run(*args, env=env, cwd=tmp_path)
    assert 2 == result.returncode
    assert 1 == len(result.stderr.strip().splitlines()), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_without_audit_log_is_a_clear_error(tmp_path):
    """A SQLite file that is not an audit database says so."""
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    result = run("--db", f"sqlite:///{other}", "query")
    assert 2 == result.returncode
    assert "no audit_log table" in result.stderr


def test_console_script_is_installed(log):
    """The `auditaspect` console script runs the same CLI."""
    script = Path(sys.executable).with_name("auditaspect")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert 0 == result.returncode
    assert result.stdout.startswith("auditaspect ")


def test_parse_when():
    """Relative ages count back from now; naive ISO times are UTC."""
    now = datetime(2026, 1, 10, tzinfo=timezone.utc)
    assert datetime(2026, 1, 9, 22, tzinfo=timezone.utc) == parse_when("2h", now)
    assert datetime(2025, 12, 27, tzinfo=timezone.utc) == parse_when("2w", now)
    assert datetime(2026, 1, 1, 12, tzinfo=timezone.utc) == parse_when("2026-01-01T12:00")
    assert datetime(2026, 1, 1, 11, tzinfo=timezone.utc) == parse_when("2026-01-01T12:00+01:00")
    assert datetime(2026, 1, 1, 12, tzinfo=timezone.utc) == parse_when("2026-01-01T12:00:00Z")


def test_quickstart_then_query_shows_the_nine_events(tmp_path):
    """The README's main command followed by `auditaspect query` shows all nine events."""
    root = Path(__file__).resolve().parent.parent
    quick = subprocess.run(
        [sys.executable, str(root / "examples" / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == quick.returncode, quick.stderr
    result = run("query", "--db", "sqlite:///audit.db", cwd=tmp_path)
    assert 0 == result.returncode
    for kind in (member.value for member in EventType):
        assert kind in result.stdout


def test_redact_check_prints_redacted_text_and_the_rules_that_fired(tmp_path):
    """redact-check on stdin: redacted text on stdout, rule and line on stderr, exit 1."""
    token = "ghp_" + "k8Z" * 12
    result = subprocess.run(
        [sys.executable, "-m", "auditaspect", "redact-check"],
        input=f"hello\nDB_PASSWORD=hunter2x and {token}\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 1 == result.returncode
    assert (
        "hello\nDB_PASSWORD=[REDACTED:password-assignment] and [REDACTED:github-pat]\n"
        == result.stdout
    )
    assert "line 2: password-assignment" in result.stderr
    assert "line 2: github-pat (GitHub personal access token (classic))" in result.stderr
    assert "2 secret(s) found" in result.stderr


def test_redact_check_on_a_clean_file_and_with_extra_rules(tmp_path):
    """A clean file exits 0 unchanged; --rules adds the user's own formats; mistakes exit 2."""
    clean = tmp_path / "clean.txt"
    clean.write_text("nothing to see: 94a2de50-ff54-4939-a9d6-bd800bc49874\n", encoding="utf-8")
    result = run("redact-check", str(clean))
    assert 0 == result.returncode
    assert clean.read_text(encoding="utf-8") == result.stdout
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rule]]\nid = 'acme'\nkeywords = ['acme_']\nregex = '''acme_[0-9]{6}'''\n",
        encoding="utf-8",
    )
    clean.write_text("key acme_123456\n", encoding="utf-8")
    result = run("redact-check", str(clean), "--rules", str(rules))
    assert (1, "key [REDACTED:acme]\n") == (result.returncode, result.stdout)
    assert 2 == run("redact-check", str(tmp_path / "missing.txt")).returncode
    rules.write_text("[[rule]\n", encoding="utf-8")
    bad = run("redact-check", str(clean), "--rules", str(rules))
    assert 2 == bad.returncode
    assert "not valid TOML" in bad.stderr
    assert "Traceback" not in bad.stderr
