"""The secret rules behind the :class:`~auditaspect.redaction.Redactor`: data and engine.

The rules are data shipped in the package (``secret_rules.toml``): each has an
id, keywords for a fast prefilter, a regular expression, the group that holds
the secret, and optional floors (length, entropy, a digit). This module loads
them into a :class:`RuleSet` that finds secrets in text.

How a text is scanned, cheapest step first:

1. **Length gate.** Each rule knows the shortest text it can match (from its
   regex); a short string is only offered to the rules that fit in it.
2. **Keyword prefilter.** One search on the lower-cased text over the keywords
   of those rules; a text with none of them is clean (most are). Only rules
   whose keyword occurs run their regex.
3. **Regex and checks.** Each candidate rule's matches are checked: the
   placeholder test (``null``, ``${VAR}``, ``****``, ...) for every rule,
   floors for keyword rules; then overlapping findings are merged, a provider
   rule's label winning over a generic one.

Every quantifier in the shipped rules is bounded and every rule starts from a
keyword, so a scan stays linear in the length of the text (the test suite
checks both).
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Finding", "Rule", "RuleSet", "default_rules", "load_rules"]

RULES_FILE = "secret_rules.toml"
# Groups that may hold the secret, in order of preference: a rule with
# alternatives names one per branch.
_SECRET_GROUPS = ("secret", "secret2", "secret3", "bare")
_PLACEHOLDER_WORDS = frozenset(
    {
        "",
        "null",
        "none",
        "nil",
        "false",
        "true",
        "undefined",
        "empty",
        "redacted",
        "masked",
        "hidden",
        "n/a",
        "na",
        "tbd",
        "todo",
        # An Authorization header's scheme, met again when text is redacted twice.
        "basic",
        "bearer",
        "digest",
        "token",
        "negotiate",
        "ntlm",
    }
)
_PLACEHOLDER = re.compile(
    r"""\$\{[^}]{0,256}\}|\{\{.{0,256}\}\}|<[^<>]{0,256}>|\[REDACTED[^\]]{0,128}\]"""
    r"""|\*{1,64}|[xX]{3,64}|\.{3,64}|%\(?[A-Za-z_]{0,64}\)?[sd]|\$[A-Za-z_][A-Za-z0-9_]{0,128}"""
    r"""|%[A-Za-z_][A-Za-z0-9_]{0,128}%|(.)\1{2,255}"""
)
# Values a keyword rule leaves alone: an absolute path (PWD=/srv/app) or a
# dotted name in code (password = settings.DB_PASSWORD).
_NOT_A_VALUE = re.compile(
    r"(?:/|~/|\./)[\w./-]{0,1024}|[A-Za-z_]\w{0,40}(?:\.[A-Za-z_]\w{0,40}){1,8}"
)
# A keyword rule's name that describes the secret rather than holds it.
_METADATA_NAME = re.compile(
    r"(?:type|count|expir\w*|ttl|url|uri|name|id|ids|length|len|prefix|hint|kind|at|path|file"
    r"|endpoint|version|usage|limit|size|format|policy|field|header|param|strength|hash"
    r"|reset|changed|updated|created|valid|required|min|max|rules|label|placeholder|enabled"
    r"|lifetime|duration|timeout|location|source|method|style|scope|scopes|ref|refs|reference"
    r"|arn|store|manager|provider|backend|engine|mount|vault|rotation|rotated|issuer|audience)$"
)
_NAME = re.compile(r"[A-Za-z0-9_.-]{0,128}")
# What comes before a generic "...key" name that makes it not secret.
_PUBLIC_KEY_NAME = re.compile(
    r"(?:public|cache|sort|partition|idempotency|primary|foreign|object|routing|dedup|lookup"
    r"|group|message|event|row|hash|map|dict|range|shard|foreign|composite|unique|index|s3"
    r"|bucket|file|hot|short|keyboard|press|up|down)[_.-]?$"
)
# The shortest text a rule can match, for the length gate; Python's own parser
# knows it (the module moved in 3.11).
try:  # pragma: no cover - the branch depends on the Python version
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse


def _min_width(pattern: str) -> int:
    try:
        low = _sre_parse.parse(pattern).getwidth()[0]
    except Exception:  # pragma: no cover - a parser change must not break loading
        return 0
    return int(low)


def entropy(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character (0.0 for the empty string)."""
    if not text:
        return 0.0
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in Counter(text).values())


