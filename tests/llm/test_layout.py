"""The llm package has no import circle: the graph of module-level ``llm.*`` imports between the
modules (a package's ``__init__`` re-exporting its own submodules aside) is acyclic, and the config
layer imports no model code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LLM = Path(__file__).resolve().parents[2] / "llm"


def _modules() -> dict[str, Path]:
    out = {}
    for path in LLM.rglob("*.py"):
        name = ".".join(path.relative_to(LLM.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llm"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("llm"))
    return names


def test_no_import_circle():
    mods = _modules()

    def resolve(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph = {m: {resolve(d) for d in _top_level_imports(p)} - {m} for m, p in mods.items()}
    # a package __init__ importing its own submodules is the re-export pattern, not a circle
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> None:
        if m in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        for d in graph.get(m, ()):
            visit(d, stack + [m])
        done.add(m)

    for m in graph:
        visit(m, [])


def test_config_layer_loads_no_model_code():
    code = ("import sys, llm.config, llm.config.build, llm.config.yamlio, llm.config.cli, llm.rollout.vllm_config; "
            "bad = [m for m in ('transformers', 'vllm', 'llm.models', 'llm.team') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
