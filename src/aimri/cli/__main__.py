"""`python -m aimri.cli`: the same as the `aimri` command."""

import sys

from aimri.cli import main

sys.exit(main())
