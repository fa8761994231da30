"""Checkpoints: the head of the log at a moment, signed so that anyone can check it.

A hash chain shows that no row inside it was changed, but not that its tail
was not cut off, nor (without a key) that it was not rewritten whole. A
:class:`Checkpoint` records the last row's id and hash at some moment. Kept
where the log's writers cannot change it, it lets :func:`~auditaspect.verify`
show later that the log still contains that row, unchanged, and extends it.

Signed with Ed25519 (the ``auditaspect[signing]`` extra, built on
``cryptography``), a checkpoint can be checked with the **public** key only:
unlike the chain's HMAC key, nothing a verifier holds lets it forge a
checkpoint. Each signed checkpoint names its signing key (:func:`public_key_id`),
so a verifier can hold a keyring of several keys, each valid for a time
(:class:`TrustedKey`), and keys can be rotated.

A sink writes checkpoints by itself with :class:`CheckpointWriter` (every N
events, every T seconds even when idle, and at close): a cut tail, or a
writer that stopped, shows as a gap between the log and its checkpoints.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import peewee

from .database import close_database, database_origin, open_readonly
from .integrity import GENESIS
from .model import TABLE_NAME, format_timestamp

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointWriter",
    "TrustedKey",
    "checkpoint",
    "generate_signing_key",
    "load_public_keys",
    "load_signing_key",
    "public_key_id",
    "read_checkpoints",
    "write_checkpoint_file",
]

logger = logging.getLogger("auditaspect")

FORMAT = "auditaspect-checkpoint/1"
_HEAD_SQL = f"SELECT id, hash FROM {TABLE_NAME} ORDER BY id DESC LIMIT 1"
_NEEDS_EXTRA = (
    "signed checkpoints need the 'cryptography' package: pip install 'auditaspect[signing]'"
)


def _crypto() -> Any:
    """The Ed25519 module of ``cryptography``, imported on first use."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - the test environments have the extra
        raise ImportError(_NEEDS_EXTRA) from None
    return ed25519


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


def public_key_id(public_key: Any) -> str:
    """``ed25519:`` and 16 hex digits of the SHA-256 of the raw public key."""
    ser = _serialization()
    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def _read(source: Any) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and "-----BEGIN" in source:
        return source.encode("ascii")
    return Path(source).read_bytes()


