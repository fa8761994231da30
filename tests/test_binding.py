"""Binder: arguments by parameter name, checked against inspect.Signature.bind."""

from __future__ import annotations

import inspect
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from auditaspect.binding import Binder


def full(a, b=2, /, c=3, *args, d, e=5, **kwargs):
    return None


def simple(x, y="default"):
    return None


def reference(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


@given(
    positional=st.lists(st.integers(), min_size=1, max_size=6),
    d=st.integers(),
    extra=st.dictionaries(st.sampled_from(["e", "z", "w"]), st.integers(), max_size=3),
)
def test_binder_matches_signature_bind(positional, d, extra):
    """For any valid call, Binder gives what Signature.bind + apply_defaults gives."""
    args = tuple(positional)
    kwargs = {"d": d, **extra}
    assert reference(full, args, kwargs) == Binder(full).bind(args, kwargs)


@given(x=st.integers(), y=st.one_of(st.none(), st.text()), by_keyword=st.booleans())
def test_binding_ignores_how_arguments_were_passed(x, y, by_keyword):
    """Positional or keyword, the result is the same dict by name, defaults applied."""
    binder = Binder(simple)
    expected = {"x": x, "y": y}
    if by_keyword:
        assert expected == binder.bind((), {"y": y, "x": x})
    else:
        assert expected == binder.bind((x, y), {})
    assert {"x": x, "y": "default"} == binder.bind((x,), {})


def test_skip_first_drops_self():
    """skip_first leaves out the first parameter (self or cls)."""

    class Service:
        def act(self, a, b=1):
            return None

    assert {"a": 0, "b": 1} == Binder(Service.act).bind((0,), {}, skip_first=True)


def test_missing_argument_is_left_out():
    """A failed call's missing argument is absent rather than an error."""
    assert {"y": "default"} == Binder(simple).bind((), {})


def test_positional_only_name_passed_by_keyword_goes_to_kwargs():
    """A keyword named like a positional-only parameter belongs to **kwargs."""
    bound = Binder(full).bind((1,), {"a": 9, "d": 4})
    assert {"a": 9} == bound["kwargs"]


def test_callable_without_signature_binds_to_args_and_kwargs():
    """A callable inspect cannot read binds as *args and **kwargs."""

    class Opaque:
        __signature__ = "unreadable"

        def __call__(self, *args: Any, **kwargs: Any) -> None:
            return None

    assert {"args": (1,), "kwargs": {"k": 2}} == Binder(Opaque()).bind((1,), {"k": 2})


def plain(a, b, /, c, d=4):
    return None


@given(
    count=st.integers(min_value=0, max_value=5),
    keyword=st.booleans(),
    skip_first=st.booleans(),
)
def test_plain_positional_signatures_bind_as_signature_bind(count, keyword, skip_first):
    """Only positional parameters (bound in one step when every one is passed by
    position): the same dict as Signature.bind, with defaults, and without self."""
    args = tuple(range(count))
    kwargs = {"d": 9} if keyword and count == 3 else {}
    got = Binder(plain).bind(args, kwargs, skip_first=skip_first)
    if skip_first:  # the bound object stands for the first parameter, not in args
        got = {"a": None, **got}
        args = (None, *args)
    try:
        expected = reference(plain, args, kwargs)
    except TypeError:  # a call that failed: whatever was supplied, by name
        assert set(got) <= {"a", "b", "c", "d"}
        return
    assert expected == got
