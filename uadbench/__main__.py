"""``python -m uadbench`` — the same command line as the ``uadbench`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
