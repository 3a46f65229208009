"""`python -m jaxicl.cli`: the `jaxicl` command."""

import sys

from jaxicl.cli import main

sys.exit(main())
