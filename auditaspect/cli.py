"""The ``auditaspect`` command line: query, tail, export, verify and stats.

    auditaspect [--db URL] query [--type T ...] [--actor A] [--plan P] [--outcome O]
                                 [--since WHEN] [--until WHEN] [--limit N]
                                 [--format table|json|csv]
    auditaspect [--db URL] tail [-n N] [-f]
    auditaspect [--db URL] export --format jsonl|csv [--output FILE]
    auditaspect [--db URL] verify [--key KEY ...] [--checkpoint FILE [--public-key PEM ...]]
                                  [--write-checkpoint FILE [--sign KEY.pem]]
    auditaspect [--db URL] checkpoint [--sign KEY.pem] [--out FILE]
    auditaspect keygen --out KEY.pem
    auditaspect [--db URL] stats
    auditaspect redact-check [FILE] [--rules RULES.toml]

``--db`` defaults to ``$AUDITASPECT_DATABASE_URL``, else ``sqlite:///audit.db``.
WHEN is an ISO timestamp (UTC when it has no offset) or a relative age such as
``30s``, ``15m``, ``2h``, ``7d``, ``2w``. Mistakes (bad URL, missing table,
unknown option, bad time) print one line and exit with status 2; ``verify``
exits 1 when the chain is broken, ``redact-check`` when it found a secret.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO
from urllib.parse import unquote, urlparse

import peewee

from . import __version__
from .checkpoints import (
    Checkpoint,
    TrustedKey,
    checkpoint,
    generate_signing_key,
    load_public_keys,
    load_signing_key,
    read_checkpoints,
    write_checkpoint_file,
)
from .database import close_database, mask_url, open_readonly, resolve_url
from .errors import first_line
from .model import TABLE_NAME, AuditRecord
from .redaction import Redactor
from .rules import RuleSet, default_rules, load_rules
from .verification import verify

__all__ = ["main", "main_exit"]

# Every column of audit_log, in table order, from the model (the one definition).
COLUMNS = tuple(field.name for field in AuditRecord._meta.sorted_fields)
TABLE_COLUMNS = ("id", "timestamp", "event_type", "outcome", "actor", "plan_id", "ip", "details")
_PAGE = 1000
_RELATIVE = re.compile(r"^\s*([+-]?)(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# Databases opened by this run of the command line, closed when it ends.
_opened: list[peewee.Database] = []


class UsageError(Exception):
    """A mistake of the user's: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage; we print one line
        raise UsageError(message)


def parse_when(text: str, now: datetime | None = None, *, until: bool = False) -> datetime:
    """Parse an ISO timestamp or an age (``15m``, ``2h``, ``7d``; ``-7d`` too) into UTC.

    An age is a time before now. ``--until`` takes only a signed age
    (``-7d``: until 7 days ago; ``+0`` or ``now``: until now): a bare ``7d``
    there reads as "the last 7 days" to some and "until 7 days ago" to others.
    """
    now = now or datetime.now(timezone.utc)
    if text.strip().lower() in ("now", "+0", "-0", "0"):
        return now
    match = _RELATIVE.match(text)
    if match:
        sign, amount, unit = match.group(1), int(match.group(2)), match.group(3)
        if until and not sign:
            raise UsageError(
                f"--until {text.strip()} is ambiguous: write --until -{amount}{unit} "
                f"for {amount}{unit} ago, or an ISO time"
            )
        if sign == "+" and amount:
            raise UsageError(f"bad time {text!r}: times in the future are not in the log")
        try:
            return now - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise UsageError(f"bad time {text!r}: too far in the past") from None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise UsageError(
            f"bad time {text!r}: use an ISO timestamp (2026-01-31T12:00) or an age like "
            "15m, 2h, 7d (-7d with --until)"
        ) from None


def _record_dict(row: AuditRecord) -> dict[str, Any]:
    data = {name: getattr(row, name) for name in COLUMNS}
    data["timestamp"] = row.timestamp.isoformat()
    return data


