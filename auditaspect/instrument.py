"""Auditing code you cannot edit: :func:`instrument` and :func:`uninstrument`.

    instrument(InvoiceService, {"cancel": "plan_cancelled",
                                "refund": ("config_changed", refund_details)})
    instrument("billing.service:InvoiceService", {...})   # patched when imported
    instrument_from_toml("audit.toml")
    uninstrument(InvoiceService)

Each named method (functions of a module, too) is replaced by the same wrapt
wrapper ``@audited`` would have put there, so classmethods, staticmethods and
``async def`` work as with the decorator. A target given as a dotted path
(``"package.module:Class"`` or ``"package.module"``) that is not imported yet
is patched by a wrapt post-import hook the moment it is.

Patching replaces the attribute, not the function object: anything that took
a reference before (``from m import f``, a Flask or FastAPI route table, a
Click command, a Celery task) keeps calling the unaudited original. Such a
reference is not passed over in silence: :func:`instrument` warns
(:class:`InstrumentWarning`) naming who holds it and what to use instead. A
dotted path whose module is never imported is reported as never applied by
:func:`uninstrument` and, at interpreter exit, on the ``auditaspect`` logger.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import sys
import threading
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import wrapt

from .decorator import Extractor, audited

__all__ = [
    "InstrumentWarning",
    "instrument",
    "instrument_from_toml",
    "never_applied",
    "uninstrument",
]

logger = logging.getLogger("auditaspect")

# "event_type", ("event_type", extractor), or {"event_type": ..., "extractor":
# ..., "on_error": ..., "when": ..., "failed": ...}
Spec = str | tuple[str, Extractor] | Mapping[str, Any]
_OPTIONS = ("event_type", "extractor", "on_error", "when", "failed")
_MISSING = object()


class InstrumentWarning(UserWarning):
    """An instrumented function is also held elsewhere, where it stays unaudited."""


_lock = threading.Lock()
# id(target) -> (target, {name: what vars(target) held before, or _MISSING})
_patched: dict[int, tuple[Any, dict[str, Any]]] = {}
# dotted path -> mapping waiting for its module to be imported
_pending: dict[str, Mapping[str, Spec]] = {}


def _split(path: str) -> tuple[str, str]:
    module, _, attribute = path.partition(":")
    if not module:
        raise ValueError(f"bad target {path!r}: use 'package.module' or 'package.module:Class'")
    return module, attribute


def _resolve(module: Any, attribute: str) -> Any:
    target = module
    for part in filter(None, attribute.split(".")):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"{module.__name__} has no {attribute!r} to instrument") from None
    return target


def _options(name: str, spec: Spec) -> dict[str, Any]:
    """One method's spec as ``audited()`` keyword arguments (checked)."""
    if isinstance(spec, tuple):
        if len(spec) != 2 or not callable(spec[1]):
            raise TypeError(f"{name}: use 'event_type' or ('event_type', extractor)")
        options: dict[str, Any] = {"event_type": spec[0], "extractor": spec[1]}
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(_OPTIONS))
        if unknown or "event_type" not in spec:
            raise TypeError(
                f"{name}: a mapping spec takes event_type (required), extractor, on_error, "
                f"when and failed" + (f"; not {', '.join(unknown)}" if unknown else "")
            )
        options = dict(spec)
    else:
        options = {"event_type": spec}
    event_type = options.pop("event_type")
    audited(event_type, **options)  # checks types and callables now
    return {"event_type": event_type, **options}


def _normalise(methods: Mapping[str, Spec]) -> dict[str, dict[str, Any]]:
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError("methods must be a non-empty mapping of method name to event type")
    return {name: _options(name, spec) for name, spec in methods.items()}


def _held_by(container: object) -> list[object]:
    """What holds ``container``, frames left out (a local variable is not a registry)."""
    return [o for o in gc.get_referrers(container) if not isinstance(o, types.FrameType)]


def _attribute_of(owner: object, value: object) -> tuple[str, str] | None:
    """``("Class.attribute", module)`` when ``owner`` holds ``value`` as an attribute.

    ``owner`` is the object itself (its attributes stored inline, Python
    3.11+) or its ``__dict__`` (a plain dict held by the object, 3.10).
    """
    candidates = [owner]
    if isinstance(owner, dict):
        candidates = [o for o in gc.get_referrers(owner) if getattr(o, "__dict__", None) is owner]
    for obj in candidates:
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            for attribute, held in attributes.items():
                if held is value:
                    return f"{type(obj).__name__}.{attribute}", type(obj).__module__
    return None


