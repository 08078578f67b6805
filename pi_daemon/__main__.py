"""`python -m pi_daemon` is the same as the `pi-daemon` console script."""

import sys

from pi_daemon.cli import main

sys.exit(main())
