"""``python -m benchmarks.gpu``: the GPU kit (see the package doc)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
