"""Binding a call's arguments to parameter names, cheaply and by name.

``inspect.Signature.bind`` costs several microseconds a call. The decorator
binds only after the wrapped call has run (so the arguments are known to be
valid), which allows this simpler walk over a signature read once per
decorated function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Binder"]

_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_POSITIONAL_OR_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD
_EMPTY = inspect.Parameter.empty

_Param = tuple[str, Any, Any]  # (name, kind, default)


class Binder:
    """Maps ``(args, kwargs)`` of a call to ``{parameter name: value}``.

    Defaults are applied; ``*args`` becomes a tuple and ``**kwargs`` a dict
    under their own names. ``skip_first=True`` drops the first parameter
    (``self``/``cls``), for calls where the bound object is not in ``args``.
    A parameter the call did not supply and that has no default is left out
    (only possible when the call itself failed with a ``TypeError``).
    """

    __slots__ = ("_bound_params", "_named", "_params", "_plain", "_plain_bound")

    def __init__(self, func: Callable[..., Any]) -> None:
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):  # builtins without a signature
            signature = inspect.Signature(
                [
                    inspect.Parameter("args", _VAR_POSITIONAL),
                    inspect.Parameter("kwargs", _VAR_KEYWORD),
                ]
            )
        params = tuple((p.name, p.kind, p.default) for p in signature.parameters.values())
        self._params: tuple[_Param, ...] = params
        first_is_positional = bool(params) and params[0][1] in (
            _POSITIONAL_ONLY,
            _POSITIONAL_OR_KEYWORD,
        )
        self._bound_params = params[1:] if first_is_positional else params
        self._named = frozenset(
            name for name, kind, _ in params if kind in (_POSITIONAL_OR_KEYWORD, _KEYWORD_ONLY)
        )
        # Names of a signature of plain positional parameters only (the common
        # case): a call passing all of them by position binds in one zip.
        plain = all(kind in (_POSITIONAL_ONLY, _POSITIONAL_OR_KEYWORD) for _, kind, _ in params)
        self._plain = tuple(name for name, _, _ in params) if plain else None
        self._plain_bound = tuple(name for name, _, _ in self._bound_params) if plain else None

    def bind(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, skip_first: bool = False
    ) -> dict[str, Any]:
        """Return the call's arguments by parameter name, in signature order."""
        names = self._plain_bound if skip_first else self._plain
        if names is not None and not kwargs and len(args) == len(names):
            return dict(zip(names, args, strict=True))
        out: dict[str, Any] = {}
        index = 0
        nargs = len(args)
        for name, kind, default in self._bound_params if skip_first else self._params:
            if kind is _POSITIONAL_OR_KEYWORD or kind is _POSITIONAL_ONLY:
                if index < nargs:
                    out[name] = args[index]
                    index += 1
                    continue
                if kind is _POSITIONAL_OR_KEYWORD and name in kwargs:
                    out[name] = kwargs[name]
                    continue
            elif kind is _KEYWORD_ONLY:
                if name in kwargs:
                    out[name] = kwargs[name]
                    continue
            elif kind is _VAR_POSITIONAL:
                out[name] = tuple(args[index:])
                index = nargs
                continue
            else:  # VAR_KEYWORD: whatever no named parameter took
                out[name] = {k: v for k, v in kwargs.items() if k not in self._named}
                continue
            if default is not _EMPTY:
                out[name] = default
        return out
