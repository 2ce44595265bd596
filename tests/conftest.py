import os

# The suite counts compilations and times nothing: keep JAX's persistent cache (which jsoftmax
# switches on at import) out of it; tests/test_cache.py checks the cache in subprocesses.
os.environ.setdefault("JSOFTMAX_CACHE_DIR", "off")

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from jsoftmax._compat import enable_x64  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop the module's compiled programs afterwards. Every XLA executable on the CPU holds
    memory mappings; the whole suite compiles enough of them to pass the kernel's per-process
    limit (vm.max_map_count, 65530), where the next compilation segfaults."""
    yield
    jax.clear_caches()
    gc.collect()


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