def is_placeholder(value: str) -> bool:
    """Tell whether ``value`` is a stand-in rather than a secret (``null``, ``${X}``, ``****``)."""
    stripped = value.strip()
    return stripped.lower() in _PLACEHOLDER_WORDS or _PLACEHOLDER.fullmatch(stripped) is not None


@attrs.frozen
class Finding:
    """One secret found in a text: where it is and which rule found it."""

    start: int
    end: int
    rule: str


@attrs.frozen(repr=False)
class Rule:
    """One secret format: a regex gated by keywords, with floors on what it matched.

    ``generic`` rules (keyword conventions rather than a provider's format) are
    applied with extra care: names that describe a secret (``token_type``) and
    values that are code or paths are left alone, and a provider rule's label
    wins where both match.
    """

    id: str
    description: str
    keywords: tuple[str, ...]
    regex: re.Pattern[str]
    min_length: int = 1
    min_entropy: float = 0.0
    require_digit: bool = False
    generic: bool = False
    width: int = attrs.field(init=False)
    groups: tuple[int, ...] = attrs.field(init=False)

    @width.default
    def _width(self) -> int:
        return _min_width(self.regex.pattern)

    @groups.default
    def _groups(self) -> tuple[int, ...]:
        index = self.regex.groupindex
        return tuple(index[name] for name in _SECRET_GROUPS if name in index)

    def __repr__(self) -> str:
        return f"Rule({self.id!r})"

    def findings(self, text: str) -> Iterator[Finding]:
        """Yield the secrets this rule finds in ``text`` (all checks applied)."""
        for match in self.regex.finditer(text):
            group = next((g for g in self.groups if match.start(g) >= 0), 0)
            start, end = match.span(group)
            if self.accepts(text, match, text[start:end], group):
                yield Finding(start, end, self.id)

    def accepts(self, text: str, match: re.Match[str], secret: str, group: int) -> bool:
        """Tell whether a match is a secret rather than a placeholder or a look-alike."""
        if len(secret) < self.min_length or is_placeholder(secret):
            return False
        if self.require_digit and not any(ch.isdigit() for ch in secret):
            return False
        if self.min_entropy and entropy(secret) < self.min_entropy:
            return False
        if self.generic:
            return self._generic_accepts(text, match, secret, group)
        return True

    def _generic_accepts(self, text: str, match: re.Match[str], secret: str, group: int) -> bool:
        name = _NAME.match(text, match.start())
        if name is not None and _METADATA_NAME.search(name.group().lower()):
            return False
        start = match.start()
        if self.id == "key-assignment" and _PUBLIC_KEY_NAME.search(
            text[max(0, start - 24) : start].lower()
        ):
            return False
        if group and match.re.groupindex.get("bare") == group:
            # Unquoted: code (a call, an index, a dotted name), a template or a path.
            if text[match.end(group) : match.end(group) + 1] in ("(", "[", ".", "{"):
                return False
            if _NOT_A_VALUE.fullmatch(secret):
                return False
        return True


