"""The one config layer of the LLM side.

- :mod:`llm.config.errors`: :class:`ConfigError` (the one error type of bad input).
- :mod:`llm.config.fields`: ``option(default, help=..., choices=..., ge=...)`` field declarations,
  :class:`Section` (validates choices and bounds), help texts.
- :mod:`llm.config.choices`: every allowed-value set shared by several modules (declared once).
- :mod:`llm.config.build`: :func:`build` (dataclass from a mapping, typed and validated),
  :func:`to_plain`, ``--help`` rendering.
- :mod:`llm.config.yamlio`: YAML files with key lines, ``--set`` overrides.
- :mod:`llm.config.cli`: the shared command-line parts.
- :mod:`llm.config.sections`: the sections that training, evaluation and plug-and-play share
  (``team:``, ``sampling:``).

The entry points' own configs live with them: :mod:`llm.train.config`, :mod:`llm.evaluate.config`,
:mod:`llm.plug_and_play.config`.
"""

from llm.config.build import build, to_plain
from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.config.yamlio import apply_overrides, load_config_file, load_yaml

__all__ = ["ConfigError", "Section", "apply_overrides", "build", "load_config_file", "load_yaml", "option",
           "to_plain"]
