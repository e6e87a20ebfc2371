"""`python -m streamvlm ...`: the command line, as the `streamvlm` script runs it."""

import sys

from streamvlm.cli import main

# Guarded so that walking the package (as the no-ROS import test does) does not run the CLI.
if __name__ == "__main__":
    sys.exit(main())
