"""The documentation site's pages: every ```python block runs as written (a page's blocks in order), and the API reference
names every public name (docstring examples run as doctests in the suite itself)."""

import re
from pathlib import Path

import pytest

import jsoftmax

DOCS = Path(__file__).parent.parent.parent / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "_generated" not in p.parts)
BLOCKS = {page: re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S) for page in PAGES}


def test_the_pages_hold_examples():
    assert sum(len(blocks) for blocks in BLOCKS.values()) >= 10


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # examples cap max_iter
@pytest.mark.parametrize("page", [page for page in PAGES if BLOCKS[page]], ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run_in_order(page, tmp_path, monkeypatch):
    # A page's cells run in order in one namespace, as a reader runs them (the tutorial's build
    # on one another); every cell of every page runs.
    monkeypatch.chdir(tmp_path)  # examples that save files write here
    namespace: dict = {}
    for index, block in enumerate(BLOCKS[page]):
        exec(compile(block, f"{page.relative_to(DOCS)} block {index}", "exec"), namespace)


def test_api_reference_names_every_public_name():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"\.\. auto(?:function|class):: jsoftmax\.(\w+)", text))
    assert documented == set(jsoftmax.__all__), set(jsoftmax.__all__) ^ documented
