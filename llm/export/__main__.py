"""``python -m llm.export``: see :mod:`llm.export.cli`."""

import sys

from llm.export.cli import main

sys.exit(main())
