"""``python -m searchtune.cli``: the same as the ``searchtune`` command."""

import sys

from searchtune.cli.main import main

sys.exit(main())
