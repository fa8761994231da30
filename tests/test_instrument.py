"""instrument(): auditing classes and modules the application does not own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditaspect import instrument, instrument_from_toml, uninstrument
from auditaspect.instrument import InstrumentWarning, never_applied
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
    # By id: a dict holding the functions would itself be a reference instrument() warns about.
    originals = {name: id(value) for name, value in vars(module.Billing).items()}
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
    assert originals == {name: id(value) for name, value in vars(module.Billing).items()}
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
    """uninstrument() of a path still waiting for its import forgets it, saying it never applied."""
    instrument(f"{vendor}:Billing", {"refund": "config_changed"})
    with pytest.warns(InstrumentWarning, match=f"never applied: {vendor} was never imported"):
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


BLOG = """
from flask import Blueprint, Flask, request

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST" and request.form.get("password") == "s3cret-pass":
        return "welcome"
    return "login page"


def create_app():
    app = Flask(__name__)
    app.register_blueprint(bp)
    return app
"""


def test_a_view_captured_at_import_is_reported_not_silently_missed(tmp_path, monkeypatch):
    """Issue 14: a dotted path to a Flask view set up before import audits nothing; now it warns.

    The blueprint holds the view function from the moment the module body
    runs, before the import hook can patch it: the warning names that holder
    and the framework-level way (audit_endpoint).
    """
    pytest.importorskip("flask")
    name = f"blog_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(BLOG, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    instrument(f"{name}", {"login": "auth_success"})
    try:
        with pytest.warns(InstrumentWarning, match="audit_endpoint") as caught:
            module = __import__(name)
        message = str(caught[0].message)
        assert f"{name}.login is also held by a closure of flask." in message
        app = module.create_app()
        with capture_events() as events:
            app.test_client().post("/auth/login", data={"password": "s3cret-pass"})
        assert [] == list(events)  # the warning told the truth: the route bypasses the patch
    finally:
        uninstrument(name)
        sys.modules.pop(name, None)


def test_a_from_import_elsewhere_is_reported(vendor, tmp_path):
    """`from vendor import purge` in another module keeps the original: the warning says where."""
    user = f"{vendor}_user"
    (tmp_path / f"{user}.py").write_text(f"from {vendor} import purge\n", encoding="utf-8")
    module = __import__(vendor)
    __import__(user)
    try:
        with pytest.warns(InstrumentWarning, match=f"held by module {user} \\(from ... import\\)"):
            instrument(module, {"purge": "entity_deleted"})
    finally:
        uninstrument(module)
        sys.modules.pop(user, None)


def test_a_registry_on_an_object_is_named(vendor):
    """A registry dict on some object (a route table) is named by class and attribute."""
    module = __import__(vendor)

    class Router:
        def __init__(self):
            self.routes = {"/purge": module.purge}

    router = Router()
    try:
        with pytest.warns(InstrumentWarning, match=r"held by Router\.routes\['/purge'\]"):
            instrument(module, {"purge": "entity_deleted"})
    finally:
        uninstrument(module)
    assert router.routes


def test_nothing_else_holding_it_means_no_warning(vendor, recwarn):
    """A plain module function and class methods instrument without a warning."""
    module = __import__(vendor)
    instrument(module, {"purge": "entity_deleted"})
    instrument(module.Billing, {"refund": "config_changed", "rates": "x", "round": "y"})
    uninstrument(module)
    uninstrument(module.Billing)
    assert [] == [str(w.message) for w in recwarn]


def test_never_applied_paths_are_reported_at_exit(tmp_path):
    """A dotted path whose module is never imported is reported when the program ends."""
    script = (
        "from auditaspect import instrument\n"
        "from auditaspect.instrument import never_applied\n"
        "instrument('billing_typo.service:InvoiceService', {'cancel': 'plan_cancelled'})\n"
        "assert never_applied() == ['billing_typo.service:InvoiceService']\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert (
        "instrument('billing_typo.service:InvoiceService') was never applied: "
        "billing_typo.service was never imported" in done.stderr
    )
    assert never_applied() == []


def test_mapping_specs_take_every_option(vendor):
    """A mapping spec passes on_error, when and failed to the wrapper."""
    module = __import__(vendor)
    instrument(
        module.Billing,
        {
            "refund": {
                "event_type": "config_changed",
                "on_error": "auth_failure",
                "failed": lambda call: call.arguments["amount"] < 0 and "negative",
                "when": lambda call: call.arguments["invoice"] != "dry",
            }
        },
    )
    try:
        with capture_events() as events:
            module.Billing().refund("inv", amount=1)
            module.Billing().refund("inv", amount=-1)
            module.Billing().refund("dry", amount=-1)
        assert [("config_changed", None), ("auth_failure", "negative")] == [
            (e.event_type, e.error) for e in events
        ]
        with pytest.raises(TypeError, match="not colour"):
            instrument(module, {"purge": {"event_type": "x", "colour": "red"}})
        with pytest.raises(TypeError, match="when must be callable"):
            instrument(module, {"purge": {"event_type": "x", "when": 3}})
    finally:
        uninstrument(module.Billing)


def test_toml_tables_take_every_option(vendor, tmp_path):
    """[instrument.methods.NAME] tables name when/failed/extractor functions by path."""
    rules = f"{vendor}_rules"
    (tmp_path / f"{rules}.py").write_text(
        "def failed(call):\n    return call.arguments['amount'] < 0\n"
        "def when(call):\n    return call.arguments['invoice'] != 'dry'\n",
        encoding="utf-8",
    )
    config = tmp_path / "audit.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[instrument]]
            target = "{vendor}:Billing"

            [instrument.methods.refund]
            event_type = "config_changed"
            on_error = "auth_failure"
            failed = "{rules}:failed"
            when = "{rules}:when"
            """
        ),
        encoding="utf-8",
    )
    instrument_from_toml(str(config))
    module = __import__(vendor)
    try:
        with capture_events() as events:
            module.Billing().refund("a", amount=1)
            module.Billing().refund("b", amount=-1)
            module.Billing().refund("dry", amount=-1)
        assert [("config_changed", "success"), ("auth_failure", "failure")] == [
            (e.event_type, e.outcome) for e in events
        ]
    finally:
        uninstrument(f"{vendor}:Billing")
        sys.modules.pop(rules, None)


def test_lists_and_object_attributes_are_named(vendor, tmp_path):
    """A handler list in another module and an object keeping the function are both reported."""
    module = __import__(vendor)

    class Job:
        def __init__(self, callback):
            self.callback = callback

    handlers = [module.purge]
    job = Job(module.Billing.refund)
    try:
        with pytest.warns(InstrumentWarning, match=r"purge is also held by a list,"):
            instrument(module, {"purge": "entity_deleted"})
        with pytest.warns(InstrumentWarning, match=r"refund is also held by Job\.callback,"):
            instrument(module.Billing, {"refund": "config_changed"})
    finally:
        uninstrument(module)
        uninstrument(module.Billing)
    assert handlers
    assert job.callback


@pytest.mark.parametrize(
    ("module", "advice"),
    [
        ("flask.sansio.blueprints", "audit_endpoint()"),
        ("werkzeug.routing", "audit_endpoint()"),
        ("starlette.routing", "audit_route()"),
        ("fastapi.routing", "audit_route()"),
        ("django.urls.resolvers", "audit_view()"),
        ("celery.app.task", "@audited under @app.task"),
        ("click.core", "decorate it with @audited"),
    ],
)
def test_advice_names_the_framework_helper(module, advice):
    """The warning's advice depends on the holder's framework."""
    from auditaspect.instrument import _advice

    assert advice in _advice(module)
