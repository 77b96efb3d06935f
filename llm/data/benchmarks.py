"""Evaluation benchmark loaders: AIME 2024/2025, MATH-500, ZebraLogic, AutoLogi -> ``Problem``.

Where the data comes from, first match wins:

1. ``path=``: a JSONL / JSON / parquet file, or a Hugging Face ``datasets`` id (``hf:org/name`` or
   any ``org/name`` that is not an existing path; needs ``pip install datasets`` and network);
2. ``root=`` or the environment variable ``TEAMTR_BENCHMARKS_DIR``: a folder laid out like the
   shared benchmark folder (``aime2024/test.jsonl``, ``zebralogic/test.jsonl``, ...); when given,
   it is the only place looked at;
3. the copies packaged in ``llm/data/files/`` (AIME 2024, AIME 2025, MATH-500; MIT);
4. ``../shared/benchmarks/`` and ``../benchmarks/`` beside the project root.

ZebraLogic is never packaged (gated source; see ``llm/data/files/LICENSES.md``). AutoLogi is not
available here at all: give its official file (``AutoLogi_en.jsonl`` / ``AutoLogi_cn.jsonl``) or a
``datasets`` id. A missing file or a malformed record is an error naming the path, the line and the
missing field.

Every loader returns ``list[Problem]`` with ``Problem.prompt`` = the templated prompt (see
:mod:`llm.data.prompts`), ``Problem.meta["question"]`` = the raw problem text,
``Problem.meta["benchmark"]`` = the benchmark name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from llm.config.yamlio import read_text
from llm.data.jsonl import DataError, read_jsonl
from llm.data.prompts import apply_template
from llm.rewards.base import Problem

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGED_DIR = Path(__file__).resolve().parent / "files"
ENV_ROOT = "TEAMTR_BENCHMARKS_DIR"


@dataclass(frozen=True)
class BenchmarkSpec:
    """One named benchmark: where its file sits under a benchmark root, which grader applies,
    its default prompt template and the paper's K (samples per problem, papers.md A.9)."""

    name: str
    relpath: str | None
    kind: str
    template: str
    k: int
    packaged: str | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime2024": BenchmarkSpec("aime2024", "aime2024/test.jsonl", "integer", "dapo", 64, "aime2024.jsonl"),
    "aime2025": BenchmarkSpec("aime2025", "aime2025/test.jsonl", "integer", "dapo", 64, "aime2025.jsonl"),
    "math500": BenchmarkSpec("math500", "math500/test.jsonl", "math", "dapo", 4, "math500.jsonl"),
    "zebralogic": BenchmarkSpec("zebralogic", "zebralogic/test.jsonl", "zebra", "zebra_json", 64),
    # K: 64 per TeamTR's report; SAT used 8 for its planning group (papers.md A.9).
    "autologi": BenchmarkSpec("autologi", None, "autologi", "raw", 64),
}


# ----------------------------------------------------------------------------- reading records


