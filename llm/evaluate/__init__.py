"""Evaluation of an LLM team on benchmarks: ``python -m llm.evaluate --config configs/eval_*.yaml``.

- :mod:`llm.evaluate.config`: the eval config (:class:`EvalConfig`, :func:`load_eval_config`);
- :mod:`llm.evaluate.harness`: protocols, traces, resuming, the summary (:func:`evaluate`);
- :mod:`llm.evaluate.metrics`: avg@K, pass@k, maj@K, bootstrap intervals;
- :mod:`llm.evaluate.from_run`: ``--run RUN_DIR``: a trained team from its run directory;
- :mod:`llm.evaluate.compare`: before/after tables of two evaluations (paired bootstrap);
- :mod:`llm.evaluate.cli`: the command line (run by ``__main__.py``).
"""

from llm.evaluate.cli import main
from llm.evaluate.config import EvalConfig, EvalSection, eval_config_from_dict, load_eval_config
from llm.evaluate.harness import evaluate, read_traces, summary_table

__all__ = ["EvalConfig", "EvalSection", "eval_config_from_dict", "evaluate", "load_eval_config", "main",
           "read_traces", "summary_table"]