def _describe(ref: Any, function: Any, original: Any) -> tuple[str, str] | None:
    """Describe one referrer as ``(what, module)``, or None when it is transient."""
    if isinstance(ref, dict):
        module = next(
            (m for m in list(sys.modules.values()) if getattr(m, "__dict__", None) is ref), None
        )
        if module is not None:
            return f"module {module.__name__} (from ... import)", module.__name__
        holders = _held_by(ref)
        if not holders:
            return None
        keys = [k for k, v in ref.items() if v is function or v is original]
        key = f"[{keys[0]!r}]" if keys else ""
        for owner in holders:
            if getattr(owner, "__dict__", None) is ref and keys:  # the object's attributes
                return f"{type(owner).__name__}.{keys[0]}", type(owner).__module__
            named = _attribute_of(owner, ref)
            if named is not None:
                return f"{named[0]}{key}", named[1]
        return f"a dict{key}", ""
    if isinstance(ref, types.CellType):
        for closure in _held_by(ref):
            if isinstance(closure, tuple):
                for owner in gc.get_referrers(closure):
                    if getattr(owner, "__closure__", None) is closure:
                        where = str(getattr(owner, "__module__", None) or "")
                        return f"a closure of {where}.{owner.__qualname__}", where
        return None  # a cell of a running (or kept) frame: a local variable
    if isinstance(ref, (list, tuple, set)):
        return (f"a {type(ref).__name__}", "") if _held_by(ref) else None
    # An object whose attributes are stored inline (no __dict__ object of its own).
    attributes = getattr(ref, "__dict__", None)
    if isinstance(attributes, dict):
        for attribute, value in attributes.items():
            if value is function or value is original:
                return f"{type(ref).__name__}.{attribute}", type(ref).__module__
    return f"a {type(ref).__name__} object", type(ref).__module__


def _referrers(
    originals: Mapping[str, Any], ours: tuple[object, ...]
) -> dict[str, list[tuple[str, str]]]:
    """Who else holds each original: ``{name: [(description, module of the holder)]}``.

    One scan of the heap for all of them (``gc.get_referrers`` walks every
    tracked object, which is slow in a big application). Called after
    patching, so the owner's namespace holds the wrappers now. What we hold
    ourselves (``ours``: the wrappers, our record of originals) and local
    variables of frames (ours, the caller's, a traceback's) are not
    references that would bypass the patch.
    """
    names: dict[int, str] = {}
    pairs: dict[str, tuple[Any, Any]] = {}
    for name, original in originals.items():
        function = getattr(original, "__func__", original)
        names[id(function)] = names[id(original)] = name
        pairs[name] = (function, original)
    found: dict[str, list[tuple[str, str]]] = {}
    # A tuple: f(*args) passes it on as the call's argument tuple (else Python
    # 3.13 builds one, which then holds them as well).
    objects = tuple(obj for pair in pairs.values() for obj in pair)
    # Our own containers hold them too: the arguments, this bookkeeping.
    skip = {id(obj) for obj in (*ours, *objects, objects, originals, *pairs.values())}
    for ref in gc.get_referrers(*objects):
        if isinstance(ref, types.FrameType) or id(ref) in skip:
            continue
        held = {names[id(o)] for o in gc.get_referents(ref) if id(o) in names}
        for name in sorted(held):
            described = _describe(ref, *pairs[name])
            if described is not None:
                found.setdefault(name, []).append(described)
    return found


def _advice(module: str) -> str:
    top = module.partition(".")[0]
    if top == "flask" or top == "werkzeug":
        return "for a Flask view use auditaspect.contrib.flask.audit_endpoint()"
    if top in ("starlette", "fastapi"):
        return "for a Starlette or FastAPI route use auditaspect.contrib.starlette.audit_route()"
    if top == "django":
        return "for a Django view use auditaspect.contrib.django.audit_view()"
    if top == "celery":
        return "for a Celery task put @audited under @app.task"
    return "instrument before it is registered or imported, or decorate it with @audited"


def _warn_if_held(target: Any, originals: Mapping[str, Any], ours: tuple[object, ...]) -> None:
    label = getattr(target, "__name__", type(target).__name__)
    for name, held in _referrers(originals, ours).items():
        where = "; ".join(description for description, _ in held[:3])
        warnings.warn(
            f"instrument(): {label}.{name} is also held by {where}, which keeps calling the "
            f"unaudited original; {_advice(held[0][1])}",
            InstrumentWarning,
            stacklevel=4,
        )


def _patch(target: Any, methods: Mapping[str, Spec]) -> None:
    specs = _normalise(methods)
    owned = vars(target)
    with _lock:
        _, originals = _patched.setdefault(id(target), (target, {}))
        for name in specs:
            if name in originals:
                raise ValueError(f"{name!r} is already instrumented; uninstrument() it first")
            if name not in owned and not callable(getattr(target, name, None)):
                raise AttributeError(
                    f"{getattr(target, '__name__', target)!r} has no method {name!r}"
                )
        for name, options in specs.items():
            # A classmethod or staticmethod must be wrapped as the descriptor
            # in the class dict, not as what getattr() binds it to.
            raw = owned.get(name, _MISSING)
            original = raw if raw is not _MISSING else getattr(target, name)
            options = dict(options)
            setattr(target, name, audited(options.pop("event_type"), **options)(original))
            originals[name] = raw
    # An inherited method (_MISSING) is the base class's business.
    mine = {name: originals[name] for name in specs if originals[name] is not _MISSING}
    if mine:
        wrappers = tuple(vars(target).get(name) for name in mine)
        _warn_if_held(target, mine, (originals, *wrappers))


