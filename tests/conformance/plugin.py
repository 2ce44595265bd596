"""A pytest plugin that runs scikit-learn's own ``test_logistic.py`` against jsoftmax.

In the manner of ``cuml.accel``: before scikit-learn's installed test module is imported, the
names ``LogisticRegression`` and ``LogisticRegressionCV`` of ``sklearn.linear_model`` are
replaced by the shims of :mod:`tests.conformance.shims`, which give jsoftmax's estimators
scikit-learn's signatures. The test module itself runs unchanged.

Tests that do not apply are listed in :mod:`tests.conformance.not_applicable`, each with its
reason, and skipped with it; every other test must pass. A list entry that matches no collected
test is an error, so the list never outlives what it excuses.

Run (``make test`` does)::

    python -m pytest -c tests/conformance/pytest.ini --pyargs sklearn.linear_model.tests.test_logistic
"""

from __future__ import annotations

import os
import re

import pytest

from .not_applicable import NOT_APPLICABLE

# The suite compiles many small programs: jsoftmax's program store stays out of it.
os.environ.setdefault("JSOFTMAX_CACHE_DIR", "off")


def pytest_configure(config):
    import sklearn.linear_model

    from . import shims

    sklearn.linear_model.LogisticRegression = shims.LogisticRegression
    sklearn.linear_model.LogisticRegressionCV = shims.LogisticRegressionCV


def _pattern(text: str) -> re.Pattern:
    """A test-id pattern where ``*`` is the only wildcard (ids hold brackets)."""
    return re.compile(".*".join(map(re.escape, text.split("*"))) + r"\Z")


MODULE = "sklearn.linear_model.tests.test_logistic"


def pytest_collection_modifyitems(config, items):
    patterns = {text: _pattern(text) for text in NOT_APPLICABLE}
    used = set()
    ours = [item for item in items if getattr(getattr(item, "module", None), "__name__", None) == MODULE]
    for item in ours:
        matched = [text for text, pattern in patterns.items() if pattern.match(item.name)]
        if matched:
            reasons = "; ".join(dict.fromkeys(NOT_APPLICABLE[text] for text in matched))
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {reasons}"))
            used.update(matched)
    whole = not (config.option.keyword or config.option.markexpr or config.option.deselect)
    if whole and ours:
        unused = sorted(set(NOT_APPLICABLE) - used)
        if unused:
            raise pytest.UsageError(f"not-applicable entries that match no test: {unused}")
