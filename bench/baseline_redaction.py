"""A frozen copy of auditaspect 0.1's redaction module: the baseline for compare.py.

The redaction cost target ("no slower than 1.3x the 0.1 redactor") is a ratio
measured in one run against this copy. Not part of the package; do not edit.

Masking secrets before anyone sees them: the :class:`Redactor`.

Redaction runs on every event before the first receiver gets it, and a sink
runs it again before writing, so no receiver and no row gets a secret by
default. Two rules apply, in this order of priority:

1. **Keys.** A value under a secret-like key (``password``, ``api_key``,
   ``Authorization``, ``client_secret``, ...) is replaced by the mask, whatever
   it is, at any depth. Keys are compared after normalisation (lower case,
   only letters and digits), so ``API-Key``, ``apiKey`` and ``api_key`` are one.
2. **Values.** Every string, under any key, is scanned for secret-looking text
   (bearer tokens, JWTs, PEM private keys, AWS access key ids, passwords in
   URLs, provider keys such as ``sk-...``/``ghp_...``/``xoxb-...``, and
   ``password=...`` pairs inside free text); the secret part is masked.

The walk also makes the details JSON-safe: non-JSON values become a short
textual form, cycles and excessive depth become visible markers, and details
whose JSON exceeds ``max_details_bytes`` are replaced by a marked, cut preview.
It never raises on odd input.

Every pattern has bounded quantifiers and starts from a literal, so scanning
stays linear on multi-megabyte strings.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from typing import Any

__all__ = [
    "DEFAULT_MASK",
    "DEFAULT_MAX_DETAILS_BYTES",
    "Redactor",
    "TokenPrefix",
    "get_redactor",
    "set_redactor",
    "token_prefix",
]

DEFAULT_MASK = "[REDACTED]"
DEFAULT_MAX_DETAILS_BYTES = 64 * 1024
MAX_DEPTH = 32
# The textual form of an object that is not JSON: long enough to be useful,
# short enough that a huge __repr__ cannot blow up a row.
MAX_TEXT_FORM = 1024
CYCLE_MARKER = "<cycle>"
DEPTH_MARKER = "<max depth reached>"
TRUNCATED_KEY = "_truncated"

# Normalised key names (lower case, letters and digits only) that are secret
# when they appear anywhere inside a key ("db_password", "X-Api-Key").
SECRET_KEY_PARTS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "privatekey",
    "credential",
    "accesskey",
    "signingkey",
    "encryptionkey",
)
# Normalised key names that are secret only as a whole word.
SECRET_KEYS_EXACT: frozenset[str] = frozenset({"pwd", "auth", "otp", "pin", "cvv", "cvc", "ssn"})

_SECRET_WORDS = r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|authorization)"

# (name, pattern, replacement). A replacement keeps the harmless prefix of the
# match (scheme, user name, "Bearer ") so the log stays readable. Each pattern
# starts from a literal: sre jumps between occurrences of a literal prefix with
# a fast search, so strings without the trigger cost a single scan.
_VALUE_RULES: tuple[tuple[str, str, str], ...] = (
    (
        "pem_private_key",
        r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----"
        r"(?:[^-]{0,65536}-----END[A-Z ]{0,40}PRIVATE KEY-----|[A-Za-z0-9+/=\s]{0,65536})",
        "{mask}",
    ),
    (
        "jwt",
        r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{2,8192}\.eyJ[A-Za-z0-9_-]{2,8192}\.[A-Za-z0-9_-]{0,8192}",
        "{mask}",
    ),
    ("bearer", r"(?i)(bearer)[ \t]{1,16}[A-Za-z0-9._~+/-]{8,8192}=*", r"\1 {mask}"),
    (
        "aws_key_id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AIPA|ANPA|ANVA|AGPA)[A-Z0-9]{16}\b",
        "{mask}",
    ),
    ("url_password", r"://([^\s:/@]{0,256}):[^\s@/]{1,256}@", r"://\1:{mask}@"),
    ("sk_key", r"\bsk[-_][A-Za-z0-9_-]{16,8192}", "{mask}"),
    (
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{20,255}|github_pat_[A-Za-z0-9_]{20,255})",
        "{mask}",
    ),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{8,255}", "{mask}"),
    (
        "secret_pair",
        r"(?i)\b(" + _SECRET_WORDS + r")(\"?\s{0,8}[=:]\s{0,8}[\"']?)[^\s\"',;&}]{1,512}",
        r"\1\2{mask}",
    ),
)

# One cheap search, on the lower-cased text, that every rule's match must
# contain: most strings have no trigger at all and skip the rules. (An
# IGNORECASE alternation is several times slower than lower() and a plain one.)
_TRIGGER = re.compile(
    r"-----begin|eyj|bearer|a(?:kia|sia|bia|cca|ida|roa|ipa|npa|nva|gpa)|://|sk[-_]|gh[pousr]_"
    r"|github_pat_|xox|pass|pwd|secret|token|api[_-]?key|authorization"
)
_KEY_CACHE_LIMIT = 4096
# Short strings that needed no change are remembered: in real details the
# same values (user names, project names, statuses) come back constantly.
_CLEAN_CACHE_LIMIT = 8192
_CLEAN_MAX_LEN = 256
_INT64 = 2**63
_SURROGATE = re.compile("[\ud800-\udfff]")


class TokenPrefix(str):
    """A string that is already safe to log: the visible start of a secret.

    Made by :func:`token_prefix`. The redactor leaves it alone even under a
    secret-like key such as ``token_prefix``.
    """

    __slots__ = ()


def token_prefix(token: str, keep: int = 5) -> TokenPrefix:
    """Return the first characters of ``token`` and an ellipsis (``"sk-ab…"``).

    Shows which credential was used without revealing it: never more than a
    quarter of the token, and at most ``keep`` characters.
    """
    if keep < 0:
        raise ValueError("keep must be >= 0")
    shown = min(keep, len(token) // 4)
    return TokenPrefix(token[:shown] + "…")


def _normalise_key(key: str) -> str:
    return "".join(ch for ch in key.lower() if ch.isalnum())


class Redactor:
    """Masks secrets and makes event details JSON-safe.

    ``extra_keys`` adds secret key names (normalised the same way as the
    defaults; each matches as a part of a key), ``extra_patterns`` adds regular
    expressions whose whole match is masked (keep them linear: bounded
    quantifiers, a literal start), ``mask`` is the replacement text, and
    ``max_details_bytes`` caps an event's serialised details (64 KiB by
    default). A redactor is immutable and safe to share between threads.
    """

    def __init__(
        self,
        *,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str | re.Pattern[str]] = (),
        mask: str = DEFAULT_MASK,
        max_details_bytes: int = DEFAULT_MAX_DETAILS_BYTES,
    ) -> None:
        if max_details_bytes < 256:
            raise ValueError("max_details_bytes must be at least 256")
        extra = tuple(_normalise_key(k) for k in extra_keys)
        if any(not k for k in extra):
            raise ValueError("extra_keys must contain letters or digits")
        self.mask = mask
        self.max_details_bytes = max_details_bytes
        parts = SECRET_KEY_PARTS + extra
        self._key_re = re.compile("|".join(re.escape(p) for p in sorted(set(parts))))
        self._key_cache: dict[str, bool] = {}
        self._clean: set[str] = set()
        escaped_mask = mask.replace("\\", "\\\\")
        rules = [
            (re.compile(pattern), repl.replace("{mask}", escaped_mask))
            for _, pattern, repl in _VALUE_RULES
        ]
        for pattern in extra_patterns:
            compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
            rules.append((compiled, escaped_mask))
        self._rules = tuple(rules)
        # User patterns have no entry in the trigger search: scan everything.
        self._always_scan = len(rules) > len(_VALUE_RULES)

    def __repr__(self) -> str:
        return f"Redactor(mask={self.mask!r}, max_details_bytes={self.max_details_bytes})"

    def is_secret_key(self, key: str) -> bool:
        """Tell whether a value under ``key`` is masked (cached per key)."""
        cached = self._key_cache.get(key)
        if cached is not None:
            return cached
        norm = _normalise_key(key)
        secret = norm in SECRET_KEYS_EXACT or self._key_re.search(norm) is not None
        if len(self._key_cache) < _KEY_CACHE_LIMIT:
            self._key_cache[key] = secret
        return secret

    def redact_text(self, text: str) -> str:
        """Mask secret-looking parts of ``text`` and make it storable.

        NUL characters and lone surrogates (which PostgreSQL or UTF-8 cannot
        store) are replaced by U+FFFD.
        """
        if text in self._clean or isinstance(text, TokenPrefix):
            return text
        original = text
        if self._always_scan or _TRIGGER.search(text.lower()) is not None:
            for pattern, repl in self._rules:
                text = pattern.sub(repl, text)
        if "\x00" in text:
            text = text.replace("\x00", "\ufffd")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = _SURROGATE.sub("\ufffd", text)
        if text is original and len(text) <= _CLEAN_MAX_LEN:
            clean = self._clean
            if len(clean) >= _CLEAN_CACHE_LIMIT:
                clean.clear()
            clean.add(text)
        return text

    def redact(self, details: Mapping[str, Any]) -> dict[str, Any]:
        """Return a redacted, JSON-safe copy of ``details`` within the size cap.

        Never raises on the content of ``details``: odd values are turned into
        text or markers instead. Oversized details become a dict with
        ``_truncated: True``, ``original_bytes`` (at least the serialised size)
        and a cut ``preview``.
        """
        walker = _Walk(self)
        redacted = walker.mapping(details, 0)
        # The walk's size estimate counts characters, not escaped JSON bytes;
        # only details that might be near the cap pay for an exact check.
        if walker.size * 6 > self.max_details_bytes:
            return self._cap(redacted, walker.size)
        return redacted

    def _cap(self, redacted: dict[str, Any], estimate: int) -> dict[str, Any]:
        text = json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
        if size <= self.max_details_bytes:
            return redacted
        preview = text[: self.max_details_bytes // 2]
        # Huge strings were cut before scanning: the estimate remembers their length.
        return {TRUNCATED_KEY: True, "original_bytes": max(size, estimate), "preview": preview}


class _Walk:
    """One traversal of a details structure (holds the cycle guard and size)."""

    __slots__ = (
        "active",
        "clean",
        "is_secret_key",
        "key_cache",
        "longest",
        "mask",
        "redact_text",
        "size",
    )

    def __init__(self, redactor: Redactor) -> None:
        # A string longer than the cap will be cut with its details anyway:
        # scan only its start (with a margin, so a secret straddling the cut
        # is still recognised and masked).
        self.longest = redactor.max_details_bytes + 16384
        self.is_secret_key = redactor.is_secret_key
        self.key_cache = redactor._key_cache
        self.redact_text = redactor.redact_text
        self.clean = redactor._clean
        self.mask = redactor.mask
        self.active: set[int] = set()
        self.size = 0

    def mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        marker = id(value)
        self.active.add(marker)
        try:
            items = list(value.items())
        except Exception as exc:  # a broken Mapping must not break the call
            self.active.discard(marker)
            return {"<unreadable>": f"{type(exc).__name__}"}
        depth += 1
        # The hottest loop of an audited call: lookups hoisted, the common
        # cases (known key, already-clean short string) answered inline.
        key_cache, clean, walk, mask = self.key_cache, self.clean, self.value, self.mask
        size = 0
        for key, item in items:
            name = key if type(key) is str else str(walk(key, depth))
            size += len(name) + 4
            secret = key_cache.get(name)
            if secret is None:
                secret = self.is_secret_key(name)
            if secret and not isinstance(item, TokenPrefix):
                out[name] = mask
            elif type(item) is str and item in clean:
                size += len(item)
                out[name] = item
            else:
                out[name] = walk(item, depth)
        self.size += size
        self.active.discard(marker)
        return out

    def sequence(self, value: Iterable[Any], depth: int) -> list[Any]:
        marker = id(value)
        self.active.add(marker)
        depth += 1
        out = [self.value(item, depth) for item in value]
        self.active.discard(marker)
        return out

    def value(self, value: Any, depth: int) -> Any:
        # Exact types first: they are nearly all of real details.
        kind = type(value)
        if kind is str:
            self.size += len(value)
            if len(value) > self.longest:
                value = value[: self.longest]
            return self.redact_text(value)
        if value is None or kind is bool:
            self.size += 8
            return value
        if kind is int:
            self.size += 8
            # Beyond 64 bits SQLite's json() turns an integer into a float.
            return value if -_INT64 <= value < _INT64 else str(value)
        if kind is float:
            self.size += 24
            if not math.isfinite(value):
                return repr(value)  # NaN is not JSON
            return 0.0 if value == 0 else value  # -0.0 does not survive JSONB
        if kind is dict or kind is list or kind is tuple:
            if id(value) in self.active:
                return CYCLE_MARKER
            if depth >= MAX_DEPTH:
                return DEPTH_MARKER
            return self.mapping(value, depth) if kind is dict else self.sequence(value, depth)
        return self.other(value, depth)

    def other(self, value: Any, depth: int) -> Any:
        if isinstance(value, enum.Enum):
            return self.value(value.value, depth)
        if isinstance(value, str):  # a subclass: TokenPrefix stays, others become plain
            self.size += len(value)
            if isinstance(value, TokenPrefix):
                return value
            return self.redact_text(str.__str__(value))
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return self.value(int(value), depth)
        if isinstance(value, float):
            return self.value(float(value), depth)
        if isinstance(value, (Mapping, list, tuple, set, frozenset)):
            if id(value) in self.active:
                return CYCLE_MARKER
            if depth >= MAX_DEPTH:
                return DEPTH_MARKER
            if isinstance(value, Mapping):
                return self.mapping(value, depth)
            if isinstance(value, (set, frozenset)):
                return self.sequence(_stable_order(value), depth)
            return self.sequence(value, depth)
        if isinstance(value, (datetime, date, time)):
            return self.value(value.isoformat(), depth)
        if isinstance(value, (bytes, bytearray, memoryview)):
            self.size += 16
            return f"<{len(value)} bytes>"
        return self.value(_text_form(value), depth)


def _stable_order(items: Iterable[Any]) -> list[Any]:
    values = list(items)
    try:
        return sorted(values)
    except Exception:  # unorderable or mixed types: order by text instead
        return sorted(values, key=_text_form)


def _text_form(value: object) -> str:
    try:
        text = str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    if len(text) > MAX_TEXT_FORM:
        text = text[:MAX_TEXT_FORM] + "…"
    return text


_active: Redactor = Redactor()


def get_redactor() -> Redactor:
    """Return the redactor the decorator and :func:`emit` apply to new events."""
    return _active


def set_redactor(redactor: Redactor) -> Redactor:
    """Make ``redactor`` the one applied to new events; return the previous one.

    Sinks built without ``redactor=`` use whichever is active when they write.
    """
    global _active
    if not isinstance(redactor, Redactor):
        raise TypeError(f"expected a Redactor, not {type(redactor).__name__}")
    previous, _active = _active, redactor
    return previous
