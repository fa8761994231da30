"""The hash chain and verify(): every kind of tampering is found."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import peewee
import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditaspect import AuditEvent, Checkpoint, PeeweeSink, checkpoint, emit, verify
from auditaspect.integrity import GENESIS, link, resolve_key, row_payload, row_prefix
from auditaspect.model import install_guards


def write_events(url: str, count: int, **sink_options) -> None:
    with PeeweeSink(url, **sink_options):
        for i in range(count):
            emit("config_changed", key=f"k{i}", value=i, nested={"b": [1, 2.5], "a": "é"})


@pytest.fixture
def log(tmp_path) -> tuple[str, Path]:
    """A SQLite audit log of six rows, and its path."""
    path = tmp_path / "chain.db"
    url = f"sqlite:///{path}"
    write_events(url, 6)
    return url, path


def tamper(path: Path, *statements: str, cover: bool = False) -> None:
    """What an attacker with file access does: drop the triggers, then edit
    (and, with ``cover``, put the triggers back to hide it)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for name in ("audit_log_no_update", "audit_log_no_delete", "audit_log_append"):
            conn.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()
    if cover:
        put_back_triggers(path)


def put_back_triggers(path: Path) -> None:
    db = peewee.SqliteDatabase(str(path))
    install_guards(db)
    db.close()


def test_an_untouched_log_verifies(log):
    """Rows written by the sink form one chain from the genesis value."""
    url, path = log
    report = verify(url)
    assert report.ok
    assert bool(report)
    assert 6 == report.rows_checked
    assert report.bad_id is None
    conn = sqlite3.connect(path)
    first_prev = conn.execute("SELECT prev_hash FROM audit_log ORDER BY id LIMIT 1").fetchone()[0]
    conn.close()
    assert GENESIS == first_prev


def test_modified_row_is_found(log):
    """Changing one value of one row breaks that row."""
    url, path = log
    tamper(path, "UPDATE audit_log SET actor = 'mallory' WHERE id = 3", cover=True)
    report = verify(url)
    assert (False, 3) == (report.ok, report.bad_id)
    assert "modified" in report.reason
    assert {"modified": 1} == report.counts  # one break: the rows after it still verify
    assert 6 == report.last.last_id


def test_modified_details_are_found(log):
    """Editing the JSON details is a modification too."""
    url, path = log
    tamper(path, """UPDATE audit_log SET details = json_set(details, '$.value', 99) WHERE id = 2""")
    assert 2 == verify(url).bad_id


def test_deleted_row_is_found(log):
    """Removing a row breaks the link of the row after it."""
    url, path = log
    tamper(path, "DELETE FROM audit_log WHERE id = 4", cover=True)
    report = verify(url)
    assert (False, 5) == (report.ok, report.bad_id)
    assert "row 4 missing (removed)" in report.reason
    assert {"missing": 1} == report.counts


def test_inserted_row_is_found(log):
    """A forged row slipped in between two rows breaks the chain after it."""
    url, path = log
    tamper(
        path,
        "UPDATE audit_log SET id = id + 100 WHERE id >= 4",
        "INSERT INTO audit_log (id, event_id, timestamp, event_type, outcome, target, details,"
        " prev_hash, hash) SELECT 4, 'forged', timestamp, event_type, outcome, target, details,"
        " hash, hash FROM audit_log WHERE id = 3",
    )
    report = verify(url)
    assert (False, 4) == (report.ok, report.bad_id)


def test_reordered_rows_are_found(log):
    """Swapping two rows' positions breaks the chain."""
    url, path = log
    tamper(
        path,
        "UPDATE audit_log SET id = 1000 WHERE id = 2",
        "UPDATE audit_log SET id = 2 WHERE id = 3",
        "UPDATE audit_log SET id = 3 WHERE id = 1000",
    )
    report = verify(url)
    assert (False, 2) == (report.ok, report.bad_id)


