"""YAML files in, with the line of every key; ``--set a.b=c`` overrides.

:func:`load_yaml` rejects a missing file, a directory, non-UTF-8 bytes, tab indentation and
malformed YAML with one-line :class:`ConfigError` messages naming the file and line, and returns the
data plus a map dotted key -> line. :func:`load_config_file` runs a builder on the data and stamps
the file and line of the offending key on its ConfigError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml

from llm.config.errors import ConfigError

T = TypeVar("T")
_INDEX = re.compile(r"^(.*)\[(\d+)\]$")


def read_text(path: str | Path, what: str = "file", error: type[ConfigError] = ConfigError) -> str:
    """UTF-8 text of a file; ``error`` (a ConfigError class) for a missing file, a directory or
    bytes that are not UTF-8 (naming the line)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise error(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise error(f"{what} {path}:{line}: not UTF-8 text (byte {err.start} is {data[err.start:err.start + 1]!r}); "
                    "save it as UTF-8") from None


def _walk(node: Any, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else str(k.value)
            lines[path] = k.start_mark.line + 1
            _walk(v, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            lines[path] = item.start_mark.line + 1
            _walk(item, path, lines)


def parse_yaml(text: str, file: str = "<string>") -> tuple[Any, dict[str, int]]:
    """(data, dotted key -> line) of YAML text; ConfigError with file:line when malformed."""
    for lineno, line in enumerate(text.splitlines(), 1):
        indent = line[: len(line) - len(line.lstrip())]
        if "\t" in indent:
            raise ConfigError("tab character in the indentation; YAML indents with spaces only",
                              file=file, line=lineno)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"malformed YAML: {problem}", file=file,
                          line=mark.line + 1 if mark is not None else None) from None
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines)
    return data, lines


def load_yaml(path: str | Path) -> tuple[Any, dict[str, int]]:
    """(data, key lines) of a YAML config file (see the module docstring)."""
    return parse_yaml(read_text(path, "config file"), str(path))


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for part in key.split("."):
        indices = []
        m = _INDEX.match(part)
        while m:
            indices.insert(0, int(m.group(2)))
            part = m.group(1)
            m = _INDEX.match(part)
        if not part:
            raise ConfigError(f"--set: bad key {key!r} (use dotted names like train.update.delta)")
        parts.append(part)
        parts += indices
    return parts


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """``data`` with every ``KEY=VALUE`` of ``overrides`` set (VALUE parsed as YAML; KEY dotted,
    list items as ``team.agents[1].model``); missing mappings are created."""
    if not overrides:
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("--set needs a config that is a mapping at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.update.delta=0.02), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = _split_key(key.strip())
        node: Any = data
        for here, nxt in zip(parts[:-1], parts[1:]):
            if isinstance(here, int):
                if not isinstance(node, list) or here >= len(node):
                    raise ConfigError(f"--set {key}: index {here} out of range", key=key)
                node = node[here]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {here} is not inside a mapping", key=key)
            if here not in node or node[here] is None:
                node[here] = [] if isinstance(nxt, int) else {}
            node = node[here]
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"--set {key}: index {last} out of range", key=key)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {key}: the parent is not a mapping", key=key)
        node[last] = value
    return data


def locate(err: ConfigError, file: str, lines: dict[str, int]) -> ConfigError:
    """Stamp ``file`` and the line of ``err.key`` (or of its nearest parent key) on ``err``."""
    if err.file is None:
        err.file = file
        key = err.key
        while key and err.line is None:
            err.line = lines.get(key)
            cut = max(key.rfind("."), key.rfind("["))
            key = key[:cut] if cut > 0 else ""
    return err


def load_config_file(path: str | Path, builder: Callable[..., T], overrides: Sequence[str] = (),
                     **kwargs: Any) -> T:
    """``builder(data, **kwargs)`` on the YAML file with ``overrides`` applied; its ConfigError
    names the file and line."""
    data, lines = load_yaml(path)
    try:
        data = apply_overrides(data, overrides)
        return builder(data, **kwargs)
    except ConfigError as err:
        raise locate(err, str(path), lines) from None
