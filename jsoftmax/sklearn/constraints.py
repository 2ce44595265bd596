"""Declarative hyperparameter constraints, in the style of scikit-learn's ``_parameter_constraints``.

An estimator lists ``_parameter_constraints = {name: Constraint, ...}``; :func:`check_parameters`
checks them all, in order, before a fit reads any data, and a failure is one ``ValueError``
naming the hyperparameter, what it must be and what it is. (scikit-learn's own
``_param_validation`` is private to scikit-learn and words its messages differently; these keep
jsoftmax's wording, which its tests and users rely on.)

Example:
  >>> from jsoftmax.sklearn.constraints import check_parameters, positive_real
  >>> class Model:
  ...     _parameter_constraints = {"C": positive_real("a positive number")}
  ...     C = -1.0
  >>> check_parameters(Model())
  Traceback (most recent call last):
  ...
  ValueError: `C` must be a positive number; got -1.0.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class Constraint(NamedTuple):
    """``holds(value)`` is True for an allowed value; ``expected`` says what is allowed, for
    the message ``message`` (formatted with ``name``, ``expected`` and ``value``)."""

    holds: Callable[[Any], bool]
    expected: str
    message: str = "`{name}` must be {expected}; got {value!r}."

    def check(self, name: str, value: Any) -> None:
        if not self.holds(value):
            raise ValueError(self.message.format(name=name, expected=self.expected, value=value))


def is_real(value: Any) -> bool:
    """A real number that is not a bool (``True`` is not a learning rate)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def boolean() -> Constraint:
    return Constraint(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


def positive_real(expected: str = "a positive number", *, finite: bool = False) -> Constraint:
    return Constraint(lambda v: is_real(v) and v > 0 and (not finite or np.isfinite(v)), expected)


def non_negative_real(expected: str = "a non-negative number") -> Constraint:
    return Constraint(lambda v: is_real(v) and v >= 0, expected)


def int_at_least(low: int, expected: str) -> Constraint:
    return Constraint(lambda v: is_int(v) and v >= low, expected)


def optional(constraint: Constraint, expected: str) -> Constraint:
    """None, or a value ``constraint`` allows."""
    return Constraint(lambda v: v is None or constraint.holds(v), expected)


def options(*allowed: str, expected: str | None = None, message: str | None = None,
            also: Callable[[Any], bool] | None = None) -> Constraint:
    """One of the strings ``allowed`` (or a value ``also`` accepts)."""
    words = expected or " or ".join(repr(a) for a in allowed)
    holds = lambda v: (isinstance(v, str) and v in allowed) or (also is not None and also(v))  # noqa: E731
    return Constraint(holds, words, message) if message else Constraint(holds, words)


def check_parameters(estimator: Any) -> None:
    """Check every hyperparameter of ``estimator`` against its ``_parameter_constraints``."""
    for name, constraint in type(estimator)._parameter_constraints.items():
        constraint.check(name, getattr(estimator, name))
