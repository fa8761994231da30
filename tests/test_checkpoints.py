"""Signed checkpoints: made with the private key, checked with the public key only."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import peewee
import pytest

from auditaspect import Checkpoint, PeeweeSink, checkpoint, emit, verify
from auditaspect.checkpoints import (
    TrustedKey,
    generate_signing_key,
    load_public_keys,
    read_checkpoints,
    write_checkpoint_file,
)
from auditaspect.integrity import GENESIS
from auditaspect.model import install_guards


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    private, public = generate_signing_key()
    key, pub = tmp_path / "signing.pem", tmp_path / "signing.pem.pub"
    key.write_bytes(private)
    pub.write_bytes(public)
    return key, pub


def write(url: str, count: int, **options) -> None:
    with PeeweeSink(url, **options):
        for i in range(count):
            emit("config_changed", key=f"k{i}")


def cut_tail(path: Path, keep: int) -> None:
    """Remove the newest rows and put the triggers back: the chain alone still verifies."""
    conn = sqlite3.connect(path, isolation_level=None)
    for name in ("audit_log_no_update", "audit_log_no_delete", "audit_log_append"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(f"DELETE FROM audit_log WHERE id > {keep}")
    conn.close()
    db = peewee.SqliteDatabase(str(path))
    install_guards(db)
    db.close()


def test_a_signed_checkpoint_verifies_with_the_public_key_only(tmp_path, keys):
    """checkpoint(signing_key=) -> verify(checkpoint=, public_key=): the verifier
    holds no secret; a cut tail, an edited checkpoint or another key fail."""
    key, pub = keys
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    write(url, 5)
    mark = checkpoint(url, signing_key=key)
    assert (5, True) == (mark.last_id, mark.signed)
    assert mark.key_id.startswith("ed25519:")
    assert mark.origin.endswith(f"{path}#audit_log")
    exported = json.loads(json.dumps(mark.to_dict()))
    assert verify(url, checkpoint=exported, public_key=pub).ok
    write(url, 2)  # the log grows: it still extends the checkpoint
    assert verify(url, checkpoint=exported, public_key=pub).ok

    forged = attrs.evolve(mark, last_id=3, hash="0" * 64)  # an attacker edits the file
    report = verify(url, checkpoint=forged, public_key=pub)
    assert "signature does not match" in report.breaks[0].detail

    _, other_public = generate_signing_key()
    report = verify(url, checkpoint=mark, public_key=other_public)
    assert "not in the keyring" in report.reason

    cut_tail(path, 3)
    report = verify(url, checkpoint=mark, public_key=pub)
    assert not report.ok
    assert "its tail was removed" in report.reason
    unsigned = Checkpoint(last_id=mark.last_id, hash=mark.hash)
    assert "not signed" in verify(url, checkpoint=unsigned, public_key=pub).breaks[0].detail


def test_a_rewritten_log_fails_its_signed_checkpoint(tmp_path, keys):
    """An unkeyed chain rewritten whole (every hash recomputed) still verifies
    alone; the signed checkpoint catches it."""
    from auditaspect.integrity import link, row_payload, row_prefix

    key, pub = keys
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    write(url, 4)
    mark = checkpoint(url, signing_key=key)
    conn = sqlite3.connect(path, isolation_level=None)
    for name in ("audit_log_no_update", "audit_log_no_delete", "audit_log_append"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
    prev = GENESIS
    for row in conn.execute(
        "SELECT id, event_id, timestamp, event_type, outcome, actor, plan_id, ip,"
        " correlation_id, target, error, details, key_id FROM audit_log ORDER BY id"
    ).fetchall():
        current = link(prev, row_prefix(row[0], row[12]) + row_payload(row[1:11], row[11]), None)
        conn.execute("UPDATE audit_log SET prev_hash=?, hash=? WHERE id=?", (prev, current, row[0]))
        prev = current
    conn.close()
    db = peewee.SqliteDatabase(str(path))
    install_guards(db)  # the forger puts the triggers back
    db.close()
    assert verify(url).ok  # the forger's rewrite is a valid chain...
    report = verify(url, checkpoint=mark, public_key=pub)
    assert (False, 4) == (report.ok, report.bad_id)  # ...that the checkpoint does not match
    assert "the log was rewritten" in report.reason


def test_keyring_validity_windows(tmp_path, keys):
    """A key is accepted only for checkpoints made while it was valid (rotation)."""
    key, pub = keys
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, 1)
    mark = checkpoint(url, signing_key=key)
    public = load_public_keys(pub)[0]
    now = datetime.now(timezone.utc)
    retired = TrustedKey(public, valid_until=now - timedelta(days=1))
    current = TrustedKey(public, valid_from=now - timedelta(days=1))
    assert verify(url, checkpoint=mark, public_key=[current]).ok
    report = verify(url, checkpoint=mark, public_key=[retired])
    assert "was not valid at the checkpoint's time" in report.reason


def test_an_empty_log_has_a_valid_signed_checkpoint(tmp_path, keys):
    key, pub = keys
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    write(url, 0)
    mark = checkpoint(url, signing_key=key)
    assert (0, GENESIS) == (mark.last_id, mark.hash)
    assert verify(url, checkpoint=mark, public_key=pub).ok
    write(url, 3)
    assert verify(url, checkpoint=mark, public_key=pub).ok


def test_checkpoint_files_are_private_and_whole(tmp_path, keys):
    key, _ = keys
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, 2)
    target = tmp_path / "mark.json"
    write_checkpoint_file(target, checkpoint(url, signing_key=key))
    assert 0o600 == stat.S_IMODE(target.stat().st_mode)
    assert [2] == [m.last_id for m in read_checkpoints(target)]
    (tmp_path / "bad.json").write_text('{"last_id": -1, "hash": "x"}\n')
    with pytest.raises(ValueError, match="not a checkpoint"):
        read_checkpoints(tmp_path / "bad.json")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditaspect", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_the_command_line_makes_and_checks_signed_checkpoints(tmp_path):
    """keygen, checkpoint --sign --out, verify --checkpoint --public-key, and
    --write-checkpoint on a first run when no checkpoint exists yet."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, 3)
    made = run("keygen", "--out", "k.pem", cwd=tmp_path)
    assert 0 == made.returncode, made.stderr
    assert 0o600 == stat.S_IMODE((tmp_path / "k.pem").stat().st_mode)
    again = run("keygen", "--out", "k.pem", cwd=tmp_path)
    assert (2, 1) == (again.returncode, len(again.stderr.splitlines()))  # never overwritten

    out = run("--db", url, "checkpoint", "--sign", "k.pem", "--out", "cp.json", cwd=tmp_path)
    assert 0 == out.returncode, out.stderr
    assert 0o600 == stat.S_IMODE((tmp_path / "cp.json").stat().st_mode)
    good = run(
        "--db", url, "verify", "--checkpoint", "cp.json", "--public-key", "k.pem.pub", cwd=tmp_path
    )
    assert 0 == good.returncode, good.stdout + good.stderr
    assert "1 checkpoint(s) extended" in good.stdout

    first = run(
        "--db",
        url,
        "verify",
        "--checkpoint",
        "new.json",
        "--write-checkpoint",
        "new.json",
        "--sign",
        "k.pem",
        cwd=tmp_path,
    )
    assert 0 == first.returncode, first.stderr
    assert "no checkpoint in new.json yet" in first.stderr
    assert read_checkpoints(tmp_path / "new.json")[0].signed

    cut_tail(tmp_path / "log.db", 1)
    bad = run(
        "--db", url, "verify", "--checkpoint", "cp.json", "--public-key", "k.pem.pub", cwd=tmp_path
    )
    assert 1 == bad.returncode
    assert "checkpoint: log ends at row 1, before checkpoint row 3" in bad.stdout
    assert "Traceback" not in bad.stderr

    refused = run("--db", url, "checkpoint", "--out", "log.db", cwd=tmp_path)
    assert 2 == refused.returncode
    assert "is a file of the audit log itself" in refused.stderr


