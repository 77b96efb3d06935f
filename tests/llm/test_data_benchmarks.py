"""Benchmark loaders: packaged copies, the shared folder, user files, and clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llm.data import (
    BENCHMARKS,
    DataError,
    apply_template,
    load_aime,
    load_benchmark,
    load_math500,
    load_problems,
    resolve_benchmark_file,
    shared_benchmark_dir,
)
from llm.data.benchmarks import PACKAGED_DIR, PROJECT_ROOT

SHA256 = {  # from ../shared/benchmarks/README.md
    "aime2024.jsonl": "76dd49e92fce3319758c3b782ad147144d23776631c1f4c127f746b994d1c41c",
    "aime2025.jsonl": "49cdfd80e6374690506f9d5470a6045d67bdc707d99103d2538399c5cc90507e",
    "math500.jsonl": "6d99ada5d8475834980aeb3a3781e1f914f989c31b8b65ba25d7d4c6eb5c219a",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_packaged_files_are_byte_identical_to_the_sources(name: str) -> None:
    assert hashlib.sha256((PACKAGED_DIR / name).read_bytes()).hexdigest() == SHA256[name]
    assert (PACKAGED_DIR / "LICENSES.md").is_file()


def test_zebralogic_is_never_packaged() -> None:
    """No ZebraLogic item is shipped in the package, the tests, the configs or the docs."""
    hits = [
        p for folder in ("llm", "tests", "configs", "docs") for p in (PROJECT_ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in (".jsonl", ".json", ".parquet", ".yaml", ".md")
        and "lgp-test-" in p.read_text(errors="ignore")
    ]
    assert hits == []


def test_aime_loaders() -> None:
    a24, a25 = load_aime(2024), load_aime(2025)
    assert len(a24) == len(a25) == 30
    assert a24[0].id == "aime2024-I-1" and a24[0].answer == "204" and a24[0].kind == "integer"
    assert [p.answer for p in a25[:15]] == "70 588 16 117 279 504 821 77 62 81 259 510 204 60 735".split()
    assert a24[0].meta["question"].startswith("Every morning Aya")
    assert a24[0].prompt.startswith("Solve the following math problem step by step")  # dapo template
    assert a24[0].meta["question"] in a24[0].prompt and a24[0].meta["benchmark"] == "aime2024"
    with pytest.raises(ValueError, match="2024 or 2025"):
        load_aime(2023)


def test_math500_loader() -> None:
    items = load_math500()
    assert len(items) == 500 and len({p.id for p in items}) == 500
    assert items[0].id == "test/precalculus/807.json" and items[0].kind == "math"
    assert items[0].meta["subject"] == "Precalculus" and items[0].meta["level"] == 2
    boxed = load_math500(template="boxed", limit=3)
    assert len(boxed) == 3 and boxed[0].prompt.endswith("\\boxed{}.")


def test_shared_folder_files() -> None:
    root = shared_benchmark_dir()
    if root is None:
        pytest.skip("../shared/benchmarks/ is absent")
    for name in ("aime2024", "aime2025", "math500"):
        shared = load_benchmark(name, root=root)
        packaged = load_benchmark(name)
        assert [(p.id, p.answer) for p in shared] == [(p.id, p.answer) for p in packaged]
        assert resolve_benchmark_file(name, root=root) == root / BENCHMARKS[name].relpath
    zebra = load_benchmark("zebralogic", root=root)
    assert len(zebra) == 1000 and zebra[0].kind == "zebra"
    p = zebra[0]
    assert set(p.answer) == {"header", "rows"} and p.meta["n_houses"] == len(p.answer["rows"])
    assert '"House 1"' in p.prompt and p.answer["header"][1] in p.prompt  # zebra_json template


def test_env_var_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "aime2024").mkdir()
    rec = {"id": "x-1", "problem": "What is 1+1?", "answer": "2", "meta": {}}
    (tmp_path / "aime2024" / "test.jsonl").write_text(json.dumps(rec) + "\n")
    monkeypatch.setenv("TEAMTR_BENCHMARKS_DIR", str(tmp_path))
    items = load_benchmark("aime2024")
    assert [p.id for p in items] == ["x-1"]
    with pytest.raises(DataError, match=r"'math500': file not found: .*math500/test.jsonl \(from \$TEAMTR_BENCHMARKS_DIR\)"):
        load_benchmark("math500")  # an explicit root never falls back silently
    monkeypatch.delenv("TEAMTR_BENCHMARKS_DIR")
    with pytest.raises(DataError, match=r"zebralogic/test.jsonl \(from root\)"):
        load_benchmark("zebralogic", root=tmp_path)


def test_user_jsonl_and_json(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        "\n".join(json.dumps({"uid": f"q{i}", "question": f"{i} + 1 = ?", "sol": str(i + 1)}) for i in range(5)) + "\n"
    )
    items = load_problems(path, kind="integer", id_field="uid", problem_field="question", answer_field="sol")
    assert [p.id for p in items] == [f"q{i}" for i in range(5)] and items[2].answer == "3"
    mapped = load_benchmark("aime2025", path=str(path), limit=2,
                            fields={"id_field": "uid", "problem_field": "question", "answer_field": "sol"})
    assert [p.id for p in mapped] == ["q0", "q1"] and mapped[0].kind == "integer"
    assert mapped[0].prompt.startswith("Solve the following math problem")
    js = tmp_path / "mine.json"
    js.write_text(json.dumps({"test": [{"id": "a", "problem": "p", "answer": "1"}]}))
    assert load_problems(js, kind="integer")[0].id == "a"


def test_errors_name_the_path_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found: .*nope.jsonl"):
        load_problems(tmp_path / "nope.jsonl", kind="integer")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "problem": "p", "answer": "1"}) + "\n" + json.dumps({"id": "2", "problem": "q"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: record lacks the field 'answer'"):
        load_problems(bad, kind="integer")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "1", "problem": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        load_problems(broken, kind="integer")
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps({"id": "1", "problem": "p", "answer": "1"}) + "\n" + json.dumps({"id": "1", "problem": "q", "answer": "2"}) + "\n")
    with pytest.raises(DataError, match="duplicate problem id '1'"):
        load_problems(dup, kind="integer")
    notint = tmp_path / "aime.jsonl"
    notint.write_text(json.dumps({"id": "1", "problem": "p", "answer": "1/2"}) + "\n")
    with pytest.raises(DataError, match="not an integer"):
        load_benchmark("aime2024", path=str(notint))
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a,b\n")
        load_problems(tmp_path / "x.csv", kind="integer")
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("gsm8k")
    with pytest.raises(ValueError, match="unknown prompt template"):
        apply_template("fancy", "x")


def test_missing_optional_dependencies_are_explained(tmp_path: Path) -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="needs the `datasets` package"):
            load_problems("hf:someorg/someset", kind="math")
    else:  # pragma: no cover - datasets installed
        pytest.skip("datasets is installed")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="pyarrow"):
            load_problems(tmp_path / "t.parquet", kind="math")


def test_paper_k_per_benchmark() -> None:
    assert {n: s.k for n, s in BENCHMARKS.items()} == {
        "aime2024": 64, "aime2025": 64, "math500": 4, "zebralogic": 64, "autologi": 64,
    }
