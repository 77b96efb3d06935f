"""The one builder: typed, validated dataclasses from plain mappings (parsed YAML), and back.

:func:`build(cls, data, where)` checks every key against the dataclass fields (unknown keys and
renamed keys are errors naming the allowed ones), converts every value to the field's type
(``int`` accepts no 2.5 and no "abc", ``bool`` only true/false, ``float`` also the string
``"1e-3"`` that PyYAML leaves unconverted, ``Literal`` its values, nested dataclasses recursively,
``tuple``/``dict``/``Optional``/unions), builds the instance and turns every validation error into
a :class:`ConfigError` keyed by the dotted YAML path (``team.agents[0].lora.r``).

It works on any dataclass, also the core's (``trust_region.stage.StageConfig`` and its nested
``UpdateConfig``...), so a field added there appears in the YAML, ``--set`` and ``--help`` with no
edit here. :func:`to_plain` is the inverse (for saving resolved configs); :func:`describe_keys`
lists the keys with type, default and help (``--help``).
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Callable, Iterator, Literal, Mapping, Union, get_args, get_origin, get_type_hints

from llm.config.errors import ConfigError, FieldError
from llm.config.fields import help_text, rule_text

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity)$", re.IGNORECASE)
_HINTS: dict[type, dict[str, Any]] = {}


def join(where: str, key: str) -> str:
    """The dotted YAML path of ``key`` inside ``where`` ("" is the top level)."""
    return f"{where}.{key}" if where else key


def type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _is_union(tp: Any) -> bool:
    return get_origin(tp) is Union or isinstance(tp, types.UnionType)


def describe(tp: Any) -> str:
    """A type in words, for messages and ``--help``."""
    if tp is Any:
        return "any value"
    if _is_union(tp):
        return " or ".join(describe(a) for a in get_args(tp))
    origin = get_origin(tp)
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    if origin in (tuple, list) or tp in (tuple, list):
        return "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fail(where: str, tp: Any, value: Any) -> ConfigError:
    shown = "null" if value is None else repr(value)
    return ConfigError(f"{where} must be {describe(tp)}, got {shown}", key=where)


def _union(value: Any, tp: Any, where: str) -> Any:
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise _fail(where, tp, value)
    options = [a for a in args if a is not type(None)]
    errors = []
    for a in options:
        try:
            return coerce(value, a, where)
        except ConfigError as err:
            errors.append(err)
    if len(options) == 1 or any(dataclasses.is_dataclass(a) for a in options):
        raise errors[0]
    raise _fail(where, tp, value)


def _literal(value: Any, tp: Any, where: str) -> Any:
    if value in get_args(tp) and not isinstance(value, bool):
        return value
    raise _fail(where, tp, value)


def _exactly(value: Any, tp: Any, where: str) -> Any:
    """bool and str: only values of that very type (no "no" for false, no 3 for "3")."""
    if isinstance(value, tp):
        return value
    raise _fail(where, tp, value)


def _int(value: Any, tp: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _fail(where, tp, value)


def _float(value: Any, tp: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _NUMBER.match(value.strip()):  # PyYAML reads 1e-3 as a string
        return float(value.strip())
    raise _fail(where, tp, value)


def _tuple(value: Any, tp: Any, where: str) -> tuple:
    args = get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _fail(where, tp, value)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where} must be a list of {len(args)} values, got {list(value)!r}", key=where)
    return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _list(value: Any, tp: Any, where: str) -> list:
    args = get_args(tp)
    return list(_tuple(value, tuple[args[0], ...] if args else tuple, where))


def _dict(value: Any, tp: Any, where: str) -> dict:
    args = get_args(tp)
    if not isinstance(value, Mapping):
        raise _fail(where, tp, value)
    if len(args) == 2:
        return {k: coerce(v, args[1], join(where, str(k))) for k, v in value.items()}
    return dict(value)


def _section(value: Any, tp: Any, where: str) -> Any:
    shorthand = getattr(tp, "SHORTHAND", None)
    if isinstance(value, str) and shorthand:
        value = {shorthand: value}
    return build(tp, value, where)


#: type (or generic origin) -> converter(value, type, where)
CONVERTERS: dict[Any, Callable[[Any, Any, str], Any]] = {
    Literal: _literal, bool: _exactly, int: _int, float: _float, str: _exactly, tuple: _tuple, list: _list, dict: _dict,
}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to type ``tp`` (see the module docstring); ConfigError naming ``where``."""
    if tp is Any:
        return value
    if _is_union(tp):
        return _union(value, tp, where)
    if value is None:
        raise _fail(where, tp, value)
    convert = CONVERTERS.get(get_origin(tp) or tp)
    if convert is not None:
        return convert(value, tp, where)
    if dataclasses.is_dataclass(tp):
        return _section(value, tp, where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _fail(where, tp, value)
    return value


def _own_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def yaml_keys(cls: type) -> dict[str, tuple[dataclasses.Field, dataclasses.Field | None]]:
    """YAML key -> (field, flattened parent field or None) of ``cls``."""
    out: dict[str, tuple[dataclasses.Field, dataclasses.Field | None]] = {}
    hints = type_hints(cls)
    for f in _own_fields(cls):
        if f.metadata.get("flatten"):
            sub = hints[f.name]
            for g in _own_fields(sub):
                if g.name not in f.metadata.get("exclude", ()):
                    out[g.name] = (g, f)
        else:
            out[f.name] = (f, None)
    return out


def _rename_owner(err: Exception, cls: type, where: str) -> ConfigError:
    text = str(err)
    owner = f"{cls.__name__}."
    if owner in text:
        return ConfigError(text.replace(owner, join(where, "")), key=where or None)
    return ConfigError(f"{where or 'config'}: {text}", key=where or None)


def build(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from mapping ``data`` (see the module docstring)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {describe(type(data))} {data!r}", key=where)
    renamed = getattr(cls, "RENAMED", {})
    for key in data:
        if key in renamed:
            raise ConfigError(f"{join(where, key)} is no longer a key: {renamed[key]}", key=join(where, key))
    keys = yaml_keys(cls)
    unknown = [k for k in data if k not in keys]
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(map(str, unknown))}; allowed: {sorted(keys)}",
                          key=join(where, str(unknown[0])))
    hints = type_hints(cls)
    kwargs: dict[str, Any] = {}
    flat: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        f, parent = keys[key]
        if parent is None:
            kwargs[key] = coerce(value, hints[key], join(where, key))
        else:
            flat.setdefault(parent.name, {})[key] = value
    for f in _own_fields(cls):
        if f.metadata.get("flatten"):
            kwargs[f.name] = build(hints[f.name], flat.get(f.name, {}), where)
        elif f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{join(where, f.name)} is required ({help_text(cls, f)})", key=join(where, f.name))
    try:
        return cls(**kwargs)
    except FieldError as err:
        raise err.at(where) from None
    except ConfigError as err:
        if err.key is not None and where and not err.key.startswith(where):
            err.key = join(where, err.key)  # a section's own validate() names its field
        elif err.key is None and where:
            err.key = where
        raise
    except (TypeError, ValueError) as err:
        raise _rename_owner(err, cls, where) from None


