"""Paper figures, regenerated from results/ without rerunning experiments: ``python -m paper_figures``.

A registry: each figure is a function in its own module ``paper_figures/fig_*.py``, registered with
:func:`figure`, naming the results files it reads (relative to the results root) and the command
that produces them. ``python -m paper_figures`` imports every ``fig_*`` module, draws every figure
whose inputs exist (PNG and PDF into ``results/figures/``), and lists the skipped ones with the
command to run. To add a figure, create ``paper_figures/fig_<name>.py``::

    from paper_figures import figure
    from paper_figures.style import new_figure, save

    @figure("my_figure", needs=["my_experiment/summary.json"], command="python -m experiments.my_experiment")
    def my_figure(results, out):
        data = read_json(results / "my_experiment/summary.json")
        fig, ax = new_figure()
        ...
        return save(fig, out, "my_figure")   # -> list of written paths
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

FigureFn = Callable[[Path, Path], Sequence[Path]]


@dataclass(frozen=True)
class Figure:
    """A registered figure: ``name``, the drawing function ``fn(results_root, out_dir) -> paths``,
    the results files it ``needs`` (relative to the results root), and the ``command`` producing them."""

    name: str
    fn: FigureFn
    needs: tuple[str, ...]
    command: str
    module: str

    def missing(self, results: Path) -> list[str]:
        return [n for n in self.needs if not (results / n).exists()]


REGISTRY: dict[str, Figure] = {}


def figure(name: str, *, needs: Sequence[str], command: str) -> Callable[[FigureFn], FigureFn]:
    """Register a figure-drawing function under ``name`` (unique)."""

    def wrap(fn: FigureFn) -> FigureFn:
        if name in REGISTRY and REGISTRY[name].module != fn.__module__:
            raise ValueError(f"figure {name!r} is registered twice ({REGISTRY[name].module}, {fn.__module__})")
        REGISTRY[name] = Figure(name, fn, tuple(needs), command, fn.__module__)
        return fn

    return wrap


def load_all() -> dict[str, Figure]:
    """Import every ``paper_figures/fig_*.py`` module and return the registry."""
    import importlib
    import pkgutil

    pkg_dir = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(pkg_dir)]), key=lambda m: m.name):
        if info.name.startswith("fig_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY


__all__ = ["Figure", "REGISTRY", "figure", "load_all"]
