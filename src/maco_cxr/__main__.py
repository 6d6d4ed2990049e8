"""`python -m maco_cxr` is the `maco-cxr` command."""

import sys

from maco_cxr.cli import main

sys.exit(main())
