"""Shared pytest fixtures (keep minimal: each area keeps its fixtures in its own module)."""

from llm_fixtures import tiny_llama_dir, tiny_model_dirs, tiny_no_template_dir, tiny_qwen3_dir  # noqa: F401
