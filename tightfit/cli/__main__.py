"""``python -m tightfit.cli``: the ``tightfit`` command."""

import sys

from tightfit.cli import main

sys.exit(main())
