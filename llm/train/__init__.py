"""Training of an LLM team: ``python -m llm.train --config CONFIG.yaml``.

- :mod:`llm.train.config`: the run config (:class:`RunConfig`, :func:`load_config`);
- :mod:`llm.train.trainer`: :class:`Trainer`, :func:`train` (run directory, resuming);
- :mod:`llm.train.cli`: the command line (run by ``__main__.py``).
"""

from llm.train.cli import main
from llm.train.config import RunConfig, TrainSection, config_from_dict, load_config
from llm.train.trainer import Trainer, TrainResult, train

__all__ = ["RunConfig", "TrainResult", "TrainSection", "Trainer", "config_from_dict", "load_config", "main", "train"]
