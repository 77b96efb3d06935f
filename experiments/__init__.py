"""Runnable studies: each writes results/<name>/ (JSON + CSV) and prints a summary."""
