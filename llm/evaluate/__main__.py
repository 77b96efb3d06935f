"""``python -m llm.evaluate``: see :mod:`llm.evaluate.cli`."""

import sys

from llm.evaluate.cli import main

sys.exit(main())
