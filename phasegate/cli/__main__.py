"""`python -m phasegate.cli ...` is the `phasegate` command."""

import sys

from phasegate.cli.main import main

sys.exit(main())
