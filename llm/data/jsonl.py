"""The one JSONL reader (task files, benchmark files, evaluation traces, training metrics).

:func:`read_jsonl` yields ``(line number, value)`` for every non-blank line. A missing file, a
directory, non-UTF-8 bytes and invalid JSON are :class:`DataError` messages naming the path and
line. With ``skip_bad`` unreadable lines are skipped (each reported through ``on_skip``): an
interrupted append leaves a truncated last line, which must not block resuming.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from llm.config.errors import ConfigError
from llm.config.yamlio import read_text


class DataError(ConfigError):
    """A data file is missing or malformed; the message names the path, the line and the field."""


def read_jsonl(path: str | Path, *, what: str = "file", skip_bad: bool = False,
               on_skip: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` per non-blank line of ``path`` (see the module docstring)."""
    path = Path(path).expanduser()
    text = read_text(path, what, DataError)
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            if not skip_bad:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if on_skip is not None:
                on_skip(lineno, line)
            continue
        yield lineno, value
