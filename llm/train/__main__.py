"""``python -m llm.train``: see :mod:`llm.train.cli`."""

import sys

from llm.train.cli import main

sys.exit(main())