def _flat(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return str(value)


# C0 and C1 controls, DEL, and the bidi controls that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What JSON leaves raw that a terminal would act on (JSON escapes C0 itself).
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control and bidi characters shown escaped (``\\x1b``,
    ``\\u202e``): stored text cannot move the cursor, clear the screen, start
    a new (forged) line or reorder what the reader sees."""
    return _CONTROL.sub(_escape, text)


def _json_line(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Cells a spreadsheet would run as a formula (OWASP: CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: ``'`` before a leading ``= + - @``, tab or CR."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


# The table's columns and their widths: rows stream, so widths cannot be
# measured first; longer values are cut with an ellipsis (the JSON formats
# carry everything).
_WIDTHS = {
    "id": 8,
    "timestamp": 32,
    "event_type": 20,
    "outcome": 7,
    "actor": 20,
    "plan_id": 16,
    "ip": 15,
    "details": 60,
}


def _cell(value: str, width: int) -> str:
    value = printable(value)
    return value if len(value) <= width else value[: width - 1] + "…"


class _Output:
    """Writes rows in one of the formats, one row at a time (memory stays flat)."""

    def __init__(self, fmt: str, out: TextIO, *, raw_csv: bool = False) -> None:
        self.fmt = fmt
        self.out = out
        self._csv: Any = None
        self._raw_csv = raw_csv
        self._header = False

    def row(self, record: AuditRecord) -> None:
        data = _record_dict(record)
        if self.fmt in ("json", "jsonl"):
            self.out.write(_json_line(data) + "\n")
        elif self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.writer(self.out)
                self._csv.writerow(COLUMNS)
            cells = [_flat(data[c]) for c in COLUMNS]
            self._csv.writerow(cells if self._raw_csv else [neutralise(c) for c in cells])
        else:
            if not self._header:
                self._header = True
                self._line(list(TABLE_COLUMNS))
                self.out.write("  ".join("-" * _WIDTHS[c] for c in TABLE_COLUMNS) + "\n")
            self._line([_flat(data[c]) for c in TABLE_COLUMNS])

    def _line(self, values: list[str]) -> None:
        cells = (
            _cell(v, _WIDTHS[c]).ljust(_WIDTHS[c])
            for v, c in zip(values, TABLE_COLUMNS, strict=True)
        )
        self.out.write("  ".join(cells).rstrip() + "\n")

    def close(self) -> None:
        if self.fmt == "table" and not self._header:  # no rows: the header alone
            self._header = True
            self._line(list(TABLE_COLUMNS))
            self.out.write("  ".join("-" * _WIDTHS[c] for c in TABLE_COLUMNS) + "\n")


def _open(url: str | None, immutable: bool = False) -> peewee.Database:
    """Open the log read-only (nothing created or changed) and bind the model to it."""
    target = resolve_url(url)
    db: peewee.Database | None = None
    try:
        db, _ = open_readonly(target, immutable=immutable)
        tables = db.get_tables()
    except (
        ValueError,
        ImportError,
        peewee.DatabaseError,
        peewee.ImproperlyConfigured,
        sqlite3.Error,
    ) as exc:  # a driver missing (mysql://) only shows when connecting
        if db is not None:
            close_database(db)
        raise UsageError(f"cannot open {mask_url(target)}: {mask_url(str(exc), target)}") from None
    if TABLE_NAME not in tables:
        close_database(db)
        raise UsageError(
            f"no {TABLE_NAME} table in {mask_url(target)}: is this the audit database?"
        )
    if isinstance(db, peewee.SqliteDatabase):
        # A row whose text is not UTF-8 is shown (escaped), not an error for the page.
        db.connection().text_factory = _lenient_text  # type: ignore[no-untyped-call]
    AuditRecord.bind(db, bind_refs=False, bind_backrefs=False)
    _opened.append(db)
    return db


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _filtered(args: argparse.Namespace) -> Any:
    query = AuditRecord.select()
    if args.type:
        query = query.where(AuditRecord.event_type.in_(args.type))
    if args.actor:
        query = query.where(AuditRecord.actor == args.actor)
    if args.plan:
        query = query.where(AuditRecord.plan_id == args.plan)
    if args.outcome:
        query = query.where(AuditRecord.outcome == args.outcome)
    if args.since:
        query = query.where(AuditRecord.timestamp >= parse_when(args.since))
    if args.until:
        query = query.where(AuditRecord.timestamp <= parse_when(args.until, until=True))
    return query


def _pages(query: Any, limit: int | None = None) -> Iterator[AuditRecord]:
    """Rows in id order, a page at a time: constant memory on millions of rows.

    Every row, whatever its id: a row forged at ``id <= 0`` is shown, not hidden.
    """
    last: int | None = None
    seen = 0
    while True:
        size = _PAGE if limit is None else min(_PAGE, limit - seen)
        if size <= 0:
            return
        page_query = query if last is None else query.where(AuditRecord.id > last)
        page = list(page_query.order_by(AuditRecord.id).limit(size))
        if not page:
            return
        yield from page
        seen += len(page)
        last = page[-1].id


def cmd_query(args: argparse.Namespace, out: TextIO) -> int:
    _open(args.db, args.immutable)
    output = _Output(args.format, out, raw_csv=args.raw_csv)
    for row in _pages(_filtered(args), args.limit):
        output.row(row)
    output.close()
    return 0


def cmd_tail(args: argparse.Namespace, out: TextIO) -> int:
    if args.lines < 0:
        raise UsageError(f"-n must be >= 0, not {args.lines}")
    _open(args.db, args.immutable)
    # The id the newest N rows start from, then those rows a page at a time:
    # memory does not grow with N.
    start = (
        AuditRecord.select(AuditRecord.id)
        .order_by(AuditRecord.id.desc())
        .offset(args.lines - 1)
        .limit(1)
        .scalar()
        if args.lines
        else None
    )
    top = AuditRecord.select(peewee.fn.max(AuditRecord.id)).scalar()
    query = AuditRecord.select()
    if start is not None:
        query = query.where(AuditRecord.id >= start)
    output = _Output(args.format, out)
    last = top
    if args.lines:
        for row in _pages(query):
            output.row(row)
            last = row.id
    output.close()
    out.flush()
    while args.follow:
        time.sleep(args.interval)
        query = AuditRecord.select()
        if last is not None:
            query = query.where(AuditRecord.id > last)
        for row in _pages(query):
            line = _Output(args.format if args.format != "table" else "json", out)
            line.row(row)
            last = row.id
        out.flush()
    return 0


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    db = _open(args.db, args.immutable)
    total = AuditRecord.select().count()
    target: TextIO = out
    handle = None
    temporary = None
    if args.output:
        _refuse_log_files(args.output, db)
        # Whole or not at all: a temporary file next to it, renamed on success.
        temporary = f"{args.output}.tmp-{os.getpid()}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {_reason(exc)}") from None
        handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
        target = handle
    progress = sys.stderr.isatty() and (handle is not None or not out.isatty())
    done = False
    try:
        output = _Output("jsonl" if args.format == "jsonl" else "csv", target, raw_csv=args.raw_csv)
        for count, row in enumerate(_pages(AuditRecord.select()), 1):
            output.row(row)
            if progress and (count % 1000 == 0 or count == total):
                sys.stderr.write(
                    f"\rexporting {count:,}/{total:,} rows ({count * 100 // max(total, 1)}%)"
                )
        output.close()
        if handle is not None:
            handle.flush()
            os.fsync(handle.fileno())
        done = True
    finally:
        if handle is not None:
            handle.close()
            if done and temporary is not None:
                os.replace(temporary, args.output)
            elif temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        if progress:
            sys.stderr.write("\n")
    return 0


def _refuse_log_files(path: str, db: peewee.Database) -> None:
    """Refuse an output path that is the database, its -wal/-shm/-journal, or a spill file."""
    database_file = _database_file(db)
    if database_file is None:
        return
    target = os.path.realpath(path)
    base = os.path.realpath(database_file)
    spill = f"{base}.spill.jsonl"
    if target in (base, f"{base}-wal", f"{base}-shm", f"{base}-journal", spill) or (
        target.startswith(spill)
    ):
        raise UsageError(f"{path} is a file of the audit log itself: write it elsewhere")


def _database_file(db: peewee.Database) -> str | None:
    if not isinstance(db, peewee.SqliteDatabase):
        return None
    name = str(db.database)
    return unquote(urlparse(name).path) if name.startswith("file:") else name


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    db = _open(args.db, args.immutable)
    marks: list[Checkpoint] = []
    if args.checkpoint:
        try:
            marks = read_checkpoints(args.checkpoint)
        except FileNotFoundError:
            if args.write_checkpoint != args.checkpoint:
                raise UsageError(f"checkpoint file {args.checkpoint} does not exist") from None
            # First run of `verify --checkpoint F --write-checkpoint F`.
            sys.stderr.write(f"no checkpoint in {args.checkpoint} yet: checking the chain alone\n")
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read checkpoint {args.checkpoint}: {exc}") from None
    trusted = _keyring(args.public_key)
    if trusted and not marks:
        raise UsageError("--public-key checks signed checkpoints: give --checkpoint FILE too")
    progress = None
    if sys.stderr.isatty():

        def progress(rows: int) -> None:
            sys.stderr.write(f"\rverified {rows:,} rows")

    try:
        report = verify(
            db, chain_key=args.key or None, checkpoint=marks, public_key=trusted, progress=progress
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if progress is not None:
            sys.stderr.write("\n")
    if report.ok:
        out.write(f"OK: {report.rows_checked} rows, hash chain intact")
        if marks:
            out.write(f", {len(marks)} checkpoint(s) extended")
        out.write("\n")
    else:
        total = report.total_breaks
        out.write(f"BROKEN: {total} break(s) in {report.rows_checked} rows checked\n")
        for found in report.breaks:
            out.write(f"  {printable(str(found))}\n")
        if total > len(report.breaks):
            counts = ", ".join(f"{kind} {n}" for kind, n in sorted(report.counts.items()))
            out.write(f"  ... {total - len(report.breaks)} more; all by kind: {counts}\n")
    latest = report.latest_checkpoint
    if latest is not None and latest.time is not None:
        out.write(f"latest checkpoint: row {latest.last_id} at {latest.time.isoformat()}\n")
    if args.write_checkpoint and report.ok:
        mark = checkpoint(db, signing_key=_signing_key(args.sign))
        _write_checkpoint(args.write_checkpoint, mark, db)
    return 0 if report.ok else 1


def cmd_checkpoint(args: argparse.Namespace, out: TextIO) -> int:
    db = _open(args.db, args.immutable)
    mark = checkpoint(db, signing_key=_signing_key(args.sign))
    if args.out:
        _write_checkpoint(args.out, mark, db)
    else:
        out.write(json.dumps(mark.to_dict()) + "\n")
    return 0


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    try:
        private, public = generate_signing_key()
    except ImportError as exc:  # pragma: no cover - the test environments have the extra
        raise UsageError(str(exc)) from None
    public_path = f"{args.out}.pub"
    for path, data, mode in ((args.out, private, 0o600), (public_path, public, 0o644)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except OSError as exc:
            raise UsageError(
                f"cannot create {path}: {exc.strerror} (it is never overwritten)"
            ) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    out.write(f"signing key: {args.out} (keep it secret)\npublic key:  {public_path}\n")
    return 0


def _signing_key(path: str | None) -> Any:
    if path is None:
        return None
    try:
        return load_signing_key(path)
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise UsageError(f"cannot load signing key {path}: {_reason(exc)}") from None


def _keyring(paths: list[str] | None) -> list[TrustedKey]:
    trusted: list[TrustedKey] = []
    for path in paths or ():
        try:
            trusted += [TrustedKey(key) for key in load_public_keys(path)]
        except (OSError, ValueError, TypeError, ImportError) as exc:
            raise UsageError(f"cannot load public key {path}: {_reason(exc)}") from None
    return trusted


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return first_line(exc)


def _write_checkpoint(path: str, mark: Checkpoint, db: peewee.Database) -> None:
    _refuse_log_files(path, db)
    try:
        write_checkpoint_file(path, mark)
    except OSError as exc:
        raise UsageError(f"cannot write checkpoint {path}: {_reason(exc)}") from None


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    db = _open(args.db, args.immutable)
    total = AuditRecord.select().count()
    out.write(f"{total} events\n")
    day = (
        "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        if isinstance(db, peewee.PostgresqlDatabase)
        else "substr(timestamp, 1, 10)"
    )
    groups = (
        ("event type", "event_type"),
        ("actor", "actor"),
        ("outcome", "outcome"),
        ("day (UTC)", day),
    )
    for title, expression in groups:
        out.write(f"\nby {title}:\n")
        # By position: PostgreSQL would see two parameterised copies of an
        # expression as different ones (GroupingError).
        cursor = db.execute_sql(  # type: ignore[no-untyped-call]
            f"SELECT {expression}, count(*) FROM {TABLE_NAME} GROUP BY 1 ORDER BY 2 DESC, 1"
        )
        for key, n in cursor:
            label = "(none)" if key is None else printable(str(key))
            out.write(f"  {int(n):>8}  {label}\n")
    return 0


def cmd_redact_check(args: argparse.Namespace, out: TextIO) -> int:
    """Print the text redacted, and on stderr each rule that fired; exit 1 when any did."""
    text = _read_text(args.file)
    rules = default_rules()
    if args.rules:
        try:
            rules = RuleSet([*rules.rules, *load_rules(_read_text(args.rules), where=args.rules)])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    redactor = Redactor(rules=rules)
    findings = redactor.scan(text)
    out.write(redactor.redact_text(text))
    out.flush()
    descriptions = {rule.id: rule.description for rule in rules.rules}
    for finding in findings:
        line = text.count("\n", 0, finding.start) + 1
        about = descriptions.get(finding.rule, "")
        sys.stderr.write(f"line {line}: {finding.rule}" + (f" ({about})" if about else "") + "\n")
    sys.stderr.write(f"{len(findings)} secret(s) found\n")
    return 1 if findings else 0


def _read_text(path: str | None) -> str:
    if path in (None, "-"):
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


EXIT_CODES = """exit status:
  0    done; verify: the log is intact; redact-check: no secret found
  1    verify: the log is broken (each break is listed); redact-check: secrets found
  2    a usage mistake or a log that cannot be read: one line on stderr, no traceback
  130  interrupted (Ctrl-C)"""


def _parser() -> _Parser:
    db_help = "database URL (default: $AUDITASPECT_DATABASE_URL, else sqlite:///audit.db)"
    immutable_help = (
        "read a SQLite file as a snapshot nobody writes (a copy, read-only media): "
        "no lock, no -shm file"
    )
    parser = _Parser(
        prog="auditaspect",
        description="Read and check an auditaspect audit log (read-only: it never writes to it).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"auditaspect {__version__}")
    parser.add_argument("--db", help=db_help)
    parser.add_argument("--immutable", action="store_true", help=immutable_help)
    # --db also after the command (auditaspect query --db URL), without
    # overwriting one given before it.
    common = _Parser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    common.add_argument(
        "--immutable", action="store_true", default=argparse.SUPPRESS, help=immutable_help
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    raw_help = (
        "CSV cells exactly as stored (for programs); by default a cell starting with "
        "= + - @ or a tab gets a leading ' so a spreadsheet shows it as text"
    )

    query = sub.add_parser("query", parents=[common], help="list events, filtered")
    query.add_argument("--type", action="append", help="event type (repeatable)")
    query.add_argument("--actor")
    query.add_argument("--plan")
    query.add_argument("--outcome", choices=("success", "failure"))
    query.add_argument("--since", help="ISO timestamp or age (15m, 2h, 7d)")
    query.add_argument("--until", help="ISO timestamp, now, or a signed age (-7d: 7 days ago)")
    query.add_argument("--limit", type=int)
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")
    query.add_argument("--raw-csv", action="store_true", help=raw_help)
    query.set_defaults(run=cmd_query)

    tail = sub.add_parser("tail", parents=[common], help="the newest events; -f to follow")
    tail.add_argument("-n", "--lines", type=int, default=10)
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    tail.add_argument("--format", choices=("table", "json"), default="table")
    tail.set_defaults(run=cmd_tail)

    export = sub.add_parser("export", parents=[common], help="every event, streamed")
    export.add_argument("--format", choices=("jsonl", "csv"), required=True)
    export.add_argument(
        "--output", help="file to write, 0600, whole or not at all (default: standard output)"
    )
    export.add_argument("--raw-csv", action="store_true", help=raw_help)
    export.set_defaults(run=cmd_export)

    check = sub.add_parser(
        "verify", parents=[common], help="check the hash chain (exit 1 when broken)"
    )
    check.add_argument(
        "--key",
        action="append",
        help="chain key (default: $AUDITASPECT_CHAIN_KEY); repeat for every key after a rotation",
    )
    check.add_argument(
        "--checkpoint", help="checkpoint file (one, or a sink's file of many) the log must extend"
    )
    check.add_argument(
        "--public-key",
        action="append",
        help="PEM Ed25519 public key(s) the checkpoints must be signed with (repeatable)",
    )
    check.add_argument(
        "--write-checkpoint", help="write the current checkpoint here when the log is intact"
    )
    check.add_argument("--sign", help="sign the written checkpoint with this Ed25519 private key")
    check.set_defaults(run=cmd_verify)

    mark = sub.add_parser(
        "checkpoint", parents=[common], help="the log's head now, signed with --sign KEY"
    )
    mark.add_argument("--sign", help="Ed25519 private key (PEM file) to sign with")
    mark.add_argument("--out", help="file to write (created 0600; default: standard output)")
    mark.set_defaults(run=cmd_checkpoint)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signed checkpoints")
    keygen.add_argument("--out", required=True, help="private key file; the public key is OUT.pub")
    keygen.set_defaults(run=cmd_keygen)

    stats = sub.add_parser("stats", parents=[common], help="counts by type, actor, outcome and day")
    stats.set_defaults(run=cmd_stats)

    redact = sub.add_parser(
        "redact-check",
        help="print text redacted and the rules that fired (exit 1 when a secret was found)",
    )
    redact.add_argument("file", nargs="?", help="file to check (default: standard input)")
    redact.add_argument("--rules", help="a TOML file of extra rules (see secret_rules.toml)")
    redact.set_defaults(run=cmd_redact_check)
    return parser


def _join_signed_ages(argv: Sequence[str]) -> list[str]:
    """``--until -7d`` as ``--until=-7d``: argparse takes ``-7d`` for an option."""
    joined: list[str] = []
    pending = False
    for word in argv:
        if pending and _RELATIVE.match(word):
            joined[-1] = f"{joined[-1]}={word}"
        else:
            joined.append(word)
        pending = word in ("--since", "--until")
    return joined


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit status (see ``EXIT_CODES``).

    Never raises and never prints a traceback: a mistake, or a log that
    cannot be read, is one line on standard error (any database password
    masked) and status 2.
    """
    stream = out or sys.stdout
    args: argparse.Namespace | None = None
    try:
        args = _parser().parse_args(_join_signed_ages(sys.argv[1:] if argv is None else argv))
        if getattr(args, "limit", None) is not None and args.limit < 0:
            raise UsageError("--limit must be >= 0")
        return int(args.run(args, stream))
    except UsageError as exc:
        sys.stderr.write(f"auditaspect: {printable(mask_url(str(exc)))}\n")
        return 2
    except BrokenPipeError:  # `auditaspect query | head`
        with contextlib.suppress(OSError):
            sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a database error mid-command: one line, not a traceback
        url = resolve_url(getattr(args, "db", None))
        reason = mask_url(first_line(exc), url)
        sys.stderr.write(f"auditaspect: {type(exc).__name__}: {printable(reason)}\n")
        return 2
    finally:
        while _opened:
            close_database(_opened.pop())


def main_exit() -> None:
    """Console-script entry point: exit with :func:`main`'s status."""
    sys.exit(main())
