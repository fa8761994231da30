"""Redactor: secret keys, secret-looking values, JSON safety and the size cap."""

from __future__ import annotations

import enum
import json
import math
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditaspect import Redactor, token_prefix
from auditaspect.redaction import (
    CYCLE_MARKER,
    DEFAULT_MASK,
    DEPTH_MARKER,
    TokenPrefix,
    get_redactor,
    set_redactor,
)

M = DEFAULT_MASK
R = Redactor()

SECRET_VALUES = {
    "bearer": "Bearer abcdefghijklmnop1234567890",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9Pl",
    "pem": (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc==\n-----END RSA PRIVATE KEY-----"
    ),
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "aws_session": "ASIAY34FZKBOKMUTVV7A",
    "sk_dash": "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "sk_live": "sk_live_51Habcdefghijklmnopqrst",
    "sk_live_dash": "sk-live-0123456789abcdefghij",
    "ghp": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "github_pat": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "slack": "xoxb-123456789012-abcdefghijklmno",
}
SECRET_PARTS = {
    "bearer": "abcdefghijklmnop1234567890",
    "jwt": "dozjgNryP4J3jVmNHl0w5N",
    "pem": "MIIEowIBAAKCAQEA7",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "aws_session": "ASIAY34FZKBOKMUTVV7A",
    "sk_dash": "abcdefghijklmnopqrstuvwxyz012345",
    "sk_live": "51Habcdefghijklmnopqrst",
    "sk_live_dash": "0123456789abcdefghij",
    "ghp": "16C7e42F292c6912E7710c838347Ae178B4a",
    "github_pat": "11ABCDEFG0123456789",
    "slack": "123456789012-abcdefghijklmno",
}


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "db_password",
        "passwd",
        "secret",
        "client_secret",
        "token",
        "refresh_token",
        "api_key",
        "API-Key",
        "apiKey",
        "apikey",
        "Authorization",
        "cookie",
        "Set-Cookie",
        "private_key",
        "credential",
        "credentials",
        "aws_access_key_id",
        "pwd",
    ],
)
def test_values_under_secret_keys_are_masked_at_any_depth(key):
    """A secret-like key masks its value wherever it sits, whatever the value."""
    details = {"outer": [{"inner": {key: {"nested": "hunter2"}}}], key: 42}
    out = R.redact(details)
    assert M == out[key]
    assert M == out["outer"][0]["inner"][key]


@pytest.mark.parametrize("key", ["user", "plan_id", "key", "session_id", "author", "reason"])
def test_ordinary_keys_are_kept(key):
    """Keys that are not secret-like keep their values."""
    assert {key: "value"} == R.redact({key: "value"})


@pytest.mark.parametrize("name", sorted(SECRET_VALUES))
def test_secret_looking_values_are_masked_under_any_key(name):
    """Secret-looking strings are masked even under an innocent key."""
    text = f"note: {SECRET_VALUES[name]} end"
    out = R.redact({"note": text, "list": [text]})
    assert SECRET_PARTS[name] not in out["note"]
    assert "[REDACTED:" in out["note"]
    assert out["note"].endswith(" end")
    assert SECRET_PARTS[name] not in out["list"][0]


def test_url_password_is_masked_and_the_rest_kept():
    """scheme://user:password@host keeps scheme, user and host."""
    assert "postgresql://bob:[REDACTED:url-password]@db.internal:5432/app" == R.redact_text(
        "postgresql://bob:hunter2@db.internal:5432/app"
    )


def test_secret_pairs_in_free_text_are_masked():
    """password=..., token: ... inside a message lose their value."""
    out = R.redact_text("login failed: password=hunter2 token: 'abc123' api_key=\"k9x2f7q1\"")
    for secret in ("hunter2", "abc123", "k9x2f7q1"):
        assert secret not in out


def test_short_sk_like_words_are_not_masked():
    """'sk-' followed by fewer than 16 characters is ordinary text."""
    assert "task sk-short done" == R.redact_text("task sk-short done")


def test_token_prefix_shows_the_start_only():
    """token_prefix keeps at most keep characters and never more than a quarter."""
    assert "sk-ab…" == token_prefix("sk-abcdefghijklmnopqrstuvwxyz")
    assert "a…" == token_prefix("abcdefg")
    assert "…" == token_prefix("")
    with pytest.raises(ValueError, match="keep"):
        token_prefix("abc", keep=-1)


def test_token_prefix_survives_secret_keys_and_repeated_redaction():
    """A TokenPrefix is kept under 'token_prefix' through any number of passes."""
    details = {"token_prefix": token_prefix("sk-live-abcdefghijklmnopqrstuvwxyz")}
    once = R.redact(details)
    assert {"token_prefix": "sk-li…"} == R.redact(once)
    assert isinstance(once["token_prefix"], TokenPrefix)


