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


@pytest.fixture
def traced_checks(monkeypatch):
    """Value checks inside the caller's jit, switched on for one test (off by default)."""
    monkeypatch.setenv("JSOFTMAX_CHECK_TRACED", "1")


@pytest.fixture(autouse=True)
def _one_precision_warning_per_test(monkeypatch):
    """The float64-in-float32 warning is shown once per process; each test starts afresh, so
    that a test passing float64 data without x64 fails wherever it runs in the order."""
    from jsoftmax import _validate

    monkeypatch.setattr(_validate, "_narrowing_warned", False)


# scikit-learn's own tests against our estimators run through their own config (make test).
collect_ignore = ["conformance"]
