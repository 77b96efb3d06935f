"""Plug-and-play agent replacement: ``python -m llm.plug_and_play --config CONFIG.yaml``.

- :mod:`llm.plug_and_play.config`: the config (:class:`PnPConfig`, :func:`load_pnp_config`);
- :mod:`llm.plug_and_play.distill`: token KL, distillation, weight noise, the tokenizer check;
- :mod:`llm.plug_and_play.pipeline`: the steps (:func:`run`);
- :mod:`llm.plug_and_play.cli`: the command line (run by ``__main__.py``).
"""

from llm.plug_and_play.cli import main
from llm.plug_and_play.config import (
    ContextsSection,
    DistillSection,
    MixSection,
    PnPConfig,
    ReplacementSection,
    ScoreSection,
    load_pnp_config,
    pnp_config_from_dict,
)
from llm.plug_and_play.distill import (
    TokenizerMismatchError,
    best_row,
    check_shared_tokenizer,
    distill,
    measure_kl,
    message_logprobs,
    perturb_weights,
)
from llm.plug_and_play.pipeline import continuation_config, run, summary_lines, team_score

__all__ = ["ContextsSection", "DistillSection", "MixSection", "PnPConfig", "ReplacementSection", "ScoreSection",
           "TokenizerMismatchError", "best_row", "check_shared_tokenizer", "continuation_config", "distill",
           "load_pnp_config", "main", "measure_kl", "message_logprobs", "perturb_weights", "pnp_config_from_dict",
           "run", "summary_lines", "team_score"]
