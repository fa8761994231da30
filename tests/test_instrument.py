"""instrument(): auditing classes and modules the application does not own."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from auditaspect import instrument, instrument_from_toml, uninstrument
from auditaspect.testing import capture_events

THIRD_PARTY = '''
class Billing:
    """Someone else's service: no audit code, no decorators."""

    def __init__(self):
        self.refunds = []

    def refund(self, invoice, amount=0):
        self.refunds.append(invoice)
        return "refunded"

    @classmethod
    def rates(cls, currency):
        return {"EUR": 1.0}

    @staticmethod
    def round(value):
        return round(value, 2)

    async def settle(self, invoice):
        return invoice

class PremiumBilling(Billing):
    pass

def purge(entity_type, name):
    return [name]
'''


@pytest.fixture
def vendor(tmp_path, monkeypatch):
    """A module written to disk by the test, imported like a third-party package."""
    name = f"vendor_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(THIRD_PARTY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_instrument_a_class_and_restore_it(vendor):
    """Methods of every kind get audited; uninstrument restores the originals."""
    module = __import__(vendor)
    originals = dict(vars(module.Billing))
    instrument(
        module.Billing,
        {
            "refund": ("config_changed", lambda call: {"invoice": call.arguments["invoice"]}),
            "rates": "correction_applied",
            "round": "resource_modified",
            "settle": "plan_applied",
        },
    )
    billing = module.Billing()
    with capture_events() as events:
        assert "refunded" == billing.refund("inv-1", amount=5)
        assert {"EUR": 1.0} == module.Billing.rates("EUR")
        assert 1.23 == module.Billing.round(1.234)
        assert "inv-2" == asyncio.run(billing.settle("inv-2"))
    assert [
        ("config_changed", {"invoice": "inv-1"}),
        ("correction_applied", {"currency": "EUR"}),
        ("resource_modified", {"value": 1.234}),
        ("plan_applied", {"invoice": "inv-2"}),
    ] == [(e.event_type, dict(e.details)) for e in events]
    assert ["refund", "rates", "round", "settle"] == uninstrument(module.Billing)
    assert originals == dict(vars(module.Billing))
    with capture_events() as events:
        billing.refund("inv-3")
    assert [] == list(events)
    assert [] == uninstrument(module.Billing)


def test_inherited_method_is_instrumented_on_the_subclass_only(vendor):
    """Instrumenting an inherited method wraps it on the subclass; removal uncovers the base."""
    module = __import__(vendor)
    instrument(module.PremiumBilling, {"refund": "config_changed"})
    with capture_events() as events:
        module.Billing().refund("a")
        module.PremiumBilling().refund("b")
    assert [{"invoice": "b", "amount": 0}] == [dict(e.details) for e in events]
    uninstrument(module.PremiumBilling)
    assert "refund" not in vars(module.PremiumBilling)


def test_dotted_path_is_patched_when_imported(vendor):
    """A 'module:Class' path whose module is not imported yet is patched on import."""
    assert vendor not in sys.modules
    instrument(f"{vendor}:Billing", {"refund": "config_changed"})
    instrument(vendor, {"purge": "entity_deleted"})
    module = __import__(vendor)
    with capture_events() as events:
        module.Billing().refund("x")
        module.purge("project", "old")
    assert ["config_changed", "entity_deleted"] == [e.event_type for e in events]
    assert ["refund"] == uninstrument(f"{vendor}:Billing")
    assert ["purge"] == uninstrument(vendor)


def test_pending_path_can_be_cancelled(vendor):
    """uninstrument() of a path still waiting for its import forgets it."""
    instrument(f"{vendor}:Billing", {"refund": "config_changed"})
    assert [] == uninstrument(f"{vendor}:Billing")
    module = __import__(vendor)
    with capture_events() as events:
        module.Billing().refund("x")
    assert [] == list(events)
    assert [] == uninstrument("not_imported_anywhere:Thing")


def test_mistakes_are_clear_errors(vendor):
    """Unknown methods, double instrumentation and bad mappings fail with a reason."""
    module = __import__(vendor)
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        instrument(module.Billing, {"nope": "x"})
    with pytest.raises(TypeError, match="non-empty mapping"):
        instrument(module.Billing, {})
    with pytest.raises(TypeError, match="extractor"):
        instrument(module.Billing, {"refund": ("x", "not callable")})
    with pytest.raises(TypeError, match="event_type"):
        instrument(module.Billing, {"refund": ""})
    with pytest.raises(AttributeError, match="no 'Nope'"):
        instrument(f"{vendor}:Nope", {"refund": "x"})
    with pytest.raises(ValueError, match="bad target"):
        instrument(":Billing", {"refund": "x"})
    instrument(module.Billing, {"refund": "x"})
    with pytest.raises(ValueError, match="already instrumented"):
        instrument(module.Billing, {"refund": "y"})
    uninstrument(module.Billing)


def test_instrument_from_toml(vendor, tmp_path):
    """A TOML file lists targets, methods, event types and extractors."""
    (tmp_path / f"{vendor}_audit.py").write_text(
        "def refund_details(call):\n"
        "    return {'invoice': call.arguments['invoice'], 'from': 'toml'}\n",
        encoding="utf-8",
    )
    config = tmp_path / "audit.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[instrument]]
            target = "{vendor}:Billing"

            [instrument.methods]
            refund = ["config_changed", "{vendor}_audit:refund_details"]
            round = "resource_modified"

            [[instrument]]
            target = "{vendor}"
            methods = {{ purge = "entity_deleted" }}
            """
        ),
        encoding="utf-8",
    )
    assert [f"{vendor}:Billing", vendor] == instrument_from_toml(str(config))
    module = __import__(vendor)
    with capture_events() as events:
        module.Billing().refund("inv-9")
        module.purge("project", "p")
    assert [{"invoice": "inv-9", "from": "toml"}, {"entity_type": "project", "name": "p"}] == [
        dict(e.details) for e in events
    ]
    uninstrument(f"{vendor}:Billing")
    uninstrument(vendor)
    sys.modules.pop(f"{vendor}_audit", None)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("x = 1\n", "expected \\[\\[instrument\\]\\]"),
        ('[[instrument]]\ntarget = "m:C"\n', "needs target"),
        (
            '[[instrument]]\ntarget = "m:C"\nmethods = { f = ["t", "os"] }\n',
            "package.module:function",
        ),
        ('[[instrument]]\ntarget = "m:C"\nmethods = { f = ["t", "os:sep"] }\n', "not callable"),
    ],
)
def test_bad_toml_is_a_clear_error(tmp_path: Path, text, match):
    """A malformed TOML mapping says what is expected."""
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises((ValueError, TypeError), match=match):
        instrument_from_toml(str(config))
