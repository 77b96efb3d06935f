"""Contamination check between training problems and evaluation sets.

Three levels, from strict to loose; an evaluation item is flagged when any level matches:

- ``exact``: the raw problem texts are identical (after stripping outer whitespace);
- ``normalized``: identical after :func:`normalize_text` (Unicode NFKC, lowercase, LaTeX
  delimiters and commands' backslashes, punctuation and whitespace removed), which catches copies
  that differ only in formatting;
- ``ngram``: at least ``ngram_threshold`` of the evaluation item's word ``n``-grams (default 13,
  the GPT-3 decontamination length) appear in the training texts. This catches an evaluation
  problem embedded in a longer training prompt (a template around it) or lightly edited.

The text compared is ``Problem.meta["question"]`` when present (the raw problem, without a prompt
template), else ``Problem.prompt``.

``policy``: ``"error"`` raises :class:`ContaminationError` listing the flagged ids, ``"warn"``
emits a ``ContaminationWarning`` (and logs), ``"off"`` only returns the report.

Command line (exit status 1 when anything is flagged)::

    python -m llm.data.contamination --train data/train.jsonl --field problem --eval aime2024 math500
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from llm.config.choices import CONTAMINATION_POLICIES as POLICIES
from llm.data.benchmarks import DataError, load_benchmark, load_problems
from llm.rewards.base import Problem

log = logging.getLogger(__name__)


class ContaminationError(RuntimeError):
    """Evaluation items were found in the training data."""


class ContaminationWarning(UserWarning):
    """Evaluation items were found in the training data (policy "warn")."""


_LATEX_DELIMS = re.compile(r"\$+|\\\(|\\\)|\\\[|\\\]")
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Canonical form for overlap checks: NFKC, lowercase, LaTeX delimiters and backslashes gone,
    every run of non-word characters a single space."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _LATEX_DELIMS.sub(" ", t).replace("\\", " ")
    t = _NON_WORD.sub(" ", t).replace("_", " ")
    return " ".join(t.split())


def problem_text(p: Problem | str) -> str:
    if isinstance(p, str):
        return p
    q = p.meta.get("question") if isinstance(p.meta, dict) else None
    return q if isinstance(q, str) and q.strip() else p.prompt


def word_ngrams(normalized: str, n: int) -> set[tuple[str, ...]]:
    words = normalized.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Match:
    """An evaluation item found in the training data."""

    eval_id: str
    train_id: str
    level: str  # "exact" | "normalized" | "ngram"
    overlap: float  # fraction of the eval item's n-grams found (1.0 for exact / normalized)


@dataclass
class ContaminationReport:
    n_train: int
    n_eval: int
    matches: list[Match] = field(default_factory=list)

    @property
    def flagged_ids(self) -> list[str]:
        return sorted({m.eval_id for m in self.matches})

    def count(self, level: str) -> int:
        return len({m.eval_id for m in self.matches if m.level == level})

    def summary(self, name: str = "evaluation set") -> str:
        head = (
            f"contamination check: {len(self.flagged_ids)} of {self.n_eval} items of {name} overlap "
            f"{self.n_train} training problems (exact {self.count('exact')}, normalized "
            f"{self.count('normalized')}, n-gram {self.count('ngram')})"
        )
        if not self.matches:
            return head
        shown = ", ".join(f"{m.eval_id}~{m.train_id} ({m.level}, {m.overlap:.2f})" for m in self.matches[:10])
        more = f", ... {len(self.matches) - 10} more" if len(self.matches) > 10 else ""
        return f"{head}: {shown}{more}"


def _ids(items: Sequence[Problem | str], prefix: str) -> list[str]:
    return [it.id if isinstance(it, Problem) else f"{prefix}[{i}]" for i, it in enumerate(items)]


def check_contamination(
    train: Sequence[Problem | str],
    evaluation: Sequence[Problem | str],
    *,
    ngram: int = 13,
    ngram_threshold: float = 0.5,
) -> ContaminationReport:
    """Compare every evaluation item with all training items at the three levels (module doc).

    Cost: O(total words) to index the training texts, O(words) per evaluation item.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    if not 0 < ngram_threshold <= 1:
        raise ValueError(f"ngram_threshold must be in (0, 1], got {ngram_threshold}")
    train_ids, eval_ids = _ids(train, "train"), _ids(evaluation, "eval")
    raw_index: dict[str, str] = {}
    norm_index: dict[str, str] = {}
    gram_index: dict[tuple[str, ...], str] = {}
    for tid, item in zip(train_ids, train):
        text = problem_text(item)
        raw_index.setdefault(text.strip(), tid)
        norm = normalize_text(text)
        norm_index.setdefault(norm, tid)
        for g in word_ngrams(norm, ngram):
            gram_index.setdefault(g, tid)
    report = ContaminationReport(n_train=len(train), n_eval=len(evaluation))
    for eid, item in zip(eval_ids, evaluation):
        text = problem_text(item)
        norm = normalize_text(text)
        if text.strip() in raw_index:
            report.matches.append(Match(eid, raw_index[text.strip()], "exact", 1.0))
            continue
        if norm in norm_index:
            report.matches.append(Match(eid, norm_index[norm], "normalized", 1.0))
            continue
        grams = word_ngrams(norm, ngram)
        if not grams:
            continue
        hits = [gram_index[g] for g in grams if g in gram_index]
        overlap = len(hits) / len(grams)
        if overlap >= ngram_threshold:
            top = max(set(hits), key=hits.count)
            report.matches.append(Match(eid, top, "ngram", overlap))
    return report