def load_signing_key(source: Any) -> Any:
    """An Ed25519 private key: the key object, PEM (PKCS #8) bytes or text, or a file path.

    Raises ``ValueError`` for anything else (and ``OSError`` for an unreadable file).
    """
    ed25519 = _crypto()
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source
    key = _serialization().load_pem_private_key(_read(source), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the signing key must be an Ed25519 private key (auditaspect keygen)")
    return key


def load_public_keys(source: Any) -> list[Any]:
    """The Ed25519 public keys in PEM text, bytes or a file (one or several blocks)."""
    ed25519 = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return [source]
    data = _read(source)
    marker = b"-----END PUBLIC KEY-----"
    blocks = [part + marker for part in data.split(marker) if b"-----BEGIN" in part]
    if not blocks:
        raise ValueError("no PEM public key found (expected -----BEGIN PUBLIC KEY-----)")
    keys = []
    for block in blocks:
        key = _serialization().load_pem_public_key(block[block.index(b"-----BEGIN") :])
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError("public keys must be Ed25519 keys (auditaspect keygen)")
        keys.append(key)
    return keys


def generate_signing_key() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: (private key, public key)."""
    ser = _serialization()
    key = _crypto().Ed25519PrivateKey.generate()
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    public = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@attrs.frozen
class TrustedKey:
    """A public key a verifier accepts for checkpoints made between ``valid_from`` and
    ``valid_until`` (either open). A checkpoint signed by a retired key after its
    retirement is refused."""

    public_key: Any
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    @property
    def key_id(self) -> str:
        return public_key_id(self.public_key)

    def covers(self, moment: datetime | None) -> bool:
        if moment is None:
            return self.valid_from is None and self.valid_until is None
        if self.valid_from is not None and moment < self.valid_from:
            return False
        return self.valid_until is None or moment <= self.valid_until


def keyring(keys: Any) -> list[TrustedKey]:
    """Normalise what ``public_key=`` accepts: a key, PEM, a path, a TrustedKey, or a list."""
    if keys is None:
        return []
    if isinstance(keys, (list, tuple)):
        return [k for item in keys for k in keyring(item)]
    if isinstance(keys, TrustedKey):
        return [keys]
    return [TrustedKey(k) for k in load_public_keys(keys)]


@attrs.frozen
class Checkpoint:
    """The last row of the log at some moment: store it where the log's writers cannot.

    ``last_id`` and ``hash`` name the row (``0`` and the genesis hash for an
    empty log). A signed checkpoint also says which log (``origin``, without
    credentials), when (``time``, UTC), and which key signed it (``key_id``);
    ``signature`` is Ed25519 over all of these.
    """

    last_id: int
    hash: str
    origin: str | None = None
    time: datetime | None = None
    key_id: str | None = None
    signature: str | None = None

    @property
    def signed(self) -> bool:
        return self.signature is not None

    def statement(self) -> bytes:
        """The bytes the signature covers: every field but the signature, as canonical JSON."""
        data = {k: v for k, v in self.to_dict().items() if k != "signature"}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint as JSON-ready data (what :meth:`from_dict` reads back)."""
        data: dict[str, Any] = {"last_id": self.last_id, "hash": self.hash}
        if self.origin is not None or self.time is not None or self.key_id is not None:
            data["format"] = FORMAT
            data["origin"] = self.origin
            data["time"] = None if self.time is None else format_timestamp(self.time)
            data["key_id"] = self.key_id
        if self.signature is not None:
            data["signature"] = self.signature
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint exported with :meth:`to_dict`; a bad one is a ``ValueError``."""
        try:
            last_id, hash_ = data["last_id"], data["hash"]
            if type(last_id) is not int or last_id < 0 or not isinstance(hash_, str):
                raise ValueError("last_id must be a whole number >= 0 and hash a string")
            stamp = data.get("time")
            return cls(
                last_id=last_id,
                hash=hash_,
                origin=_optional_text(data.get("origin")),
                time=None if stamp is None else datetime.fromisoformat(stamp),
                key_id=_optional_text(data.get("key_id")),
                signature=_optional_text(data.get("signature")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a checkpoint (need last_id and hash): {exc}") from None

    def sign(self, signing_key: Any) -> Checkpoint:
        """This checkpoint signed with an Ed25519 key (its key id filled in)."""
        key = load_signing_key(signing_key)
        unsigned = attrs.evolve(self, key_id=public_key_id(key.public_key()), signature=None)
        signature = key.sign(unsigned.statement())
        return attrs.evolve(unsigned, signature=base64.b64encode(signature).decode("ascii"))

    def check_signature(self, trusted: Sequence[TrustedKey]) -> str | None:
        """``None`` when a trusted key valid at :attr:`time` signed it; else why not."""
        if self.signature is None:
            return "checkpoint is not signed"
        candidates = [k for k in trusted if k.key_id == self.key_id]
        if not candidates:
            return f"checkpoint signed by {self.key_id}, which is not in the keyring"
        valid = [k for k in candidates if k.covers(self.time)]
        if not valid:
            return f"key {self.key_id} was not valid at the checkpoint's time ({self.time})"
        try:
            signature = base64.b64decode(self.signature, validate=True)
        except ValueError:
            return "checkpoint signature is not base64"
        invalid = _crypto_invalid()
        for key in valid:
            try:
                key.public_key.verify(signature, self.statement())
            except invalid:
                continue
            return None
        return "checkpoint signature does not match: the checkpoint was changed or forged"


def _crypto_invalid() -> type[Exception]:
    from cryptography.exceptions import InvalidSignature

    return InvalidSignature


def _optional_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"expected text, not {type(value).__name__}")


def read_head(database: peewee.Database) -> tuple[int, str]:
    """The last row's id and hash (``0`` and the genesis hash for an empty log)."""
    row = database.execute_sql(_HEAD_SQL).fetchone()  # type: ignore[no-untyped-call]
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


def checkpoint(
    database: peewee.Database | str | None = None, *, signing_key: Any = None
) -> Checkpoint:
    """Return the log's last row as a :class:`Checkpoint`, signed with ``signing_key``
    (an Ed25519 private key, PEM or a path) when given.

    An empty log gives the empty checkpoint (``last_id`` 0, the genesis
    hash), which every log extends. Export it (``to_dict()``, or
    :func:`write_checkpoint_file`) to storage the log's writers cannot change.

    A URL is opened read-only (:func:`~auditaspect.database.open_readonly`):
    nothing in the log changes and no file is created; a SQLite URL that
    names no file is a ``ValueError``.
    """
    db, owned = open_readonly(database)
    try:
        last_id, head = read_head(db)
        origin = database_origin(db, TABLE_NAME)
    finally:
        if owned:
            close_database(db)
    mark = Checkpoint(last_id=last_id, hash=head)
    if signing_key is None:
        return mark
    stamped = attrs.evolve(mark, origin=origin, time=datetime.now(timezone.utc))
    return stamped.sign(signing_key)


def write_checkpoint_file(path: str | os.PathLike[str], mark: Checkpoint) -> None:
    """Write one checkpoint as a JSON file: created 0600, whole or not at all."""
    target = os.fspath(path)
    temporary = f"{target}.tmp-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(mark.to_dict(), handle)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_checkpoints(path: str | os.PathLike[str]) -> list[Checkpoint]:
    """Every checkpoint in a file: one JSON document, or one per line (a sink's file).

    Raises ``ValueError`` naming the line that is not a checkpoint.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    stripped = text.strip()
    if not stripped:
        raise ValueError("the file holds no checkpoint")
    try:
        return [Checkpoint.from_dict(json.loads(stripped))]
    except json.JSONDecodeError:
        pass
    marks = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                marks.append(Checkpoint.from_dict(json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"line {number}: {exc}") from None
    return marks


class CheckpointWriter:
    """Appends signed checkpoints of a sink's log to a file (one JSON line each).

    One is written after every ``every`` events the sink wrote, every
    ``interval`` seconds even when no event came (a heartbeat: its time shows
    the writer was alive), and at :meth:`close`. Each is appended and
    fsync'd to ``path`` (created 0600) and handed to ``on_checkpoint``
    if given (to ship it elsewhere). ``read_head`` reads the committed head
    of the log on the calling thread's own connection: checkpoints never
    name a row a transaction could still roll back. A checkpoint that cannot
    be made (the database or the file failing) is logged and skipped; the
    next one covers it.
    """

    def __init__(
        self,
        read_head: Callable[[], tuple[int, str]],
        *,
        origin: str,
        signing_key: Any,
        path: str | os.PathLike[str] | None,
        every: int,
        interval: float | None,
        on_checkpoint: Callable[[Checkpoint], Any] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if interval is not None and interval <= 0:
            raise ValueError("checkpoint_interval must be a positive number of seconds")
        if path is None and on_checkpoint is None:
            raise ValueError("automatic checkpoints need checkpoint_path or on_checkpoint")
        self._read_head = read_head
        self._origin = origin
        self._key = load_signing_key(signing_key)
        self.path = None if path is None else os.fspath(path)
        self._every = every
        self._interval = interval
        self._on_checkpoint = on_checkpoint
        self._pending = 0
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.written = 0

    def start(self) -> None:
        """Start the background thread (heartbeats and every-N checkpoints)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = False
        self._thread = threading.Thread(
            target=self._run, name="auditaspect-checkpoint", daemon=True
        )
        self._thread.start()

    def note(self, count: int) -> None:
        """The sink committed ``count`` more events."""
        if self._thread is None or self._pid != os.getpid():  # pragma: no cover - forked child
            # A forked child has no thread (the fork copied only the caller's).
            with self._start_lock:
                if self._pid != os.getpid():
                    self.after_fork()
                if self._thread is None and not self._stop:
                    self.start()
        self._pending += count  # only a trigger: an approximate count is enough
        if self._pending >= self._every:
            self._wake.set()

    def close(self) -> None:
        """Stop the thread and write the final checkpoint."""
        thread, self._thread = self._thread, None
        self._stop = True
        self._wake.set()
        if thread is not None and self._pid == os.getpid():  # pragma: no branch
            thread.join()
        self.write()

    def after_fork(self) -> None:  # pragma: no cover - forked child (test_checkpoints)
        """In a forked child: forget the parent's thread and locks."""
        self._start_lock = threading.Lock()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._pid = os.getpid()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop:
                return
            self.write()

    def write(self) -> Checkpoint | None:
        """Make, store and hand on one checkpoint now; ``None`` if that failed (logged)."""
        with self._lock:
            self._pending = 0
            try:
                last_id, head = self._read_head()
                mark = Checkpoint(
                    last_id=last_id,
                    hash=head,
                    origin=self._origin,
                    time=datetime.now(timezone.utc),
                ).sign(self._key)
                if self.path is not None:
                    _append_line(self.path, json.dumps(mark.to_dict()))
                if self._on_checkpoint is not None:
                    self._on_checkpoint(mark)
            except Exception as exc:
                logger.error("audit checkpoint not written (the next one covers it): %s", exc)
                return None
            self.written += 1
            return mark


def _append_line(path: str, line: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