class RuleSet:
    """Rules with their prefilter: finds secrets in text, provider rules first.

    Immutable after construction and safe to share between threads.
    """

    # Texts are offered to the rules that fit in them; these bounds group texts
    # by length so that each group has a keyword search of its own.
    _BUCKETS = (16, 32, 64, 128, 256)

    def __init__(self, rules: Iterable[Rule]) -> None:
        ordered = sorted(rules, key=lambda rule: rule.generic)  # stable: providers first
        ids = [rule.id for rule in ordered]
        if len(set(ids)) != len(ids):
            raise ValueError("secret rule ids must be unique")
        self.rules: tuple[Rule, ...] = tuple(ordered)
        self._priority = {rule.id: rank for rank, rule in enumerate(self.rules)}
        self.min_width = min((rule.width for rule in self.rules), default=1)
        buckets = [self._bucket(limit) for limit in self._BUCKETS]
        # The bucket of every short length, looked up by index on the hot path.
        self._by_length = [
            next(b for limit, b in zip(self._BUCKETS, buckets, strict=True) if size < limit)
            for size in range(self._BUCKETS[-1])
        ]
        self._largest = self._bucket(sys.maxsize)

    def _bucket(self, limit: int) -> tuple[re.Pattern[str] | None, tuple[tuple[str, Rule], ...]]:
        fitting = [rule for rule in self.rules if rule.width <= limit]
        keywords = {kw for rule in fitting for kw in rule.keywords}
        trigger = re.compile(_trie_pattern(keywords)) if keywords else None
        pairs = tuple((kw, rule) for rule in fitting for kw in rule.keywords)
        return trigger, pairs

    def __repr__(self) -> str:
        return f"RuleSet({len(self.rules)} rules)"

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, text: str) -> list[Rule]:
        """The rules whose keywords occur in ``text`` and that fit in its length."""
        size = len(text)
        if size < self.min_width:
            return []
        by_length = self._by_length
        trigger, pairs = by_length[size] if size < len(by_length) else self._largest
        if trigger is None:
            return []
        lowered = text.lower()
        if trigger.search(lowered) is None:
            return []
        chosen: dict[str, Rule] = {}
        for keyword, rule in pairs:
            if rule.id not in chosen and rule.width <= size and keyword in lowered:
                chosen[rule.id] = rule
        return list(chosen.values())

    def findings(self, text: str) -> list[Finding]:
        """Every secret in ``text``, merged where findings overlap, in order of position."""
        # candidates() inlined up to the keyword search: most texts stop there.
        size = len(text)
        if size < self.min_width:
            return []
        by_length = self._by_length
        trigger = (by_length[size] if size < len(by_length) else self._largest)[0]
        if trigger is None or trigger.search(text.lower()) is None:
            return []
        found = [f for rule in self.candidates(text) for f in rule.findings(text)]
        if len(found) < 2:
            return found
        priority = self._priority
        found.sort(key=lambda f: (f.start, priority[f.rule]))
        merged = [found[0]]
        for finding in found[1:]:
            last = merged[-1]
            if finding.start < last.end:
                if finding.end > last.end:
                    merged[-1] = Finding(last.start, finding.end, last.rule)
            else:
                merged.append(finding)
        return merged


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex matching any of ``words``, with shared prefixes factored out.

    ``re`` tries the branches of a flat alternation one by one at every
    position; as a trie, each position costs a few character tests.
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a word

    def pattern(node: dict[str, Any]) -> str:
        if "" in node:  # a shorter word ends here: the rest is optional
            return ""
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items())]
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return pattern(trie)


def _rule_from(entry: dict[str, Any], where: str) -> Rule:
    try:
        keywords = tuple(str(kw).lower() for kw in entry["keywords"])
        if not keywords or not all(keywords):
            raise ValueError("keywords must be non-empty strings")
        return Rule(
            id=str(entry["id"]),
            description=str(entry.get("description", "")),
            keywords=keywords,
            regex=re.compile(entry["regex"]),
            min_length=int(entry.get("min_length", 1)),
            min_entropy=float(entry.get("min_entropy", 0.0)),
            require_digit=bool(entry.get("require_digit", False)),
            generic=bool(entry.get("generic", False)),
        )
    except (KeyError, TypeError, ValueError, re.error) as exc:
        name = entry.get("id", "?") if isinstance(entry, dict) else "?"
        raise ValueError(f"bad secret rule {name!r} in {where}: {exc}") from exc


def load_rules(text: str, *, where: str = "<rules>") -> list[Rule]:
    """Parse rules from TOML text (``[[rule]]`` tables; see ``secret_rules.toml``).

    Raises ``ValueError`` naming the rule and the problem when an entry is bad.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where} is not valid TOML: {exc}") from exc
    return [_rule_from(entry, where) for entry in data.get("rule", [])]


_default: RuleSet | None = None


def default_rules() -> RuleSet:
    """The rule set shipped with auditaspect (loaded once, on first use)."""
    global _default
    if _default is None:
        text = resources.files(__package__).joinpath(RULES_FILE).read_text(encoding="utf-8")
        _default = RuleSet(load_rules(text, where=RULES_FILE))
    return _default
