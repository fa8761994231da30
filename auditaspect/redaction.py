"""Masking secrets before anyone sees them: the :class:`Redactor`.

Redaction runs on every event before the first receiver gets it, and a sink
runs it again before writing events built by hand, so no receiver and no row
gets a secret by default. Two rules apply, in this order of priority:

1. **Keys.** A value under a secret-like key (``password``, ``api_key``,
   ``Authorization``, ``client_secret``, ``pw``, ...) is replaced by ``mask``,
   whatever it is, at any depth. Keys are compared after normalisation (lower
   case, only letters and digits), so ``API-Key``, ``apiKey`` and ``api_key``
   are one.
2. **Text.** Every string, keys included, is scanned with the secret rules of
   :mod:`auditaspect.rules` (about a hundred provider token formats, private
   keys, JWTs, credentials in URLs, headers and commands, and keyword
   assignments such as ``DB_PASSWORD=...`` or ``{'api_key': '...'}``); each
   secret found becomes ``finding_mask`` naming the rule,
   ``[REDACTED:github-pat]``.

The walk also makes the details JSON-safe: non-JSON values become a short
textual form, cycles and excessive depth become visible markers, and details
whose JSON exceeds ``max_details_bytes`` are replaced by a marked, cut preview.
It never raises on odd input.

The same rules serve application logs: :class:`RedactingFilter` for
:mod:`logging` and :class:`StructlogRedactor` for structlog.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import date, datetime, time
from typing import Any

from .rules import Finding, RuleSet, default_rules

__all__ = [
    "DEFAULT_FINDING_MASK",
    "DEFAULT_MASK",
    "DEFAULT_MAX_DETAILS_BYTES",
    "RedactingFilter",
    "Redactor",
    "StructlogRedactor",
    "TokenPrefix",
    "get_redactor",
    "set_redactor",
    "token_prefix",
]

DEFAULT_MASK = "[REDACTED]"
DEFAULT_FINDING_MASK = "[REDACTED:{rule}]"
# The rule id of a match of one of the user's extra_patterns.
CUSTOM_RULE = "custom"
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
SECRET_KEYS_EXACT: frozenset[str] = frozenset(
    {"pwd", "pw", "pass", "passcode", "auth", "otp", "pin", "cvv", "cvc", "ssn"}
)

_KEY_CACHE_LIMIT = 4096
# Longer than any match of a shipped rule (the longest, a private key block, is
# under 66,000 characters): text this far past a cut cannot hide the end of a
# secret that starts before it.
_SCAN_MARGIN = 128 * 1024
# Short strings that needed no change are remembered: in real details the
# same values (user names, project names, statuses) come back constantly.
_CLEAN_CACHE_LIMIT = 8192
_CLEAN_MAX_LEN = 256
_INT64 = 2**63
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Default(enum.Enum):
    TOKEN = 0


_DEFAULT = _Default.TOKEN


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
    defaults; each matches as a part of a key). ``extra_patterns`` adds regular
    expressions whose whole match is masked as rule ``custom`` (keep them
    linear: bounded quantifiers, a literal start; they run on every string).
    ``rules`` replaces the shipped :class:`~auditaspect.rules.RuleSet`.
    ``mask`` replaces values under secret keys; ``finding_mask`` replaces a
    secret found inside text, with ``{rule}`` standing for the rule's id: by
    default ``[REDACTED:{rule}]``, or ``mask`` itself when you set a ``mask``
    of your own; pass ``finding_mask=None`` for the plain mask everywhere.
    ``max_details_bytes`` caps an event's serialised details (64 KiB by
    default).

    A redactor is immutable and safe to share between threads; it never raises
    on the content it is given.
    """

    def __init__(
        self,
        *,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str | re.Pattern[str]] = (),
        mask: str = DEFAULT_MASK,
        finding_mask: str | _Default | None = _DEFAULT,
        rules: RuleSet | None = None,
        max_details_bytes: int = DEFAULT_MAX_DETAILS_BYTES,
    ) -> None:
        if max_details_bytes < 256:
            raise ValueError("max_details_bytes must be at least 256")
        extra = tuple(_normalise_key(k) for k in extra_keys)
        if any(not k for k in extra):
            raise ValueError("extra_keys must contain letters or digits")
        if isinstance(finding_mask, _Default):
            finding_mask = DEFAULT_FINDING_MASK if mask == DEFAULT_MASK else None
        if finding_mask is not None:
            try:
                finding_mask.format(rule="x")
            except (KeyError, IndexError, ValueError):
                raise ValueError(
                    "finding_mask may only use {rule} as a placeholder (write {{ for a brace)"
                ) from None
        self.mask = mask
        self.finding_mask = finding_mask
        self.max_details_bytes = max_details_bytes
        self.rules = default_rules() if rules is None else rules
        parts = SECRET_KEY_PARTS + extra
        self._key_re = re.compile("|".join(re.escape(p) for p in sorted(set(parts))))
        self._key_cache: dict[str, bool] = {}
        self._clean: set[str] = set()
        self._masks: dict[str, str] = {}
        self._patterns = tuple(
            re.compile(pattern) if isinstance(pattern, str) else pattern
            for pattern in extra_patterns
        )

    def __repr__(self) -> str:
        return (
            f"Redactor(mask={self.mask!r}, finding_mask={self.finding_mask!r}, "
            f"rules={len(self.rules)}, max_details_bytes={self.max_details_bytes})"
        )

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

    def scan(self, text: str) -> list[Finding]:
        """Return the secrets found in ``text``, in order, without changing it."""
        found = self.rules.findings(text)
        if not self._patterns:
            return found
        for pattern in self._patterns:
            found.extend(Finding(m.start(), m.end(), CUSTOM_RULE) for m in pattern.finditer(text))
        found.sort(key=lambda f: f.start)
        merged: list[Finding] = []
        for finding in found:
            if merged and finding.start < merged[-1].end:
                last = merged[-1]
                if finding.end > last.end:
                    merged[-1] = Finding(last.start, finding.end, last.rule)
            elif finding.end > finding.start:
                merged.append(finding)
        return merged

    def mask_for(self, rule: str) -> str:
        """The text that replaces a secret found by ``rule``."""
        text = self._masks.get(rule)
        if text is None:
            template = self.finding_mask
            text = self.mask if template is None else template.format(rule=rule)
            self._masks[rule] = text
        return text

    def redact_text(self, text: str) -> str:
        """Mask the secrets in ``text`` and make it storable.

        NUL characters and lone surrogates (which PostgreSQL or UTF-8 cannot
        store) are replaced by U+FFFD. Redacting redacted text changes nothing.
        """
        if text in self._clean or isinstance(text, TokenPrefix):
            return text
        original = text
        findings = self.scan(text) if self._patterns else self.rules.findings(text)
        if findings:
            parts: list[str] = []
            position = 0
            for finding in findings:
                parts.append(text[position : finding.start])
                parts.append(self.mask_for(finding.rule))
                position = finding.end
            parts.append(text[position:])
            text = "".join(parts)
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

    def redact_capped(self, text: str, limit: int) -> str:
        """Redact ``text``, then cut it to ``limit`` characters with an ellipsis.

        Redaction comes first, so a secret that straddles the cut is masked
        whole rather than cut into a piece no rule recognises. Only the start
        of a huge text is scanned: every rule's match is far shorter than the
        margin kept beyond ``limit``.
        """
        redacted = self.redact_text(text[: limit + _SCAN_MARGIN])
        if len(redacted) > limit:
            return redacted[:limit] + "…"
        return redacted

    def redact(self, details: Mapping[str, Any]) -> dict[str, Any]:
        """Return a redacted, JSON-safe copy of ``details`` within the size cap.

        Never raises on the content of ``details``: odd values are turned into
        text or markers instead. Oversized details become a dict with
        ``_truncated: True``, ``original_bytes`` (at least the serialised size)
        and a cut ``preview``.
        """
        return self.redact_checked(details)[0]

    def redact_checked(self, details: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """:meth:`redact`, and whether the result holds no float (the walk sees
        every value: see :func:`~auditaspect.events.dumps_details`)."""
        walker = _Walk(self)
        try:
            redacted = walker.mapping(details, 0)
        except _Deep:  # a cycle, or nesting that deep: again, minding cycles
            walker = _Walk(self, cycles=set())
            redacted = walker.mapping(details, 0)
        # The walk's size estimate counts characters, not escaped JSON bytes;
        # only details that might be near the cap pay for an exact check.
        if walker.size * 6 > self.max_details_bytes:
            capped = self._cap(redacted, walker.size)
            if capped is not redacted:  # the truncation marker: text and integers only
                return capped, True
        return redacted, not walker.floats

    def _cap(self, redacted: dict[str, Any], estimate: int) -> dict[str, Any]:
        limit = self.max_details_bytes
        text = json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
        size = _json_bytes(text)
        if size <= limit:
            return redacted
        # Huge strings were cut before scanning: the estimate remembers their length.
        capped: dict[str, Any] = {TRUNCATED_KEY: True, "original_bytes": max(size, estimate)}
        # The preview is escaped again when the capped details are stored:
        # shrink it until the whole stays within the cap.
        preview = text[: limit // 2]
        while True:
            capped["preview"] = preview
            if _json_bytes(json.dumps(capped, ensure_ascii=False, separators=(",", ":"))) <= limit:
                return capped
            preview = preview[: len(preview) // 2]


class _Deep(Exception):
    """A walk without a cycle guard reached :data:`MAX_DEPTH`: walk again with one."""


class _Walk:
    """One traversal of a details structure (holds the size and, if asked, a cycle guard).

    Real details are a few levels deep and never cyclic, so the first walk
    keeps no set of the containers it is inside (``cycles=None``) and gives
    up with :class:`_Deep` at :data:`MAX_DEPTH`; only then does
    :meth:`Redactor.redact_checked` walk again, minding cycles, which turns a
    cycle into :data:`CYCLE_MARKER` and deeper nesting into
    :data:`DEPTH_MARKER`. Both walks give the same result for the same input.
    """

    __slots__ = (
        "active",
        "clean",
        "floats",
        "is_secret_key",
        "key_cache",
        "longest",
        "mask",
        "redact_text",
        "size",
    )

    def __init__(self, redactor: Redactor, cycles: set[int] | None = None) -> None:
        # A string longer than the cap will be cut with its details anyway:
        # scan only its start (with a margin, so a secret straddling the cut
        # is still recognised and masked).
        self.longest = redactor.max_details_bytes + _SCAN_MARGIN
        self.is_secret_key = redactor.is_secret_key
        self.key_cache = redactor._key_cache
        self.redact_text = redactor.redact_text
        self.clean = redactor._clean
        self.mask = redactor.mask
        self.active = cycles
        self.size = 0
        self.floats = False

    def mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        active = self.active
        if active is not None:
            active.add(id(value))
        try:
            items = list(value.items())
        except Exception as exc:  # a broken Mapping must not break the call
            if active is not None:
                active.discard(id(value))
            return {"<unreadable>": f"{type(exc).__name__}"}
        depth += 1
        # The hottest loop of an audited call: lookups hoisted, the common
        # cases (known key, already-clean short string) answered inline.
        key_cache, clean, walk, mask = self.key_cache, self.clean, self.value, self.mask
        size = 2  # the braces: empty dicts are not free
        for key, item in items:
            if type(key) is str and key in clean:
                name = key
            else:
                # A key is text like any other: a secret used as a key is masked too.
                name = self.redact_text(key) if type(key) is str else str(walk(key, depth))
                if name in out:  # two keys masked alike must not overwrite each other
                    name = _unique_key(name, out)
            size += len(name) + 4
            secret = key_cache.get(name)
            if secret is None:
                secret = self.is_secret_key(name)
            if secret and not isinstance(item, TokenPrefix):
                out[name] = mask
            elif (kind := type(item)) is str and item in clean:
                size += len(item) + 2
                out[name] = item
            elif (kind is int and -_INT64 <= item < _INT64) or kind is bool or item is None:
                size += 8  # as value() counts them
                out[name] = item
            elif active is None and depth < MAX_DEPTH and (kind is dict or kind is list):
                # Without a cycle guard nothing else to check: straight in.
                out[name] = (self.mapping if kind is dict else self.sequence)(item, depth)
            else:
                out[name] = walk(item, depth)
        self.size += size
        if active is not None:
            active.discard(id(value))
        return out

    def sequence(self, value: Iterable[Any], depth: int) -> list[Any]:
        active = self.active
        if active is not None:
            active.add(id(value))
        depth += 1
        clean, walk = self.clean, self.value
        out = []
        size = 2  # the brackets: empty lists are not free
        for item in value:
            size += 1  # a comma
            if type(item) is str and item in clean:
                size += len(item) + 2  # as value() counts it
                out.append(item)
            else:
                out.append(walk(item, depth))
        self.size += size
        if active is not None:
            active.discard(id(value))
        return out

    def value(self, value: Any, depth: int) -> Any:
        # Exact types first: they are nearly all of real details.
        kind = type(value)
        if kind is str:
            self.size += len(value) + 2  # the quotes: empty strings are not free
            if len(value) > self.longest:
                value = value[: self.longest]
            return self.redact_text(value)
        if value is None or kind is bool:
            self.size += 8
            return value
        if kind is int:
            self.size += 8
            # Beyond 64 bits SQLite's json() turns an integer into a float.
            return value if -_INT64 <= value < _INT64 else _int_text(value)
        if kind is float:
            self.size += 24
            self.floats = True
            if not math.isfinite(value):
                return repr(value)  # NaN is not JSON
            return 0.0 if value == 0 else value  # -0.0 does not survive JSONB
        if kind is dict or kind is list or kind is tuple:
            marker = self.refused(value, depth)
            if marker is not None:
                return marker
            return self.mapping(value, depth) if kind is dict else self.sequence(value, depth)
        return self.other(value, depth)

    def refused(self, value: Any, depth: int) -> str | None:
        """The marker that stands for a container not walked into (a cycle, or
        :data:`MAX_DEPTH`), or ``None`` to walk into it. Without a cycle guard,
        :class:`_Deep` at :data:`MAX_DEPTH` (a cycle, or nesting deeper than
        real details)."""
        active = self.active
        if active is None:
            if depth >= MAX_DEPTH:
                raise _Deep
            return None
        if id(value) in active:
            return CYCLE_MARKER
        return DEPTH_MARKER if depth >= MAX_DEPTH else None

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
            marker = self.refused(value, depth)
            if marker is not None:
                return marker
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


def _json_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _int_text(value: int) -> str:
    # Beyond sys.get_int_max_str_digits() (4,300 by default) str() raises.
    try:
        return str(value)
    except ValueError:
        return f"<integer of {value.bit_length()} bits>"


def _unique_key(name: str, taken: Mapping[str, Any]) -> str:
    number = 2
    while f"{name}#{number}" in taken:
        number += 1
    return f"{name}#{number}"


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


# --------------------------------------------------------------------------
# The same rules for application logs: a logging.Filter and a structlog processor.

# Attributes every LogRecord has; anything else came in through ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _redact_loosely(redactor: Redactor, value: Any, depth: int = 0) -> Any:
    """Mask secrets in strings and containers; leave every other object as it is.

    Unlike :meth:`Redactor.redact` this keeps non-JSON values (exception
    objects, ``exc_info=True``) for the processors and formatters after it.
    """
    if isinstance(value, str):
        return redactor.redact_text(value)
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            key: (
                redactor.mask
                if isinstance(key, str) and redactor.is_secret_key(key)
                else _redact_loosely(redactor, item, depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        items = [_redact_loosely(redactor, item, depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


class RedactingFilter(logging.Filter):
    """A :class:`logging.Filter` that masks secrets in every record it lets through.

    Attach it to a *handler* (a filter on a logger does not see records of its
    child loggers)::

        handler.addFilter(RedactingFilter())

    The message is formatted with its arguments, redacted, and stored back
    without arguments; exception and stack text are formatted and redacted
    now, so the formatter prints the redacted text; attributes given with
    ``extra=`` are redacted, and masked whole under secret-like names. With
    ``redactor=None`` the active redactor (:func:`get_redactor`) is used.

    It never drops a record and never raises: a record whose message cannot
    be formatted keeps a marker saying so instead of its text.
    """

    def __init__(self, redactor: Redactor | None = None, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always return True (the record is kept)."""
        redactor = self.redactor or _active
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the record
            message = f"<unformattable log message: {type(exc).__name__}>"
        record.msg = redactor.redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.redact_text(record.stack_info)
        for name in set(record.__dict__) - _RECORD_ATTRS:
            value = record.__dict__[name]
            if redactor.is_secret_key(name):
                record.__dict__[name] = redactor.mask
            else:
                record.__dict__[name] = _redact_loosely(redactor, value)
        return True


class StructlogRedactor:
    """A structlog processor that masks secrets in the event dict.

    Place it after ``format_exc_info`` (so tracebacks are text by then) and
    before the renderer::

        structlog.configure(processors=[..., structlog.processors.format_exc_info,
                                        StructlogRedactor(), structlog.processors.JSONRenderer()])

    Strings are redacted with the audit log's rules at any depth, values under
    secret-like keys are masked, and every other value is passed on as it is.
    With ``redactor=None`` the active redactor is used. It never raises on
    the content of the event dict.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor = redactor

    def __repr__(self) -> str:
        return f"StructlogRedactor({self.redactor!r})"

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Return ``event_dict`` with its secrets masked."""
        redactor = self.redactor or _active
        for key, value in list(event_dict.items()):
            if redactor.is_secret_key(key):
                event_dict[key] = redactor.mask
            else:
                event_dict[key] = _redact_loosely(redactor, value)
        return event_dict
