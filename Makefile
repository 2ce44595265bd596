# Two entry points: `make demo` (the main job) and `make test`.
# Each creates or refreshes its own virtual environment in .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test docs bench clean gpu-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jsoftmax demo

# The suite never uses the program store (tests count compilations). Then scikit-learn's own
# test_logistic.py against our estimators (tests/conformance: shims, not-applicable list).
test: $(STAMP)
	JSOFTMAX_CACHE_DIR=off $(BIN)/python -m pytest -q
	JSOFTMAX_CACHE_DIR=off $(BIN)/python -m pytest -q -c tests/conformance/pytest.ini \
		--pyargs sklearn.linear_model.tests.test_logistic

# The documentation site (Sphinx, MyST, MathJax served locally), warnings as errors.
DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[all,test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	JSOFTMAX_CACHE_DIR=off $(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

# Wheels a lent GPU machine lacks (it has no package registry); carried there in .whl/.
# Then there: pip install --no-index --no-deps --target /tmp/site .whl/*.whl, and
# PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu --out DIR   (see README, "GPU").
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl -r benchmarks/gpu/wheels.txt
	cd .whl && ls *.whl > VERSIONS && cat VERSIONS

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