def to_plain(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config, in its YAML layout (flattened sections merged)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = to_plain(getattr(obj, f.name))
            if f.metadata.get("flatten"):
                out.update({k: v for k, v in value.items() if k not in f.metadata.get("exclude", ())})
            else:
                out[f.name] = value
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return None if dataclasses.is_dataclass(value) else value
    return _REQUIRED


_REQUIRED = object()


def _section_type(tp: Any) -> tuple[type | None, str]:
    """The dataclass inside ``tp`` (X, X | None, tuple[X, ...]) and the key suffix ("" or "[]")."""
    if dataclasses.is_dataclass(tp):
        return tp, ""
    for a in get_args(tp):
        if a is Ellipsis or a is type(None):
            continue
        inner, suffix = _section_type(a)
        if inner is not None:
            return inner, ("[]" if get_origin(tp) is tuple else suffix)
    return None, ""


def describe_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted key, "type, default", help) for every key of ``cls``, nested sections recursively."""
    for key, (f, parent) in yaml_keys(cls).items():
        owner = type_hints(cls)[parent.name] if parent is not None else cls
        tp = type_hints(owner)[f.name]
        path = f"{prefix}{key}"
        sub, suffix = _section_type(tp)
        if sub is not None:
            yield path + suffix, "section", help_text(owner, f)
            yield from describe_keys(sub, f"{path}{suffix}.")
        else:
            rule = rule_text(f)
            default = _default(f)
            kind = describe(tp) + (f", {rule}" if rule else "")
            kind += ", required" if default is _REQUIRED else f", default {default!r}"
            yield path, kind, help_text(owner, f)


def help_epilog(cls: type, title: str, docs: str) -> str:
    """The ``--help`` text of a config class: every section and key with its help, then the docs."""
    lines = [f"{title} (YAML keys; override any with --set KEY=VALUE):", ""]
    for key, kind, text in describe_keys(cls):
        if kind == "section":
            lines.append(f"  {key}:  {text}")
        else:
            lines.append(f"    {key}  ({kind})")
            lines.append(f"        {text}")
    lines += ["", f"Documentation: {docs}"]
    return "\n".join(lines)
