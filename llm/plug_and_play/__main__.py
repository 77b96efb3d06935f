"""``python -m llm.plug_and_play``: see :mod:`llm.plug_and_play.cli`."""

import sys

from llm.plug_and_play.cli import main

sys.exit(main())
