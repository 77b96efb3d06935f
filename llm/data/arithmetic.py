"""Simple arithmetic items with stated ranges: ``a op b`` for a in ``a``, b in ``b``, op in ``ops``.

The generator enumerates every item of the stated ranges (each ``(a, op, b)`` once), drops the ones
whose answer breaks the stated rules (negative answers unless ``allow_negative``; ``/`` keeps only
exact divisions with b != 0), shuffles them with ``seed`` and cuts the shuffled list in two:

- the first ``heldout_size`` items are the **held-out** split (what ``llm.evaluate --run`` scores);
- the next ``size`` items (default: all the rest) are the **train** split.

The two splits are disjoint by construction, and every item's id is ``arith/{a}{op}{b}``, so the
contamination check of the evaluation (ids, normalised prompts and n-grams) can verify it.

Answers are integers (``Problem.kind == "integer"``), graded by the training task's integer grader.
Example (the CPU demo): ``a: [0, 29]``, ``b: [0, 29]``, ``ops: ["+"]`` -> 900 items, 200 held out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm.config.errors import ConfigError
from llm.config.fields import Section, option
from llm.rewards.base import Problem

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
             "/": lambda a, b: a // b}
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class ArithmeticConfig(Section):
    """``task.arithmetic``: the ranges, operators and the held-out split of ``kind: arithmetic``."""

    a: tuple[int, int] = option((0, 9), help="inclusive range [lo, hi] of the first operand")
    b: tuple[int, int] = option((0, 9), help="inclusive range [lo, hi] of the second operand")
    ops: tuple[str, ...] = option(("+",), help=f"operators, any of {list(OPERATORS)} ('/' keeps exact "
                                  "divisions only)")
    allow_negative: bool = option(False, help="keep items with a negative answer (a - b with b > a)")
    template: str = option("What is {a} {op} {b}?", help="prompt of an item ({a}, {op}, {b})")
    heldout_size: int = option(200, ge=0, help="items reserved for the held-out split (never trained on)")

    def validate(self) -> None:
        object.__setattr__(self, "a", tuple(self.a))
        object.__setattr__(self, "b", tuple(self.b))
        object.__setattr__(self, "ops", tuple(self.ops))
        for name in ("a", "b"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"task.arithmetic.{name} must be [lo, hi] with lo <= hi, got {list(lo_hi)}",
                                  key=f"task.arithmetic.{name}")
        bad = [op for op in self.ops if op not in OPERATORS]
        if bad or not self.ops:
            raise ConfigError(f"task.arithmetic.ops must be a non-empty subset of {list(OPERATORS)}, got "
                              f"{list(self.ops)}", key="task.arithmetic.ops")
        for field in ("{a}", "{b}"):
            if field not in self.template:
                raise ConfigError(f"task.arithmetic.template must contain {field}", key="task.arithmetic.template")


def all_items(config: ArithmeticConfig) -> list[tuple[int, str, int, int]]:
    """Every ``(a, op, b, answer)`` of the ranges that the rules keep, in a fixed order."""
    out = []
    for op in config.ops:
        for a in range(config.a[0], config.a[1] + 1):
            for b in range(config.b[0], config.b[1] + 1):
                if op == "/" and (b == 0 or a % b):
                    continue
                answer = OPERATORS[op](a, b)
                if answer < 0 and not config.allow_negative:
                    continue
                out.append((a, op, b, answer))
    return out


def arithmetic_split(config: ArithmeticConfig, seed: int, split: str, size: int | None = None) -> list[Problem]:
    """The ``split`` ("train" | "heldout") of the shuffled items (see the module docstring).

    ``size`` caps the train split (None: every item not held out). Raises ConfigError when the
    ranges hold fewer than ``heldout_size`` + 1 items.
    """
    if split not in SPLITS:
        raise ConfigError(f"task.split must be one of {list(SPLITS)}, got {split!r}", key="task.split")
    items = all_items(config)
    if len(items) <= config.heldout_size:
        raise ConfigError(f"task.arithmetic: the ranges hold {len(items)} items, not more than heldout_size="
                          f"{config.heldout_size}; widen a/b or lower heldout_size", key="task.arithmetic")
    order = np.random.default_rng(seed).permutation(len(items)).tolist()
    picked = order[: config.heldout_size] if split == "heldout" else order[config.heldout_size:]
    if split == "train" and size is not None:
        picked = picked[:size]
    problems = []
    for i in picked:
        a, op, b, answer = items[i]
        problems.append(Problem(id=f"arith/{a}{op}{b}", prompt=config.template.format(a=a, op=op, b=b),
                                answer=answer, kind="integer", meta={"a": a, "op": op, "b": b}))
    return problems
