"""`python -m orchestrator ...` is the `duet` CLI."""

import sys

from duet.cli import main

sys.exit(main())