def test_a_sink_writes_signed_checkpoints_by_itself(tmp_path, keys):
    """Every N events, a heartbeat when idle, one at close: a cut tail shows."""
    key, pub = keys
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    marks_file = tmp_path / "checkpoints.jsonl"
    shipped: list[Checkpoint] = []
    with PeeweeSink(
        url,
        signing_key=key,
        checkpoint_path=marks_file,
        checkpoint_every=5,
        checkpoint_interval=0.2,
        on_checkpoint=shipped.append,
    ):
        for i in range(12):
            emit("config_changed", key=f"k{i}")
        # Idle now: heartbeats keep coming, each with a newer time.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and heartbeats(marks_file) < 2:
            time.sleep(0.05)
        assert heartbeats(marks_file) >= 2
    marks = read_checkpoints(marks_file)
    assert 12 == marks[-1].last_id  # the one written at close
    times = [m.time for m in marks]
    assert times == sorted(times)
    assert [m.to_dict() for m in marks] == [m.to_dict() for m in shipped]
    assert 0o600 == stat.S_IMODE(marks_file.stat().st_mode)
    report = verify(url, checkpoint=marks, public_key=pub)
    assert report.ok, report.breaks
    assert report.latest_checkpoint.last_id == 12
    cut_tail(path, 10)
    assert not verify(url, checkpoint=marks, public_key=pub).ok


