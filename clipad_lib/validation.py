"""Configs that check themselves: frozen dataclasses whose fields are validated on creation.

Modelled on scikit-learn's ``validate_params``: each field names a list of constraints and its
value must satisfy at least one. A constraint is

* ``Options(("a", "b"))`` — one of these values (scikit-learn's ``StrOptions``);
* ``Interval(int | float, low, high, closed="both")`` — a number in a range (``None`` = unbounded);
* ``Each(constraint, min_length=1)`` — a sequence whose every item meets ``constraint``;
* a type such as ``bool`` or ``str`` — an instance of it;
* ``None`` — the value may be None.

A config subclasses :class:`ValidatedConfig` and lists its ``constraints`` as a class variable;
lists are turned into tuples first (notebook parameters arrive as lists), then every field is
checked and :meth:`ValidatedConfig.check` runs for rules across fields. The error names the
config, the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence


class ConfigError(ValueError):
    """A config field has a value outside what the method accepts."""


@dataclass(frozen=True)
class Options:
    values: tuple

    def accepts(self, value: Any) -> bool:
        return any(value == option and type(value) is type(option) for option in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


_BRACKETS = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}


@dataclass(frozen=True)
class Interval:
    kind: type  # int or float; an int is accepted where a float is asked for
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def __post_init__(self):
        if self.closed not in _BRACKETS:
            raise ValueError(f"closed must be one of {sorted(_BRACKETS)}, got {self.closed!r}")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if not isinstance(value, wanted) or (isinstance(value, float) and math.isnan(value)):
            return False
        low_ok = self.low is None or value > self.low or (value == self.low and self.closed in ("both", "left"))
        high_ok = self.high is None or value < self.high or (value == self.high and self.closed in ("both", "right"))
        return low_ok and high_ok

    def describe(self) -> str:
        left = "(" if self.low is None else _BRACKETS[self.closed][0]
        right = ")" if self.high is None else _BRACKETS[self.closed][1]
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'an int' if self.kind is int else 'a number'} in {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Each:
    item: Any
    min_length: int = 1
    length: int | None = None

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        return len(value) >= self.min_length and all(_accepts(self.item, v) for v in value)

    def describe(self) -> str:
        size = f"{self.length}" if self.length is not None else f"at least {self.min_length}"
        return f"a sequence of {size} items, each {_describe(self.item)}"


def _accepts(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not (constraint is int and isinstance(value, bool))
    return constraint.accepts(value)


def _describe(constraint: Any) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return f"a {constraint.__name__}"
    return constraint.describe()


def check_value(owner: str, name: str, value: Any, constraints: Sequence[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` meets at least one of ``constraints``."""
    if not any(_accepts(c, value) for c in constraints):
        allowed = " or ".join(_describe(c) for c in constraints)
        raise ConfigError(f"{owner}.{name} = {value!r} is not allowed: expected {allowed}")


class ValidatedConfig:
    """Mixin for ``@dataclass(frozen=True)`` method configs (see the module docstring)."""

    constraints: ClassVar[dict[str, Sequence[Any]]] = {}

    def __post_init__(self):
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        unknown = set(self.constraints) - {f.name for f in dataclasses.fields(self)}
        if unknown:  # a typo in a constraint table would silently check nothing
            raise TypeError(f"{owner}.constraints names unknown fields {sorted(unknown)}")
        for name, constraints in self.constraints.items():
            check_value(owner, name, getattr(self, name), constraints)
        self.check()

    def check(self) -> None:
        """Rules across fields; raise :class:`ConfigError` (override where a method has some)."""

    def fail(self, name: str, message: str) -> None:
        raise ConfigError(f"{type(self).__name__}.{name} = {getattr(self, name)!r} is not allowed: {message}")

    def replace(self, **changes) -> "ValidatedConfig":
        """A copy with ``changes`` (validated again); an unknown field name is refused."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no fields {sorted(unknown)}; its fields: {sorted(known)}")
        return dataclasses.replace(self, **changes)
