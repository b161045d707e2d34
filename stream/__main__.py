"""`python -m stream ...`: the CLI entry, nothing else."""

import sys

from stream.cli import main

sys.exit(main())