def test_a_sink_checkpoints_every_n_events(tmp_path, keys):
    """Without a heartbeat, one checkpoint per checkpoint_every events, and one at close."""
    key, pub = keys
    url = f"sqlite:///{tmp_path / 'log.db'}"
    marks_file = tmp_path / "every.jsonl"
    with PeeweeSink(
        url,
        signing_key=key,
        checkpoint_path=marks_file,
        checkpoint_every=5,
        checkpoint_interval=None,
    ):
        for expected_id in (5, 10):
            for i in range(5):
                emit("config_changed", key=f"k{i}")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and expected_id not in ids(marks_file):
                time.sleep(0.02)
            assert expected_id in ids(marks_file)
        emit("config_changed", key="last")
    assert [5, 10, 11] == ids(marks_file)
    assert verify(url, checkpoint=read_checkpoints(marks_file), public_key=pub).ok


def ids(path: Path) -> list[int]:
    try:
        return [m.last_id for m in read_checkpoints(path)]
    except (FileNotFoundError, ValueError):
        return []


def heartbeats(path: Path) -> int:
    """Checkpoints of the full log (12 rows) written so far."""
    try:
        return sum(1 for m in read_checkpoints(path) if m.last_id == 12)
    except (FileNotFoundError, ValueError):
        return 0


def test_automatic_checkpoints_need_a_signing_key(tmp_path):
    with pytest.raises(ValueError, match="signing_key"):
        PeeweeSink(f"sqlite:///{tmp_path / 'x.db'}", checkpoint_path=tmp_path / "c.jsonl")


def test_a_checkpoint_that_cannot_be_written_is_logged_not_raised(tmp_path, keys, caplog):
    key, _ = keys
    url = f"sqlite:///{tmp_path / 'log.db'}"
    os.mkdir(tmp_path / "dir")
    with PeeweeSink(url, signing_key=key, checkpoint_path=tmp_path / "dir", checkpoint_every=1):
        emit("config_changed", key="k")
    assert "audit checkpoint not written" in caplog.text


