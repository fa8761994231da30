"""Property-based tests of the whole pipeline on odd input (hypothesis)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditaspect import AuditEvent, PeeweeSink, audit_context, audited, signals, verify
from secret_samples import SPECS, make

SECRETS = {
    "password": "Fz-pass-7Qx",
    "api_key": "Fz-apikey-3Kd",
    "client_secret": "Fz-client-9Wm",
    "Authorization": "Fz-auth-5Tb",
}
LOOKALIKES = [
    "Bearer FzbearerTOKEN12345",
    "sk-live-FzProviderKey0123456789",
    "ghp_FzGithubToken01234567890123",
    "AKIAFZAWSKEY12345678",
    "postgres://u:FzUrlPass99@h/db",
    "eyJhbGciOiJIUzI1NiJ9.eyJGeiI6IkZ6In0.FzJwtSignature",
]
NEEDLES = [v.encode() for v in SECRETS.values()] + [
    b"FzbearerTOKEN12345",
    b"FzProviderKey0123456789",
    b"FzGithubToken01234567890123",
    b"AKIAFZAWSKEY12345678",
    b"FzUrlPass99",
    b"FzJwtSignature",
]

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.sampled_from(LOOKALIKES),
    st.sampled_from(["\x00nul", "\ud800surrogate", "é ü 中文", "x" * 300]),
)
tree = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(list(SECRETS)), st.integers()),
            children,
            max_size=4,
        ),
        st.dictionaries(st.sampled_from(list(SECRETS)), st.sampled_from(list(SECRETS.values()))),
    ),
    max_leaves=30,
)


@audited("fuzzed", lambda call: call.arguments["payload"], on_error="fuzz_failed")
def operation(payload: Any, fail: bool) -> None:
    if fail:
        raise ValueError(f"failed with password={SECRETS['password']} and {LOOKALIKES[1]}")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=st.dictionaries(st.text(max_size=8), tree, max_size=5), fail=st.booleans())
def test_no_secret_reaches_receivers_or_database_bytes(tmp_path: Path, payload, fail):
    """Random nested details: nothing secret reaches a receiver, the file or its WAL."""
    seen: list[AuditEvent] = []
    receiver = lambda sender, *, event: seen.append(event)  # noqa: E731
    signals.audit_event.connect(receiver)
    db = tmp_path / "fuzz.db"
    try:
        with PeeweeSink(f"sqlite:///{db}") as sink:
            try:
                operation(payload, fail)
            except ValueError:
                assert fail
            blobs = [p.read_bytes() for p in tmp_path.glob("fuzz.db*")]
            written = sink.stats.written
    finally:
        signals.audit_event.disconnect(receiver)
    assert 1 == written
    [event] = seen
    text = json.dumps(event.to_dict(), ensure_ascii=False).encode("utf-8", "replace")
    for needle in NEEDLES:
        assert needle not in text
        for blob in blobs:
            assert needle not in blob
    assert verify(f"sqlite:///{db}").ok


def test_a_cyclic_huge_deep_payload_never_raises_into_the_caller(sink):
    """Cycles, a 5 MB string and 5,000 levels of nesting are cut, not raised."""
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    deep: Any = 0
    for _ in range(5000):
        deep = {"d": deep}
    operation({"cycle": cyclic, "huge": "y" * 5_000_000, "deep": deep}, False)
    assert 1 == sink.stats.written


@audited("provider_probe", on_error="provider_probe_failed")
def probe(payload: Any, message: str) -> None:
    if message:
        raise RuntimeError(message)


placement = st.sampled_from(["value", "key", "sentence", "error_repr", "actor", "deep_list"])


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=st.sampled_from(SPECS), seed=st.integers(0, 2**32), where=placement)
def test_planted_provider_secret_never_reaches_receivers_or_database_bytes(
    tmp_path: Path, spec, seed, where
):
    """A generated secret of any rule, planted in details, keys, error text or the actor, never
    reaches a receiver, the SQLite file or its WAL."""
    sample, secret = make(spec[1], random.Random(seed))
    payload: dict[str, Any] = {"note": "ok"}
    message = ""
    actor = "alice"
    if where == "value":
        payload["note"] = sample
    elif where == "key":
        payload[sample] = 1
    elif where == "sentence":
        payload["nested"] = {"text": f"deploy failed with {sample} at step 3"}
    elif where == "error_repr":
        message = f"invalid client config: {{'api_key': {sample!r}}}"
    elif where == "actor":
        actor = f"svc {sample}"
    else:
        payload["deep"] = [[{"a": [sample]}]]
    seen: list[AuditEvent] = []
    receiver = lambda sender, *, event: seen.append(event)  # noqa: E731
    signals.audit_event.connect(receiver)
    db = tmp_path / f"plant-{seed}.db"
    try:
        with PeeweeSink(f"sqlite:///{db}"), audit_context(actor=actor):
            try:
                probe(payload, message)
            except RuntimeError:
                assert message
            blobs = [p.read_bytes() for p in tmp_path.glob(f"plant-{seed}.db*")]
    finally:
        signals.audit_event.disconnect(receiver)
    [event] = seen
    needle = secret.encode("utf-8")
    assert needle not in json.dumps(event.to_dict(), ensure_ascii=False).encode("utf-8")
    for blob in blobs:
        assert needle not in blob
