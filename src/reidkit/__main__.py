"""``python -m reidkit`` runs the command line."""

import sys

from reidkit.cli import main

sys.exit(main())
