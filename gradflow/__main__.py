"""`python -m gradflow`: the same as the `gradflow` command."""

import sys

from .cli import main

sys.exit(main())