def _rehash_all(path: Path, key: bytes | None) -> None:
    """An attacker who edits a row and recomputes every hash after it."""
    conn = sqlite3.connect(path, isolation_level=None)
    rows = conn.execute(
        "SELECT id, event_id, timestamp, event_type, outcome, actor, plan_id, ip,"
        " correlation_id, target, error, details, key_id FROM audit_log ORDER BY id"
    ).fetchall()
    prev = GENESIS
    for row in rows:
        # The key id stays what it was: the forger claims the real key.
        current = link(prev, row_prefix(row[0], row[12]) + row_payload(row[1:11], row[11]), key)
        conn.execute(
            "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?", (prev, current, row[0])
        )
        prev = current
    conn.close()


def test_unkeyed_chain_is_only_as_strong_as_write_access(log):
    """Without a key, a forger who recomputes every hash passes: that is why keys exist."""
    url, path = log
    tamper(path, "UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
    _rehash_all(path, None)
    put_back_triggers(path)
    assert verify(url).ok


def test_keyed_chain_rejects_a_rewrite_without_the_key(tmp_path):
    """With chain_key, a full rewrite using plain SHA-256 (or a wrong key) fails to verify."""
    path = tmp_path / "keyed.db"
    url = f"sqlite:///{path}"
    write_events(url, 5, chain_key="s3cret-chain-key")
    assert verify(url, chain_key="s3cret-chain-key").ok
    assert not verify(url).ok  # the key is needed to verify at all
    tamper(path, "UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
    _rehash_all(path, b"attacker-guess")
    put_back_triggers(path)
    report = verify(url, chain_key="s3cret-chain-key")
    assert (False, 1) == (report.ok, report.bad_id)
    assert "without the chain key" in report.reason
    assert {"modified": 5} == report.counts


def test_chain_key_from_the_environment(tmp_path, monkeypatch):
    """AUDITASPECT_CHAIN_KEY keys both the sink and verify()."""
    monkeypatch.setenv("AUDITASPECT_CHAIN_KEY", "env-key")
    url = f"sqlite:///{tmp_path / 'env.db'}"
    write_events(url, 3)
    assert verify(url).ok
    monkeypatch.delenv("AUDITASPECT_CHAIN_KEY")
    assert not verify(url).ok
    assert verify(url, chain_key=b"env-key").ok


def test_checkpoint_detects_a_cut_off_tail(log):
    """Deleting the newest rows leaves a valid chain; only a checkpoint shows the loss."""
    url, path = log
    mark = checkpoint(url)
    assert isinstance(mark, Checkpoint)
    assert 6 == mark.last_id
    exported = json.loads(json.dumps(mark.to_dict()))
    tamper(path, "DELETE FROM audit_log WHERE id >= 5", cover=True)
    assert verify(url).ok
    report = verify(url, checkpoint=exported)
    assert not report.ok
    assert "tail was removed" in report.reason
    assert verify(url, checkpoint=Checkpoint(last_id=3, hash=mark.hash)).reason == (
        "row differs from the checkpoint made of it: the log was rewritten"
    )


def test_checkpoint_of_a_growing_log_still_verifies(log):
    """Rows appended after the checkpoint keep the checkpointed chain valid."""
    url, _ = log
    mark = checkpoint(url)
    write_events(url, 2)
    report = verify(url, checkpoint=mark)
    assert report.ok
    assert 8 == report.rows_checked


def test_checkpoint_of_an_empty_log_and_bad_checkpoints(tmp_path):
    """An empty log has the empty checkpoint, which it extends; a malformed one is a ValueError."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with PeeweeSink(url):
        pass
    empty = checkpoint(url)
    assert Checkpoint(last_id=0, hash=GENESIS) == empty
    assert verify(url, checkpoint=empty).ok
    write_events(url, 2)
    assert verify(url, checkpoint=empty).ok
    with pytest.raises(ValueError, match="last_id and hash"):
        Checkpoint.from_dict({"hash": "x"})


def test_missing_table_is_reported_not_raised(tmp_path):
    """verify() on a database without audit_log says so."""
    path = tmp_path / "nothing.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.close()
    report = verify(f"sqlite:///{path}")
    assert (False, 0) == (report.ok, report.rows_checked)
    assert "no audit_log table" == report.reason


def test_unreadable_row_is_reported(log):
    """A row whose details are not JSON is reported as broken, not raised."""
    url, path = log
    tamper(path, "UPDATE audit_log SET details = 'not json' WHERE id = 2", cover=True)
    report = verify(url)
    assert (False, 2) == (report.ok, report.bad_id)
    assert report.reason.startswith("the row cannot be read")
    assert {"unreadable": 1} == report.counts


def test_chain_spans_buffered_batches_and_hand_written_events(tmp_path):
    """Buffered batches, sync writes and hand-built events share one chain."""
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    write_events(url, 40, mode="buffered", batch_size=7)
    with PeeweeSink(url) as sink:
        sink.write(AuditEvent(event_type="x", details={"password": "p"}))
    write_events(url, 3)
    report = verify(url)
    assert report.ok
    assert 44 == report.rows_checked


def test_link_is_sha256_or_hmac():
    """Unkeyed links are SHA-256 of prev and payload; keyed ones differ."""
    assert hashlib.sha256(b"a\nb").hexdigest() == link("a", b"b", None)
    assert link("a", b"b", None) != link("a", b"b", b"k")
    with pytest.raises(ValueError, match="must not be empty"):
        resolve_key("")


def test_checkpoint_and_verify_accept_a_database_object(log):
    """A peewee Database works as well as a URL, and is left open for its owner."""
    import peewee

    _, path = log
    db = peewee.SqliteDatabase(str(path))
    assert 6 == checkpoint(db).last_id
    assert verify(db).ok
    assert not db.is_closed()
    db.close()


def test_link_row_is_link_over_the_prefixed_payload():
    """The writer's one-step link equals the documented form."""
    from auditaspect.integrity import link_row

    for secret in (None, b"k"):
        assert link("p" * 64, row_prefix(7, "sha256") + b"body", secret) == link_row(
            "p" * 64, 7, "sha256", b"body", secret
        )


_FIELD = st.one_of(st.none(), st.text(), st.text(alphabet=st.characters(max_codepoint=0x3F)))


@given(st.lists(_FIELD, min_size=10, max_size=10), st.text())
def test_canonical_joins_exactly_what_the_json_encoder_makes(fields, details):
    """The hashed bytes of a row equal the stdlib encoder's, for any text and None
    (control characters, quotes, backslashes, U+2028, astral planes)."""
    from auditaspect.integrity import canonical

    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    expected = f"{encoder.encode(fields)}\n{details}".encode()
    assert expected == canonical(fields, details)


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "stdlib"])
def test_canonical_of_every_code_point_is_the_encoders(fast, monkeypatch):
    """Every code point outside the surrogates, with orjson (auditaspect[fast])
    and without it: the bytes the encoder makes of the same fields."""
    from auditaspect import events
    from auditaspect.integrity import canonical

    if not fast:
        monkeypatch.setattr(events, "fast_dumps", None)
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    points = [p for p in range(0x110000) if not 0xD800 <= p <= 0xDFFF]
    for start in range(0, len(points), 2048):
        text = "".join(map(chr, points[start : start + 2048]))
        fields = [text, None, text[::-1], "", None, "x", None, None, "t", None]
        assert f"{encoder.encode(fields)}\n{{}}".encode() == canonical(fields, "{}")


def test_canonical_of_a_lone_surrogate_is_refused_as_before():
    """orjson refuses a lone surrogate; the encoder's path then refuses its bytes too
    (redaction replaces them before any row is built)."""
    from auditaspect.integrity import canonical

    with pytest.raises(UnicodeEncodeError):
        canonical(["\ud800"] + [None] * 9, "{}")


def test_canonical_of_fields_that_are_not_text_uses_the_encoder():
    """A field that is not text (a legacy row's number) is encoded as the encoder does."""
    from auditaspect.integrity import canonical

    assert b'["a",7,null,true]\n{}' == canonical(["a", 7, None, True], "{}")
