"""Field declarations with help text, allowed values and bounds (TRL's ``metadata={"help": ...}``).

``option(default, help=..., choices=..., ge=..., gt=..., le=..., lt=...)`` is a
``dataclasses.field`` whose metadata the config layer reads: :func:`check_fields` validates the
choices and bounds of every field (called by :class:`Section.__post_init__`), :func:`help_text`
returns the help of a field (or, for the core's dataclasses without metadata, the docstring bullet
that names it), and ``flatten=True`` puts a nested section's keys directly into the parent's YAML
mapping (``exclude`` lists keys of it the parent sets itself).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

from llm.config.errors import FieldError

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, *, help: str, choices: Sequence[Any] | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None,
           default_factory: Any = MISSING, flatten: bool = False, exclude: Sequence[str] = ()) -> Any:
    """A dataclass field with help text and the checks :func:`check_fields` applies."""
    metadata: dict[str, Any] = {"help": help}
    for name, value in (("choices", choices), ("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if value is not None:
            metadata[name] = tuple(value) if name == "choices" else value
    if flatten:
        metadata["flatten"] = True
        metadata["exclude"] = tuple(exclude)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def rule_text(f: dataclasses.Field) -> str:
    """The allowed values of a field in words ("one of [...]", ">= 1", "in (0, 1]")."""
    m = f.metadata
    if "choices" in m:
        return f"one of {list(m['choices'])}"
    parts = [f"{sym} {m[k]:g}" for k, sym, _ in _BOUNDS if k in m]
    return " and ".join(parts)


def check_fields(obj: Any) -> None:
    """Raise :class:`FieldError` for the first field outside its choices or bounds (None passes)."""
    owner = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        m = f.metadata
        if value is None or not m:
            continue
        if "choices" in m and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            if value not in m["choices"]:
                raise FieldError(owner, f.name, rule_text(f), value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for key, _, ok in _BOUNDS:
                if key in m and (math.isnan(value) or not ok(value, m[key])):
                    raise FieldError(owner, f.name, rule_text(f), value)


class Section:
    """Base of the LLM config sections: ``__post_init__`` checks every field's choices and
    bounds, then calls :meth:`validate` (cross-field rules)."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise :class:`llm.config.ConfigError`."""


def _docstring_help(cls: type, name: str) -> str | None:
    """The docstring bullet of ``cls`` that names ``name`` (``- ``name``: ...``), one line."""
    doc = cls.__doc__ or ""
    lines = doc.splitlines()
    pattern = re.compile(rf"``{re.escape(name)}``")
    for i, line in enumerate(lines):
        if pattern.search(line):
            text = [line.strip().lstrip("-").strip()]
            for more in lines[i + 1:]:
                stripped = more.strip()
                if not stripped or stripped.startswith("- ") or not more.startswith("  "):
                    break
                text.append(stripped)
            return " ".join(text)
    return None


def help_text(cls: type, f: dataclasses.Field) -> str:
    """Help of field ``f`` of ``cls``: its metadata, else its docstring bullet, else a pointer."""
    if f.metadata.get("help"):
        return str(f.metadata["help"])
    return _docstring_help(cls, f.name) or f"see {cls.__module__}.{cls.__qualname__}"
