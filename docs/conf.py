"""Sphinx configuration of jsoftmax's documentation site (``make docs``).

Sphinx with autodoc and napoleon, as optax and JAX build theirs: the API reference comes from the
docstrings of every name in ``jsoftmax.__all__`` (``docs/api.md``), the guides are Markdown
(MyST), the mathematics is rendered by MathJax served from the site itself (no network needed to
read it), and the benchmarks page is generated from ``benchmarks/results/`` at build time.
"""

import os
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JSOFTMAX_CACHE_DIR", "off")  # building the docs writes no program store

project = "jsoftmax"
author = "the jsoftmax developers"
copyright = "2026, the jsoftmax developers"
release = metadata.version("jsoftmax")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
# The result files keep the headings their benchmark wrote (a table under "####" and so on).
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"jsoftmax {release}"


def _benchmark_pages(app) -> None:
    """docs/_generated/: every result file under benchmarks/results/ (Markdown, with its plots
    beside it), and a page listing them."""
    import shutil

    results = ROOT / "benchmarks" / "results"
    out = Path(app.srcdir) / "_generated"
    if out.exists():
        shutil.rmtree(out)
    pages = []
    for path in sorted(results.rglob("*")):
        if path.suffix not in (".md", ".png"):
            continue
        target = out / "results" / path.relative_to(results)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if path.suffix == ".md":
            pages.append(target.relative_to(out).with_suffix("").as_posix())
    lines = ["# Every result file", "",
             "Generated from `benchmarks/results/` when the site is built; each file names the command",
             "that wrote it and the machine it ran on.", "", "```{toctree}", ":maxdepth: 1", "", *pages, "```", ""]
    (out / "results.md").write_text("\n".join(lines))


def _run_and_capture(function) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        function()
    return out.getvalue()


def _example_outputs(app) -> None:
    """docs/_generated/: the outputs the pages show, made by the very commands and cells they
    show, so that they cannot go stale: ``jsoftmax verify --problem 16x5x3 -v``, and the
    tutorial's report of a gradient without its 1/N (its cells run in order up to that one)."""
    import re

    from jsoftmax import cli

    out = Path(app.srcdir) / "_generated"
    out.mkdir(exist_ok=True)
    text = _run_and_capture(lambda: cli.main(["verify", "--problem", "16x5x3", "-v"]))
    (out / "verify-problem.txt").write_text("$ jsoftmax verify --problem 16x5x3 -v\n" + text)
    blocks = re.findall(r"```python\n(.*?)```", (Path(app.srcdir) / "tutorial.md").read_text(), flags=re.S)
    namespace: dict = {}
    for index, block in enumerate(blocks):
        text = _run_and_capture(lambda: exec(compile(block, f"tutorial.md block {index}", "exec"), namespace))
        if "gradient_without_the_average" in block:
            (out / "tutorial-mistake.txt").write_text(text)
            break
    else:
        raise RuntimeError("tutorial.md: no cell breaks the average")


def setup(app):
    app.connect("builder-inited", _benchmark_pages)
    app.connect("builder-inited", _example_outputs)
