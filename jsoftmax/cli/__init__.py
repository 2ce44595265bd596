"""The ``jsoftmax`` command line: the parser and its commands (``main``), the demo, the
training plot and the metrics it prints. Needs ``jsoftmax[cli]`` (matplotlib, tqdm) for plots
and progress bars."""

from .main import main as main

__all__ = ["main"]