def test_keys_are_loaded_from_objects_pem_or_files_and_others_refused(tmp_path, keys):
    """Ed25519 only, with one clear ValueError for anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from auditaspect.checkpoints import load_signing_key, public_key_id

    key, pub = keys
    private_text = key.read_text()
    loaded = load_signing_key(private_text)  # PEM text
    assert load_signing_key(loaded) is loaded  # a key object
    public = load_public_keys(pub.read_bytes())[0]
    assert [public] == load_public_keys(public)
    assert public_key_id(public) == public_key_id(loaded.public_key())
    two = pub.read_bytes() + generate_signing_key()[1]
    assert 2 == len(load_public_keys(two))  # a keyring file of several keys

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="Ed25519 private key"):
        load_signing_key(ec_private)
    with pytest.raises(ValueError, match="Ed25519 keys"):
        load_public_keys(ec_public)
    with pytest.raises(ValueError, match="no PEM public key"):
        load_public_keys(b"not a key")


def test_trusted_key_windows_and_signature_forms(tmp_path, keys):
    key, pub = keys
    public = load_public_keys(pub)[0]
    now = datetime.now(timezone.utc)
    assert TrustedKey(public).covers(None)
    assert not TrustedKey(public, valid_from=now).covers(None)  # an undated checkpoint
    assert not TrustedKey(public, valid_from=now).covers(now - timedelta(seconds=1))
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, 1)
    mark = checkpoint(url, signing_key=key)
    garbled = attrs.evolve(mark, signature="***not base64***")
    assert "not base64" in garbled.check_signature([TrustedKey(public)])
    with pytest.raises(ValueError, match="expected text"):
        Checkpoint.from_dict({**mark.to_dict(), "origin": 5})


def test_checkpoint_files_fail_whole(tmp_path, keys):
    """A checkpoint that cannot be put in place leaves no temporary file; bad files say
    which line is wrong."""
    key, _ = keys
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, 1)
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "x").write_text("keeps the directory non-empty")
    with pytest.raises(IsADirectoryError):
        write_checkpoint_file(target, checkpoint(url, signing_key=key))
    assert ["log.db", "occupied", "signing.pem", "signing.pem.pub"] == sorted(
        p.name for p in tmp_path.iterdir() if not p.name.startswith("log.db-")
    )
    (tmp_path / "empty.json").write_text("\n")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        read_checkpoints(tmp_path / "empty.json")
    good = json.dumps(checkpoint(url).to_dict())
    (tmp_path / "lines.jsonl").write_text(f"{good}\n\n{good}\n[1]\n")
    with pytest.raises(ValueError, match="line 4"):
        read_checkpoints(tmp_path / "lines.jsonl")
    (tmp_path / "lines.jsonl").write_text(f"{good}\n\n{good}\n")
    assert 2 == len(read_checkpoints(tmp_path / "lines.jsonl"))


def test_automatic_checkpoint_options_are_checked(tmp_path, keys):
    from auditaspect.checkpoints import CheckpointWriter

    key, _ = keys
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for options, message in (
        ({"checkpoint_every": 0, "checkpoint_path": tmp_path / "c"}, "at least 1"),
        ({"checkpoint_interval": 0, "checkpoint_path": tmp_path / "c"}, "positive number"),
        ({}, "checkpoint_path or on_checkpoint"),
    ):
        with pytest.raises(ValueError, match=message):
            PeeweeSink(url, signing_key=key, **options)
    with pytest.raises(ValueError, match="database file"):
        PeeweeSink(peewee.SqliteDatabase(":memory:"), signing_key=key, checkpoint_path="c")
    writer = CheckpointWriter(
        lambda: (0, GENESIS),
        origin="o",
        signing_key=key,
        path=None,
        every=1,
        interval=None,
        on_checkpoint=lambda mark: None,
    )
    writer.start()
    writer.start()  # already running: nothing more
    writer.close()
    assert 1 == writer.written


FORKED = """
import json, os, sys
from auditaspect import PeeweeSink, emit
sink = PeeweeSink(sys.argv[1], signing_key=sys.argv[2], checkpoint_path=sys.argv[3],
                  checkpoint_every=2, checkpoint_interval=None).connect()