def enforce(report: ContaminationReport, policy: str, name: str = "evaluation set") -> ContaminationReport:
    """Apply ``policy`` ("error" | "warn" | "off") to a report; returns it unchanged."""
    if policy not in POLICIES:
        raise ValueError(f"contamination policy must be one of {POLICIES}, got {policy!r}")
    if not report.matches or policy == "off":
        if not report.matches:
            log.info(report.summary(name))
        return report
    message = report.summary(name)
    if policy == "error":
        raise ContaminationError(message + ". Remove these items from the training data or set the policy to 'warn'.")
    log.warning(message)
    warnings.warn(message, ContaminationWarning, stacklevel=2)
    return report


def check_against_benchmarks(
    train: Sequence[Problem | str],
    benchmarks: Iterable[str] = ("aime2024", "aime2025", "math500", "zebralogic"),
    *,
    policy: str = "warn",
    root: str | None = None,
    ngram: int = 13,
    ngram_threshold: float = 0.5,
) -> dict[str, ContaminationReport]:
    """Check training problems against named benchmarks (those that can be found; the others are
    skipped with a log line) and apply ``policy`` to each. Call before training."""
    reports: dict[str, ContaminationReport] = {}
    for name in benchmarks:
        try:
            items = load_benchmark(name, root=root)
        except DataError as exc:
            log.info("contamination check: benchmark %s skipped (%s)", name, exc)
            continue
        report = check_contamination(train, items, ngram=ngram, ngram_threshold=ngram_threshold)
        reports[name] = enforce(report, policy, name)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.data.contamination", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", required=True, help="training JSONL/parquet files (or datasets ids)")
    parser.add_argument("--field", default="problem", help="problem-text field of the training files")
    parser.add_argument("--eval", nargs="+", default=["aime2024", "aime2025", "math500", "zebralogic"],
                        help="benchmark names (aime2024, aime2025, math500, zebralogic, autologi)")
    parser.add_argument("--eval-path", default=None, help="file for a single --eval benchmark (e.g. AutoLogi)")
    parser.add_argument("--ngram", type=int, default=13)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    train: list[Problem] = []
    for path in args.train:
        train += load_problems(path, kind="raw", benchmark=str(path), id_field="", problem_field=args.field,
                               answer_field=args.field)
    flagged = 0
    for name in args.eval:
        items = load_benchmark(name, path=args.eval_path if len(args.eval) == 1 else None)
        report = check_contamination(train, items, ngram=args.ngram, ngram_threshold=args.threshold)
        print(report.summary(name))
        flagged += len(report.flagged_ids)
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
