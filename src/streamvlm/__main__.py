"""`python -m streamvlm ...`: the command line, as the `streamvlm` script runs it."""

import sys

from streamvlm.cli import main

sys.exit(main())
