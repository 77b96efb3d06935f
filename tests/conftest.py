"""Shared pytest configuration. Each test folder keeps its own fixtures in its conftest.py
(tests/llm/conftest.py: the tiny language models and run configs)."""