def candidate_roots(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Benchmark roots in search order (explicit root, env var, shared folders)."""
    roots: list[Path] = []
    if root is not None:
        roots.append(Path(root))
    elif os.environ.get(ENV_ROOT):
        roots.append(Path(os.environ[ENV_ROOT]))
    roots += [PROJECT_ROOT.parent / "shared" / "benchmarks", PROJECT_ROOT.parent / "benchmarks"]
    return roots


def shared_benchmark_dir() -> Path | None:
    """The shared benchmark folder beside the project if present (tests skip without it)."""
    for path in candidate_roots():
        if path.is_dir():
            return path
    return None


def resolve_benchmark_file(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The file a named benchmark is read from (search order in the module docstring)."""
    spec = benchmark_spec(name)
    if spec.relpath is None:
        raise DataError(
            f"benchmark {name!r} has no bundled or shared copy here; pass path=<AutoLogi_en.jsonl> "
            "(official format, github.com/8188zq/AutoLogi testing-data/) or a datasets id"
        )
    if root is not None or os.environ.get(ENV_ROOT):
        # an explicit root (argument or $TEAMTR_BENCHMARKS_DIR) is the only place looked at
        path = candidate_roots(root)[0] / spec.relpath
        if path.is_file():
            return path
        origin = "root" if root is not None else f"${ENV_ROOT}"
        raise DataError(f"benchmark {name!r}: file not found: {path} (from {origin})")
    tried: list[Path] = []
    if spec.packaged is not None:
        path = PACKAGED_DIR / spec.packaged
        if path.is_file():
            return path
        tried.append(path)
    for base in candidate_roots(None)[-2:]:
        path = base / spec.relpath
        if path.is_file():
            return path
        tried.append(path)
    raise DataError(f"benchmark {name!r}: no file found; tried {', '.join(str(p) for p in tried)}")


def read_records(source: str | os.PathLike[str], split: str = "test") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` from a JSONL/JSON/parquet file or a ``datasets`` id; ``where``
    is ``"path:line"`` (or ``"id[split][row]"``) for error messages."""
    text = str(source)
    path = Path(text[3:] if text.startswith("hf:") else text)
    if text.startswith("hf:") or (not path.exists() and _looks_like_hub_id(text)):
        yield from _read_hub(text[3:] if text.startswith("hf:") else text, split)
        return
    if path.is_dir():
        raise DataError(f"benchmark file {path} is a directory, not a file")
    if not path.exists():
        raise DataError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for lineno, record in read_jsonl(path, what="benchmark file"):
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield f"{path}:{lineno}", record
    elif suffix == ".json":
        try:
            data = json.loads(read_text(path, "benchmark file", DataError))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg})") from exc
        if isinstance(data, dict):
            data = data.get(split, data.get("data"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of records (or {{'{split}': [...]}})")
        for i, record in enumerate(data):
            if not isinstance(record, dict):
                raise DataError(f"{path}[{i}]: expected a JSON object")
            yield f"{path}[{i}]", record
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
        for i, record in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", record
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.endswith((".jsonl", ".json", ".parquet"))


def _read_hub(dataset_id: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"loading the Hugging Face dataset {dataset_id!r} needs the `datasets` package "
            "(pip install datasets) and network access; or pass a local .jsonl/.parquet path"
        ) from exc
    ds = datasets.load_dataset(dataset_id, split=split)
    for i, record in enumerate(ds):
        yield f"{dataset_id}[{split}][{i}]", dict(record)


def _field(record: dict[str, Any], name: str, where: str) -> Any:
    """``record[name]`` (dotted names go into nested dicts), else a DataError naming it."""
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: record lacks the field {name!r} (has {sorted(record)})")
        value = value[part]
    return value


# ----------------------------------------------------------------------------- loaders


def load_problems(
    source: str | os.PathLike[str],
    *,
    kind: str,
    benchmark: str = "custom",
    id_field: str = "id",
    problem_field: str = "problem",
    answer_field: str = "answer",
    template: str = "raw",
    split: str = "test",
    limit: int | None = None,
) -> list[Problem]:
    """Generic loader: one Problem per record of ``source`` (file or ``datasets`` id)."""
    problems: list[Problem] = []
    for where, record in read_records(source, split):
        question = _field(record, problem_field, where)
        answer = _field(record, answer_field, where)
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: field {problem_field!r} must be a non-empty string")
        pid = str(_field(record, id_field, where)) if id_field else f"{benchmark}-{len(problems)}"
        nested = record.get("meta")
        meta = dict(nested) if isinstance(nested, dict) else {}
        meta.update({k: v for k, v in record.items() if k not in (id_field, problem_field, answer_field, "meta")})
        meta.update(question=question, benchmark=benchmark, source=where.rsplit(":", 1)[0])
        prompt = apply_template(template, question, answer=answer)
        problems.append(Problem(id=pid, prompt=prompt, answer=answer, kind=kind, meta=meta))
        if limit is not None and len(problems) >= limit:
            break
    _check_unique(problems, str(source))
    return problems


def _check_unique(problems: list[Problem], source: str) -> None:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(f"{source}: duplicate problem id {p.id!r}")
        seen.add(p.id)


def load_aime(year: int, *, path: str | None = None, root: str | None = None, template: str | None = None,
              limit: int | None = None) -> list[Problem]:
    """AIME ``year`` (2024 or 2025): 30 problems, integer answers (kind ``integer``)."""
    name = f"aime{year}"
    if name not in BENCHMARKS:
        raise ValueError(f"AIME year must be 2024 or 2025, got {year}")
    return load_benchmark(name, path=path, root=root, template=template, limit=limit)


def load_math500(*, path: str | None = None, root: str | None = None, template: str | None = None,
                 limit: int | None = None) -> list[Problem]:
    """MATH-500 (PRM800K test split): 500 problems, LaTeX answers (kind ``math``)."""
    return load_benchmark("math500", path=path, root=root, template=template, limit=limit)


def load_zebralogic(*, path: str | None = None, root: str | None = None, template: str | None = None,
                    limit: int | None = None) -> list[Problem]:
    """ZebraLogic grid mode: 1000 puzzles, answers ``{"header", "rows"}`` (kind ``zebra``)."""
    return load_benchmark("zebralogic", path=path, root=root, template=template, limit=limit)


AUTOLOGI_FIELDS = ("idx", "prompt", "code.Inputs_Check_code", "code.Constraint_List_code")


def load_autologi(path: str, *, lang: str | None = None, split: str = "train", limit: int | None = None) -> list[Problem]:
    """AutoLogi in its official format (``8188zq/AutoLogi`` ``testing-data/AutoLogi_{en,cn}.jsonl``):
    fields ``idx, prompt, question, logi_constraints, input_format, example, code{Inputs_Check_code,
    Constraint_List_code, Traverse_code}, lang``. The prompt is the item's own ``prompt``; the
    answer is its verifier code (graded by :class:`llm.rewards.AutoLogiGrader`). ``lang`` keeps
    only ``"en"`` or ``"cn"`` items."""
    if lang not in (None, "en", "cn"):
        raise ValueError(f"load_autologi: lang must be 'en', 'cn' or None, got {lang!r}")
    problems: list[Problem] = []
    for where, record in read_records(path, split):
        for name in AUTOLOGI_FIELDS:
            _field(record, name, where)
        item_lang = str(record.get("lang", "")).lower() or None
        if lang is not None and item_lang not in (lang, "zh" if lang == "cn" else lang):
            continue
        code = record["code"]
        answer = {"Inputs_Check_code": code["Inputs_Check_code"], "Constraint_List_code": code["Constraint_List_code"]}
        meta = {k: record[k] for k in ("question", "logi_constraints", "input_format", "example") if k in record}
        meta.update(
            lang=item_lang,
            traverse_code=code.get("Traverse_code"),
            question=record.get("question") or record["prompt"],
            benchmark="autologi",
            source=where.rsplit(":", 1)[0],
        )
        pid = f"autologi-{item_lang or 'xx'}-{record['idx']}"
        problems.append(Problem(id=pid, prompt=record["prompt"], answer=answer, kind="autologi", meta=meta))
        if limit is not None and len(problems) >= limit:
            break
    _check_unique(problems, str(path))
    return problems


def _shared_layout_loader(spec: BenchmarkSpec) -> Callable[..., list[Problem]]:
    def load(source: str | Path, template: str, limit: int | None, split: str = "test",
             fields: dict[str, str] | None = None) -> list[Problem]:
        problems = load_problems(source, kind=spec.kind, benchmark=spec.name, template=template, split=split,
                                 limit=limit, **(fields or {}))
        if spec.kind == "integer":
            for p in problems:
                if not str(p.answer).strip().lstrip("-").isdigit():
                    raise DataError(f"{p.meta['source']}: problem {p.id!r} answer {p.answer!r} is not an integer")
        return problems

    return load


def benchmark_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_benchmark(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    template: str | None = None,
    limit: int | None = None,
    lang: str | None = None,
    split: str | None = None,
    fields: dict[str, str] | None = None,
) -> list[Problem]:
    """Load a named benchmark (``aime2024``, ``aime2025``, ``math500``, ``zebralogic``,
    ``autologi``). ``path`` overrides the file (or gives a ``datasets`` id) and ``fields`` maps its
    field names (``{"id_field": ..., "problem_field": ..., "answer_field": ...}``); ``template``
    overrides the benchmark's default prompt template; ``limit`` keeps the first items in file
    order; ``lang`` filters AutoLogi ("en" / "cn")."""
    allowed = {"id_field", "problem_field", "answer_field"}
    if fields and set(fields) - allowed:
        raise ValueError(f"fields may only set {sorted(allowed)}, got {sorted(fields)}")
    spec = benchmark_spec(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if spec.name == "autologi":
        if path is None:
            resolve_benchmark_file(name, root)  # raises the explanatory DataError
        return load_autologi(str(path), lang=lang, split=split or "train", limit=limit)
    source = path if path is not None else resolve_benchmark_file(name, root)
    return _shared_layout_loader(spec)(source, template or spec.template, limit, split or "test", fields)
