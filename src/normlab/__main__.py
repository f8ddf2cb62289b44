"""``python -m normlab``: the same as the ``normlab`` command."""

import sys

from normlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