def instrument(target: Any, methods: Mapping[str, Spec]) -> None:
    """Audit ``methods`` of ``target`` (a class, a module, or a dotted path).

    ``methods`` maps a method name to an event type, to ``(event_type,
    extractor)``, or to a mapping of :func:`audited`'s options
    (``{"event_type": ..., "on_error": ..., "when": ..., "failed": ...,
    "extractor": ...}``). Raises ``TypeError`` for a bad mapping or event type,
    ``AttributeError`` for a method the target does not have, and
    ``ValueError`` for a method instrumented twice. A dotted path whose module
    is not imported yet is patched on import (errors are then raised there).

    Warns with :class:`InstrumentWarning` when the function is also held
    elsewhere (a route table, another module's ``from ... import``): those
    callers keep the unaudited original.
    """
    if not isinstance(target, str):
        _patch(target, methods)
        return
    module_name, attribute = _split(target)
    _normalise(methods)  # fail now, not at import time
    module = sys.modules.get(module_name)
    if module is not None:
        _patch(_resolve(module, attribute), methods)
        return
    with _lock:
        _pending[target] = methods

    def on_import(module: Any) -> None:
        with _lock:
            waiting = _pending.pop(target, None)
        if waiting is not None:
            _patch(_resolve(module, attribute), waiting)

    wrapt.register_post_import_hook(on_import, module_name)


def uninstrument(target: Any) -> list[str]:
    """Restore every method instrumented on ``target``; return their names.

    Accepts the object or the dotted path it was instrumented by. A dotted
    path still waiting for its import was never applied: it is forgotten,
    with an :class:`InstrumentWarning` saying so (its module was never
    imported, so none of its calls were audited).
    """
    if isinstance(target, str):
        with _lock:
            waiting = _pending.pop(target, None)
        if waiting is not None:
            warnings.warn(
                f"instrument({target!r}) was never applied: {_split(target)[0]} was never "
                "imported, so none of its calls were audited",
                InstrumentWarning,
                stacklevel=2,
            )
            return []
        module_name, attribute = _split(target)
        module = sys.modules.get(module_name)
        if module is None:
            return []
        target = _resolve(module, attribute)
    with _lock:
        entry = _patched.pop(id(target), None)
    if entry is None:
        return []
    _, originals = entry
    for name, raw in originals.items():
        if raw is _MISSING:
            delattr(target, name)  # it was inherited: uncover the base's again
        else:
            setattr(target, name, raw)
    return list(originals)


def never_applied() -> list[str]:
    """Dotted paths given to :func:`instrument` whose module is not imported yet."""
    with _lock:
        return sorted(_pending)


@atexit.register
def _report_never_applied() -> None:
    for target in never_applied():
        logger.warning(
            "instrument(%r) was never applied: %s was never imported, so none of its calls "
            "were audited",
            target,
            _split(target)[0],
        )


def _load_callable(path: str) -> Callable[..., Any]:
    module_name, attribute = _split(path)
    if not attribute:
        raise ValueError(f"extractor {path!r} must be 'package.module:function'")
    func = _resolve(importlib.import_module(module_name), attribute)
    if not callable(func):
        raise TypeError(f"extractor {path!r} is not callable")
    return func  # type: ignore[no-any-return]


def _toml_spec(path: str, name: str, spec: Any) -> Spec:
    if isinstance(spec, list) and len(spec) == 2:
        return (spec[0], _load_callable(spec[1]))
    if isinstance(spec, dict):
        return {
            key: _load_callable(value) if key in ("extractor", "when", "failed") else value
            for key, value in spec.items()
        }
    if not isinstance(spec, str):
        raise ValueError(f"{path}: {name!r} needs an event type, [type, extractor] or a table")
    return spec


def instrument_from_toml(path: str) -> list[str]:
    """Instrument what a TOML file lists; return the targets.

    .. code-block:: toml

        [[instrument]]
        target = "billing.service:InvoiceService"

        [instrument.methods]
        cancel = "plan_cancelled"
        refund = ["config_changed", "billing.audit:refund_details"]

        [instrument.methods.login]
        event_type = "auth_success"
        on_error = "auth_failure"
        failed = "billing.audit:login_failed"
        when = "billing.audit:not_dry_run"

    ``extractor``, ``when`` and ``failed`` are ``"package.module:function"``.

    Needs Python 3.11+ (``tomllib``) or the ``tomli`` package.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("reading TOML on Python 3.10 needs: pip install tomli") from None
    with open(path, "rb") as handle:
        config = tomllib.load(handle)
    entries = config.get("instrument")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected [[instrument]] tables with target and methods")
    targets = []
    for entry in entries:
        target, methods = entry.get("target"), entry.get("methods")
        if not isinstance(target, str) or not isinstance(methods, dict):
            raise ValueError(
                f"{path}: each [[instrument]] needs target = '...' and methods = {{...}}"
            )
        mapping = {name: _toml_spec(path, name, spec) for name, spec in methods.items()}
        instrument(target, mapping)
        targets.append(target)
    return targets
