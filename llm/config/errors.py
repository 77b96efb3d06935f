"""The one error type of bad input: :class:`ConfigError` (subclasses name the kind of input).

A ConfigError carries the dotted ``key`` it is about (``train.update.delta``) and, once the
config layer knows it, the ``file`` and ``line`` the key came from; ``str(err)`` is one line:
``configs/run.yaml:12: train.seed must be an integer, got 'abc'``.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid configuration or input, raised before any model is loaded."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(str(message).split())  # one line
        self.key = key
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return where + self.message


class FieldError(ConfigError):
    """A field value outside its allowed set or range; the builder renames ``Class.field`` to
    the YAML key (``team.agents[0].lora.r``)."""

    def __init__(self, owner: str, name: str, rule: str, value: object) -> None:
        super().__init__(f"{owner}.{name} must be {rule}, got {value!r}", key=name)
        self.owner, self.name, self.rule, self.value = owner, name, rule, value

    def at(self, where: str) -> ConfigError:
        key = f"{where}.{self.name}" if where else self.name
        return ConfigError(f"{key} must be {self.rule}, got {self.value!r}", key=key)