def test_is_secret_key_is_cached_and_consistent():
    """Asking twice gives the same answer."""
    redactor = Redactor()
    assert redactor.is_secret_key("X-Api-Key") is True
    assert redactor.is_secret_key("X-Api-Key") is True
    assert redactor.is_secret_key("color") is False


def test_configuration_extra_keys_patterns_and_mask():
    """Extra keys and patterns are masked with the configured mask text."""
    redactor = Redactor(
        extra_keys=["ssn_number", "Pin-Code"], extra_patterns=[r"ACME-\d{6}"], mask="###"
    )
    out = redactor.redact({"ssn_number": "1", "pincode": "2", "note": "id ACME-123456 ok"})
    assert {"ssn_number": "###", "pincode": "###", "note": "id ### ok"} == out
    assert "###" == redactor.mask
    assert None is redactor.finding_mask
    assert repr(redactor).startswith("Redactor(mask='###', finding_mask=None, rules=")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_details_bytes": 10}, "max_details_bytes"), ({"extra_keys": ["--"]}, "extra_keys")],
)
def test_bad_configuration_is_a_clear_error(kwargs, message):
    """Nonsense settings are refused with the setting's name."""
    with pytest.raises(ValueError, match=message):
        Redactor(**kwargs)


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Opaque:
    def __str__(self) -> str:
        return "Opaque(password=hunter2)"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


class BrokenMapping(dict[str, Any]):
    def items(self):  # type: ignore[override]
        raise RuntimeError("broken")


def test_non_json_values_get_a_safe_textual_form():
    """Dates, enums, bytes, sets, Decimals, UUIDs and objects become JSON-safe."""
    uid = uuid.UUID(int=1)
    details = {
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "day": date(2026, 1, 2),
        "color": Color.RED,
        "level": Level.HIGH,
        "raw": b"\x00\x01secret",
        "tags": {"b", "a"},
        "mixed": frozenset({1, "x"}),
        "amount": Decimal("1.10"),
        "uid": uid,
        "obj": Opaque(),
        "bad": Unprintable(),
        "nan": math.nan,
        "inf": -math.inf,
        "tuple": (1, 2),
        7: "int key",
    }
    out = R.redact(details)
    json.dumps(out, allow_nan=False)  # must not raise
    assert "2026-01-02T03:04:05+00:00" == out["when"]
    assert "2026-01-02" == out["day"]
    assert "red" == out["color"]
    assert 3 == out["level"]
    assert "<8 bytes>" == out["raw"]
    assert ["a", "b"] == out["tags"]
    assert 2 == len(out["mixed"])
    assert "1.10" == out["amount"]
    assert str(uid) == out["uid"]
    assert "hunter2" not in out["obj"]
    assert "<unprintable Unprintable>" == out["bad"]
    assert "nan" == out["nan"]
    assert "-inf" == out["inf"]
    assert [1, 2] == out["tuple"]
    assert "int key" == out["7"]


def test_broken_mapping_is_marked_not_raised():
    """A mapping whose items() raises becomes a marker."""
    assert {"inner": {"<unreadable>": "RuntimeError"}} == R.redact({"inner": BrokenMapping()})


def test_cycles_are_marked():
    """A structure that contains itself is cut with a visible marker."""
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    items: list[Any] = [1]
    items.append(items)
    out = R.redact({"loop": loop, "items": items})
    assert CYCLE_MARKER == out["loop"]["self"]
    assert [1, CYCLE_MARKER] == out["items"]


def test_shared_but_acyclic_values_are_not_cycles():
    """The same list twice side by side is not a cycle."""
    shared = [1, 2]
    assert {"a": [1, 2], "b": [1, 2]} == R.redact({"a": shared, "b": shared})


def test_deep_nesting_is_cut_without_recursion_error():
    """10,000 levels of nesting end in a depth marker, not a RecursionError."""
    deep: Any = "bottom"
    for _ in range(10_000):
        deep = [deep]
    out = R.redact({"deep": deep})
    text = json.dumps(out)
    assert DEPTH_MARKER in text
    assert "bottom" not in text


def test_oversized_details_are_cut_with_a_marker():
    """Details above max_details_bytes become a marked, capped preview."""
    redactor = Redactor(max_details_bytes=1024)
    out = redactor.redact({"blob": "x" * 10_000})
    assert out["_truncated"] is True
    assert out["original_bytes"] > 10_000
    assert len(json.dumps(out)) <= 1024
    small = redactor.redact({"blob": "x" * 100})
    assert {"blob": "x" * 100} == small


