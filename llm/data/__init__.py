"""Data of the LLM side.

- :mod:`llm.data.benchmarks`: benchmark loaders (AIME 2024/2025, MATH-500, ZebraLogic, AutoLogi);
- :mod:`llm.data.prompts`: prompt templates;
- :mod:`llm.data.tasks`: training tasks (``task:``), :class:`~llm.data.tasks.PromptSource`;
- :mod:`llm.data.contamination`: training vs evaluation overlap checks;
- :mod:`llm.data.jsonl`: the one JSONL reader and :class:`~llm.data.jsonl.DataError`.
"""

from llm.data.benchmarks import (
    BENCHMARKS,
    BenchmarkSpec,
    DataError,
    benchmark_spec,
    load_aime,
    load_autologi,
    load_benchmark,
    load_math500,
    load_problems,
    load_zebralogic,
    read_records,
    resolve_benchmark_file,
    shared_benchmark_dir,
)
from llm.data.prompts import TEMPLATES, apply_template

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "DataError",
    "TEMPLATES",
    "apply_template",
    "benchmark_spec",
    "load_aime",
    "load_autologi",
    "load_benchmark",
    "load_math500",
    "load_problems",
    "load_zebralogic",
    "read_records",
    "resolve_benchmark_file",
    "shared_benchmark_dir",
]
