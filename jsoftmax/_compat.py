"""Small shims over jax API differences between the versions we support (0.6 – 0.11)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax


@contextlib.contextmanager
def enable_x64(enabled: bool = True) -> Iterator[None]:
    """Scoped float64 switch that restores the previous setting on exit (also on error)."""
    if hasattr(jax, "enable_x64"):  # jax >= 0.8
        with jax.enable_x64(enabled):
            yield
    else:  # pragma: no cover - older jax
        from jax.experimental import enable_x64 as _enable_x64

        with _enable_x64(enabled):
            yield


def is_tracer(x: object) -> bool:
    """True when ``x`` is an abstract value inside a jax transformation (no concrete data)."""
    return isinstance(x, jax.core.Tracer)