emit("config_changed", key="parent")
pid = os.fork()
if pid == 0:
    for i in range(4):
        emit("config_changed", key=f"child-{i}")
        assert sink._checkpoints._thread.is_alive()  # the child's own checkpoint thread
    sink.close()
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, status
emit("config_changed", key="parent-after")
sink.close()
"""


def test_checkpoints_survive_a_fork(tmp_path, keys):
    """A forked child gets its own checkpoint thread; every checkpoint verifies."""
    from test_crash import unmeasured_env

    key, pub = keys
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    marks_file = tmp_path / "forked.jsonl"
    subprocess.run(
        [sys.executable, "-c", FORKED, url, str(key), str(marks_file)],
        check=True,
        timeout=120,
        env=unmeasured_env(),
    )
    marks = read_checkpoints(marks_file)
    assert 6 == max(m.last_id for m in marks)
    report = verify(url, checkpoint=marks, public_key=pub)
    assert (True, 6) == (report.ok, report.rows_checked), report.breaks


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--checkpoint", "bad.json"], "cannot read checkpoint bad.json"),
        (["verify", "--public-key", "k.pem.pub"], "give --checkpoint FILE too"),
        (["verify", "--key", ""], "chain_key must not be empty"),
        (["checkpoint", "--sign", "missing.pem"], "cannot load signing key missing.pem"),
        (["checkpoint", "--sign", "k.pem.pub"], "cannot load signing key k.pem.pub"),
        (
            ["verify", "--checkpoint", "cp.json", "--public-key", "k.pem"],
            "cannot load public key k.pem",
        ),
        (["checkpoint", "--out", "no/such/dir/cp.json"], "cannot write checkpoint"),
    ],
)
def test_checkpoint_mistakes_are_one_line_and_exit_2(tmp_path, args, message):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, 2)
    assert 0 == run("keygen", "--out", "k.pem", cwd=tmp_path).returncode
    (tmp_path / "bad.json").write_text("{not json\n")
    (tmp_path / "cp.json").write_text(json.dumps(checkpoint(url).to_dict()))
    result = run("--db", url, *args, cwd=tmp_path)
    assert 2 == result.returncode, result.stdout + result.stderr
    assert 1 == len(result.stderr.strip().splitlines()), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_line_prints_a_checkpoint_and_summarises_many_breaks(tmp_path):
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    write(url, 150)
    printed = run("--db", url, "checkpoint", cwd=tmp_path)
    assert {"last_id": 150} == {"last_id": json.loads(printed.stdout)["last_id"]}
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = 'x'")
    conn.close()
    result = run("--db", url, "verify", cwd=tmp_path)
    assert 1 == result.returncode
    lines = result.stdout.splitlines()
    assert lines[0] == "BROKEN: 151 break(s) in 150 rows checked"
    assert lines[-1] == "  ... 51 more; all by kind: modified 150, schema 1"


def test_verify_shows_progress_on_a_terminal(tmp_path):
    """Progress goes to standard error only when it is a terminal."""
    import pty

    url = f"sqlite:///{tmp_path / 'log.db'}"
    write(url, 2100)
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "auditaspect", "verify", "--db", url],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=120,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert 0 == result.returncode
    assert b"verified 2,000 rows" in shown
    assert b"verified 2,100 rows" in shown
    assert "verified" not in result.stdout


def test_checkpoint_reads_the_log_without_changing_it(tmp_path):
    """checkpoint(url) of a log in rollback-journal mode (a copy, a log another
    tool wrote) changes no byte of it and creates no file; a path that names no
    file is a ValueError, and creates none."""
    path = tmp_path / "log" / "audit.db"
    path.parent.mkdir()
    write(f"sqlite:///{path}", 3)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=delete")
    conn.close()
    before = path.read_bytes()
    mark = checkpoint(f"sqlite:///{path}")
    assert 3 == mark.last_id
    assert before == path.read_bytes()
    assert ["audit.db"] == sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(ValueError, match="no database file"):
        checkpoint(f"sqlite:///{path.parent / 'audit.sqlite'}")
    assert ["audit.db"] == sorted(p.name for p in path.parent.iterdir())
