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
import csv
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

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
from .database import close_database, open_database, resolve_url, sqlite_path
from .model import TABLE_NAME, AuditRecord
from .redaction import Redactor
from .rules import RuleSet, default_rules, load_rules
from .verification import verify

__all__ = ["main", "main_exit"]

# Every column of audit_log, in table order, from the model (the one definition).
COLUMNS = tuple(field.name for field in AuditRecord._meta.sorted_fields)
TABLE_COLUMNS = ("id", "timestamp", "event_type", "outcome", "actor", "plan_id", "ip", "details")
_PAGE = 1000
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# Databases opened by this run of the command line, closed when it ends.
_opened: list[peewee.Database] = []


class UsageError(Exception):
    """A mistake of the user's: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage; we print one line
        raise UsageError(message)


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """Parse an ISO timestamp or a relative age (``15m``, ``2h``, ``7d``) into UTC."""
    match = _RELATIVE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return (now or datetime.now(timezone.utc)) - timedelta(**{_UNITS[unit]: amount})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"bad time {text!r}: use an ISO timestamp (2026-01-31T12:00) or an age like 15m, 2h, 7d"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


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


class _Output:
    """Writes rows in one of the formats, streaming."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self._csv: Any = None
        self._table_rows: list[list[str]] = []

    def row(self, record: AuditRecord) -> None:
        data = _record_dict(record)
        if self.fmt in ("json", "jsonl"):
            self.out.write(json.dumps(data, ensure_ascii=False, sort_keys=False) + "\n")
        elif self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.writer(self.out)
                self._csv.writerow(COLUMNS)
            self._csv.writerow([_flat(data[c]) for c in COLUMNS])
        else:
            text = [_flat(data[c]) for c in TABLE_COLUMNS]
            text[-1] = text[-1] if len(text[-1]) <= 60 else text[-1][:59] + "…"
            self._table_rows.append(text)

    def close(self) -> None:
        if self.fmt != "table":
            return
        rows = [list(TABLE_COLUMNS), *self._table_rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
        for number, row in enumerate(rows):
            cells = (v.ljust(w) for v, w in zip(row, widths, strict=True))
            self.out.write("  ".join(cells).rstrip() + "\n")
            if number == 0:
                self.out.write("  ".join("-" * w for w in widths) + "\n")


def _open(url: str | None) -> peewee.Database:
    path = sqlite_path(resolve_url(url))
    if path and path != ":memory:" and not os.path.exists(path):
        raise UsageError(f"no database file {path!r} (from {resolve_url(url)})")
    try:
        db, _ = open_database(resolve_url(url))
        tables = db.get_tables()
    except (ValueError, ImportError, peewee.DatabaseError) as exc:
        raise UsageError(f"cannot open {resolve_url(url)}: {exc}") from None
    if TABLE_NAME not in tables:
        close_database(db)
        raise UsageError(
            f"no {TABLE_NAME} table in {resolve_url(url)}: is this the audit database?"
        )
    AuditRecord.bind(db, bind_refs=False, bind_backrefs=False)
    _opened.append(db)
    return db


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
        query = query.where(AuditRecord.timestamp <= parse_when(args.until))
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
    _open(args.db)
    output = _Output(args.format, out)
    for row in _pages(_filtered(args), args.limit):
        output.row(row)
    output.close()
    return 0


def cmd_tail(args: argparse.Namespace, out: TextIO) -> int:
    _open(args.db)
    newest = list(AuditRecord.select().order_by(AuditRecord.id.desc()).limit(args.lines))
    output = _Output(args.format, out)
    for row in reversed(newest):
        output.row(row)
    output.close()
    out.flush()
    top = AuditRecord.select(peewee.fn.max(AuditRecord.id)).scalar()
    last = newest[0].id if newest else (top or 0)
    while args.follow:
        time.sleep(args.interval)
        rows = list(AuditRecord.select().where(AuditRecord.id > last).order_by(AuditRecord.id))
        for row in rows:
            line = _Output(args.format if args.format != "table" else "json", out)
            line.row(row)
            last = row.id
        out.flush()
    return 0


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    _open(args.db)
    total = AuditRecord.select().count()
    target: TextIO = out
    handle = None
    if args.output:
        handle = open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
        target = handle
    progress = sys.stderr.isatty() and (handle is not None or not out.isatty())
    try:
        output = _Output("jsonl" if args.format == "jsonl" else "csv", target)
        for done, row in enumerate(_pages(AuditRecord.select()), 1):
            output.row(row)
            if progress and (done % 1000 == 0 or done == total):
                sys.stderr.write(
                    f"\rexporting {done:,}/{total:,} rows ({done * 100 // max(total, 1)}%)"
                )
        output.close()
    finally:
        if handle is not None:
            handle.close()
        if progress:
            sys.stderr.write("\n")
    return 0


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    db = _open(args.db)
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
            out.write(f"  {_printable(str(found))}\n")
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
    db = _open(args.db)
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
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _write_checkpoint(path: str, mark: Checkpoint, db: peewee.Database) -> None:
    database_file = db.database if isinstance(db, peewee.SqliteDatabase) else None
    if _same_file(path, database_file):
        raise UsageError(f"{path} is the audit database itself: write the checkpoint elsewhere")
    try:
        write_checkpoint_file(path, mark)
    except OSError as exc:
        raise UsageError(f"cannot write checkpoint {path}: {_reason(exc)}") from None


def _same_file(path: str, database_file: str | None) -> bool:
    if database_file is None:
        return False
    target = os.path.realpath(path)
    base = os.path.realpath(database_file)
    return target in (base, base + "-wal", base + "-shm", base + "-journal")


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    """Control and bidi characters shown escaped, so text cannot drive the terminal."""
    return _UNPRINTABLE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    _open(args.db)
    total = AuditRecord.select().count()
    out.write(f"{total} events\n")
    day = peewee.fn.substr(AuditRecord.timestamp.cast("text"), 1, 10)
    groups = (
        ("event type", AuditRecord.event_type),
        ("actor", AuditRecord.actor),
        ("outcome", AuditRecord.outcome),
        ("day (UTC)", day),
    )
    for title, field in groups:
        out.write(f"\nby {title}:\n")
        query = (
            AuditRecord.select(field.alias("key"), peewee.fn.count(AuditRecord.id).alias("n"))
            .group_by(field)
            .order_by(peewee.fn.count(AuditRecord.id).desc(), field)
            .tuples()
        )
        counts: list[tuple[Any, int]] = list(query)  # type: ignore[arg-type]
        for key, n in counts:
            label = "(none)" if key is None else str(key)
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


def _parser() -> _Parser:
    db_help = "database URL (default: $AUDITASPECT_DATABASE_URL, else sqlite:///audit.db)"
    parser = _Parser(prog="auditaspect", description="Read and check an auditaspect audit log.")
    parser.add_argument("--version", action="version", version=f"auditaspect {__version__}")
    parser.add_argument("--db", help=db_help)
    # --db also after the command (auditaspect query --db URL), without
    # overwriting one given before it.
    common = _Parser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    query = sub.add_parser("query", parents=[common], help="list events, filtered")
    query.add_argument("--type", action="append", help="event type (repeatable)")
    query.add_argument("--actor")
    query.add_argument("--plan")
    query.add_argument("--outcome", choices=("success", "failure"))
    query.add_argument("--since", help="ISO timestamp or age (15m, 2h, 7d)")
    query.add_argument("--until", help="ISO timestamp or age")
    query.add_argument("--limit", type=int)
    query.add_argument("--format", choices=("table", "json", "csv"), default="table")
    query.set_defaults(run=cmd_query)

    tail = sub.add_parser("tail", parents=[common], help="the newest events; -f to follow")
    tail.add_argument("-n", "--lines", type=int, default=10)
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    tail.add_argument("--format", choices=("table", "json"), default="table")
    tail.set_defaults(run=cmd_tail)

    export = sub.add_parser("export", parents=[common], help="every event, streamed")
    export.add_argument("--format", choices=("jsonl", "csv"), required=True)
    export.add_argument("--output", help="file to write (default: standard output)")
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


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    stream = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
        if getattr(args, "limit", None) is not None and args.limit < 0:
            raise UsageError("--limit must be >= 0")
        return int(args.run(args, stream))
    except UsageError as exc:
        sys.stderr.write(f"auditaspect: {exc}\n")
        return 2
    except BrokenPipeError:  # `auditaspect query | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        while _opened:
            close_database(_opened.pop())


def main_exit() -> None:
    """Console-script entry point: exit with :func:`main`'s status."""
    sys.exit(main())
