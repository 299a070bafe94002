"""`python -m reference ...` — same as `tbg reference ...`."""

from __future__ import annotations

import sys

from reference.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