def test_details_near_the_cap_are_measured_exactly():
    """Escaped characters count as the bytes they take, not as characters."""
    redactor = Redactor(max_details_bytes=1024)
    out = redactor.redact({"ctl": "\x01" * 300})  # 300 chars, 1,800 bytes of JSON
    assert out["_truncated"] is True


def test_nul_and_lone_surrogates_become_replacement_characters():
    """Text that PostgreSQL or UTF-8 cannot store is made storable."""
    assert "a\ufffdb\ufffdc" == R.redact_text("a\x00b\ud800c")
    assert "é ok" == R.redact_text("é ok")


@pytest.mark.parametrize(
    "adversarial",
    [
        "eyJ" * 700_000,
        "eyJa.eyJ" * 250_000,
        "://a:" * 400_000,
        "-----BEGIN PRIVATE KEY-----" * 80_000,
        "password: " * 200_000,
        "bearer " * 300_000,
        "sk-" * 700_000,
        "A" * 2_000_000,
    ],
    ids=["jwt", "jwt-dots", "url", "pem", "pairs", "bearer", "sk", "letters"],
)
def test_multi_megabyte_adversarial_strings_are_scanned(adversarial):
    """Every pattern stays linear: 2 MB of each trigger string is scanned in passing.

    (No timing assertion: a catastrophic pattern shows up as this test hanging.)
    """
    out = R.redact_text(adversarial)
    assert isinstance(out, str)


def test_set_redactor_replaces_the_active_one():
    """set_redactor returns the previous redactor; non-redactors are refused."""
    custom = Redactor(mask="***")
    previous = set_redactor(custom)
    assert custom is get_redactor()
    assert custom is set_redactor(previous)
    assert previous is get_redactor()
    with pytest.raises(TypeError, match="Redactor"):
        set_redactor("nope")  # type: ignore[arg-type]


SECRET_KEY_NAMES = ["password", "api_key", "Authorization", "client_secret", "token", "cookie"]
PLANTED = list(SECRET_VALUES.values())

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(PLANTED),
)
details_strategy = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=10), st.sampled_from(SECRET_KEY_NAMES)), children, max_size=4
        ),
    ),
    max_leaves=25,
)


