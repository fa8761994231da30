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
is patched by a wrapt post-import hook the moment it is. Code that copied a
function out of a module before it was instrumented (``from m import f``)
keeps the original: instrument early.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Mapping
from typing import Any

import wrapt

from .decorator import Extractor, audited
from .events import event_type_value

__all__ = ["instrument", "instrument_from_toml", "uninstrument"]

Spec = str | tuple[str, Extractor]
_MISSING = object()

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


def _normalise(methods: Mapping[str, Spec]) -> dict[str, tuple[str, Extractor | None]]:
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError("methods must be a non-empty mapping of method name to event type")
    result: dict[str, tuple[str, Extractor | None]] = {}
    for name, spec in methods.items():
        if isinstance(spec, tuple):
            if len(spec) != 2 or not callable(spec[1]):
                raise TypeError(f"{name}: use 'event_type' or ('event_type', extractor)")
            result[name] = (event_type_value(spec[0]), spec[1])
        else:
            result[name] = (event_type_value(spec), None)
    return result


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
        for name, (event_type, extractor) in specs.items():
            # A classmethod or staticmethod must be wrapped as the descriptor
            # in the class dict, not as what getattr() binds it to.
            raw = owned.get(name, _MISSING)
            original = raw if raw is not _MISSING else getattr(target, name)
            setattr(target, name, audited(event_type, extractor)(original))
            originals[name] = raw


def instrument(target: Any, methods: Mapping[str, Spec]) -> None:
    """Audit ``methods`` of ``target`` (a class, a module, or a dotted path).

    ``methods`` maps a method name to an event type, or to ``(event_type,
    extractor)``. Raises ``TypeError`` for a bad mapping or event type,
    ``AttributeError`` for a method the target does not have, and
    ``ValueError`` for a method instrumented twice. A dotted path whose module
    is not imported yet is patched on import (errors are then raised there).
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
    path still waiting for its import is simply forgotten.
    """
    if isinstance(target, str):
        with _lock:
            if _pending.pop(target, None) is not None:
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


def _load_callable(path: str) -> Extractor:
    module_name, attribute = _split(path)
    if not attribute:
        raise ValueError(f"extractor {path!r} must be 'package.module:function'")
    func = _resolve(importlib.import_module(module_name), attribute)
    if not callable(func):
        raise TypeError(f"extractor {path!r} is not callable")
    return func  # type: ignore[no-any-return]


def instrument_from_toml(path: str) -> list[str]:
    """Instrument what a TOML file lists; return the targets.

    .. code-block:: toml

        [[instrument]]
        target = "billing.service:InvoiceService"

        [instrument.methods]
        cancel = "plan_cancelled"
        refund = ["config_changed", "billing.audit:refund_details"]

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
        mapping: dict[str, Spec] = {}
        for name, spec in methods.items():
            if isinstance(spec, list) and len(spec) == 2:
                mapping[name] = (spec[0], _load_callable(spec[1]))
            else:
                mapping[name] = spec
        instrument(target, mapping)
        targets.append(target)
    return targets
