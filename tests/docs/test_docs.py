"""The documentation site's pages: every ```python block runs as written, and the API reference
names every public name (docstring examples run as doctests in the suite itself)."""

import re
from pathlib import Path

import pytest

import jsoftmax

DOCS = Path(__file__).parent.parent.parent / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "_generated" not in p.parts)
BLOCKS = [(page, i, block) for page in PAGES
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]


def test_the_pages_hold_examples():
    assert len(BLOCKS) >= 10


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # examples cap max_iter
@pytest.mark.parametrize(("page", "index", "block"), BLOCKS,
                         ids=[f"{p.relative_to(DOCS)}-{i}" for p, i, _ in BLOCKS])
def test_page_example_runs(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that save files write here
    exec(compile(block, f"{page.relative_to(DOCS)} block {index}", "exec"), {})


def test_api_reference_names_every_public_name():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"\.\. auto(?:function|class):: jsoftmax\.(\w+)", text))
    assert documented == set(jsoftmax.__all__), set(jsoftmax.__all__) ^ documented
