import pytest

from jsoftmax._compat import enable_x64


@pytest.fixture
def x64():
    """float64 for the duration of one test; the previous setting comes back even on failure."""
    with enable_x64(True):
        yield


@pytest.fixture
def x32():
    """Explicitly float32 defaults (guards against a leaked global x64 switch)."""
    with enable_x64(False):
        yield