def _under_secret_keys(value: Any) -> list[Any]:
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if R.is_secret_key(str(key)):
                found.append(item)
            found.extend(_under_secret_keys(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_under_secret_keys(item))
    return found


@settings(max_examples=200, deadline=None)
@given(details=st.dictionaries(st.text(max_size=10), details_strategy, max_size=5))
def test_property_no_planted_secret_survives(details):
    """For any nested shape, no planted secret and no secret-keyed value survives."""
    out = R.redact(details)
    text = json.dumps(out, allow_nan=False, ensure_ascii=False)
    for name, part in SECRET_PARTS.items():
        assert part not in text, name
    assert all(value == M for value in _under_secret_keys(out))
    assert out == R.redact(out)  # idempotent


@settings(max_examples=200, deadline=None)
@given(
    details=st.dictionaries(st.text(max_size=10), details_strategy, max_size=5),
    depth=st.integers(min_value=0, max_value=34),
)
def test_property_the_quick_walk_is_the_guarded_walk(details, depth):
    """The first walk (no cycle guard) gives what the guarded walk gives: the
    same details, size estimate and float flag; past MAX_DEPTH it hands over."""
    from auditaspect.redaction import _Deep, _Walk

    for _ in range(depth):  # some of them nested past the limit
        details = {"k": [details]}
    redactor = Redactor()
    guarded = _Walk(redactor, cycles=set())
    expected = guarded.mapping(details, 0)
    quick = _Walk(redactor)
    try:
        got = quick.mapping(details, 0)
    except _Deep:
        assert DEPTH_MARKER in json.dumps(expected)  # it was that deep
        return
    assert (expected, guarded.size, guarded.floats) == (got, quick.size, quick.floats)
    assert (expected, not guarded.floats) == redactor.redact_checked(details)


class Label(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Items(list[Any]):
    pass


def test_subclasses_of_plain_types_become_plain_values():
    """str/int/float/list subclasses and read-only mappings are stored as plain JSON."""
    from types import MappingProxyType

    out = R.redact(
        {
            "label": Label("ok"),
            "count": Count(3),
            "ratio": Ratio(0.5),
            "items": Items([1]),
            "proxy": MappingProxyType({"password": "x", "a": 1}),
            "negzero": -0.0,
            "huge": 2**70,
        }
    )
    assert {
        "label": "ok",
        "count": 3,
        "ratio": 0.5,
        "items": [1],
        "proxy": {"password": M, "a": 1},
        "negzero": 0.0,
        "huge": str(2**70),
    } == out
    assert type(out["label"]) is str
    assert type(out["count"]) is int


def test_odd_containers_are_cut_at_depth_and_cycles():
    """Sets and mapping proxies obey the cycle and depth guards too."""
    from types import MappingProxyType

    inner: dict[str, Any] = {}
    inner["self"] = MappingProxyType(inner)
    out = R.redact({"x": inner})
    assert {"self": {"self": CYCLE_MARKER}} == out["x"]
    deep: Any = frozenset({1})
    for _ in range(40):
        deep = (deep,)
    assert DEPTH_MARKER in json.dumps(R.redact({"d": deep}))


def test_long_text_forms_are_shortened():
    """An object whose str() is huge is stored as its first kilobyte."""

    class Big:
        def __str__(self) -> str:
            return "b" * 5000

    out = R.redact({"big": Big()})
    assert out["big"].endswith("…")
    assert len(out["big"]) == 1025


def test_caches_stay_bounded():
    """Key and clean-text caches stop growing at their limits."""
    redactor = Redactor()
    for i in range(5000):
        redactor.is_secret_key(f"key{i}")
    for i in range(9000):
        redactor.redact_text(f"value {i}")
    assert len(redactor._key_cache) <= 4096
    assert len(redactor._clean) <= 8192


def test_details_just_under_the_cap_are_kept():
    """Details that look big by estimate but fit the cap exactly are not cut."""
    redactor = Redactor(max_details_bytes=1024)
    details = {"a": "x" * 600}
    assert details == redactor.redact(details)


def test_huge_strings_are_cut_before_scanning_and_never_leak():
    """A string far above the cap is scanned only up to the cut; nothing secret survives."""
    secret = "sk-live-" + "Q" * 30
    blob = "x" * 40_000 + secret + "y" * 5_000_000 + secret
    out = R.redact({"blob": blob})
    assert out["_truncated"] is True
    assert out["original_bytes"] > 5_000_000
    assert "QQQQQQQQQQ" not in json.dumps(out)


GITHUB_TOKEN = "ghp_" + "Q7x" * 12


def test_logging_filter_redacts_message_args_extras_and_tracebacks(tmp_path):
    """RedactingFilter on a real file handler: no secret from any part of a record is written."""
    import logging

    from auditaspect.redaction import RedactingFilter

    path = tmp_path / "app.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(user)s %(api_key)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redacting_filter")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(
            "login for %s with password=%s",
            "bob",
            "hunter2x",
            extra={"user": f"bob {GITHUB_TOKEN}", "api_key": "k-123456"},
        )
        try:
            raise RuntimeError(f"bad config: {{'api_key': '{GITHUB_TOKEN}'}}")
        except RuntimeError:
            logger.exception("failed: %d%%", 50, extra={"user": "u", "api_key": "x"})
        # A bad format string: kept, with a marker instead of its text.
        logger.error("broken %s %s", "only-one", extra={"user": "u", "api_key": "x"})
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = path.read_text(encoding="utf-8")
    for secret in ("hunter2x", GITHUB_TOKEN, "k-123456"):
        assert secret not in text
    assert "login for bob with password=[REDACTED:password-assignment]" in text
    assert "Traceback" in text
    assert "failed: 50%" in text
    assert "<unformattable log message: TypeError>" in text


def test_structlog_processor_redacts_and_keeps_other_values():
    """StructlogRedactor masks strings and secret keys at any depth; other values pass through."""
    import structlog

    from auditaspect.redaction import StructlogRedactor

    marker = object()
    with structlog.testing.capture_logs(processors=[StructlogRedactor()]) as logs:
        structlog.get_logger().info(
            f"pushed with {GITHUB_TOKEN}",
            password="hunter2x",
            request={"headers": {"Authorization": "Bearer abc123def456"}, "n": 3},
            items=[f"token={GITHUB_TOKEN}", ("a", 1)],
            obj=marker,
        )
    (entry,) = logs
    assert "pushed with [REDACTED:github-pat]" == entry["event"]
    assert "[REDACTED]" == entry["password"]
    assert {"headers": {"Authorization": "[REDACTED]"}, "n": 3} == entry["request"]
    assert ["token=[REDACTED:github-pat]", ("a", 1)] == entry["items"]
    assert marker is entry["obj"]


def test_structlog_processor_in_a_real_pipeline(capsys):
    """Configured with format_exc_info and JSONRenderer, a traceback's secret is masked too."""
    import structlog

    from auditaspect.redaction import StructlogRedactor

    structlog.configure(
        processors=[
            structlog.processors.format_exc_info,
            StructlogRedactor(),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        try:
            raise ValueError(f"token {GITHUB_TOKEN}")
        except ValueError:
            structlog.get_logger().exception("boom")
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().out)
    assert GITHUB_TOKEN not in json.dumps(line)
    assert "[REDACTED:github-pat]" in line["exception"]
    assert "StructlogRedactor(None)" == repr(StructlogRedactor())
