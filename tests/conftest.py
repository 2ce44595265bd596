import os

# The suite counts compilations and times nothing: keep JAX's persistent cache (which jsoftmax
# switches on at import) out of it; tests/test_cache.py checks the cache in subprocesses.
os.environ.setdefault("JSOFTMAX_CACHE_DIR", "off")

import pytest  # noqa: E402

from jsoftmax._compat import enable_x64  # noqa: E402


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
