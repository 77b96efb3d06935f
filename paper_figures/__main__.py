"""``python -m paper_figures [--results DIR] [--out DIR] [--only NAME ...] [--list]``.

Draws every registered figure whose results exist (PNG + PDF); figures with missing results are
skipped with the command that produces them. Exits 0 unless a figure whose inputs exist fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

from paper_figures import load_all  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from experiments.common import RESULTS_ROOT

    parser = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__.split("\n\n")[1])
    parser.add_argument("--results", type=Path, default=RESULTS_ROOT, help=f"results root (default {RESULTS_ROOT})")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <results>/figures)")
    parser.add_argument("--only", nargs="+", help="draw only these figures")
    parser.add_argument("--list", action="store_true", help="list the registered figures and exit")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    registry = load_all()
    if args.list:
        for name, fig in sorted(registry.items()):
            print(f"{name:28s} {fig.module:36s} needs {', '.join(fig.needs)}")
        return 0
    names = sorted(registry) if not args.only else args.only
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; registered: {sorted(registry)}")
    out = args.out if args.out is not None else args.results / "figures"
    out.mkdir(parents=True, exist_ok=True)
    drawn, skipped, failed = [], [], []
    for name in names:
        fig = registry[name]
        missing = fig.missing(args.results)
        if missing:
            skipped.append((name, missing, fig.command))
            continue
        try:
            paths = fig.fn(args.results, out)
            drawn.append((name, paths))
        except Exception:  # report and continue with the other figures
            failed.append(name)
            print(f"[failed] {name}:", file=sys.stderr)
            traceback.print_exc()
    for name, paths in drawn:
        print(f"[drawn]   {name}: {', '.join(str(p) for p in paths)}")
    for name, missing, command in skipped:
        print(f"[skipped] {name}: missing {', '.join(missing)} -> run `{command}`")
    if skipped:
        print(f"skipped figures: {', '.join(n for n, _, _ in skipped)}")
    if failed:
        print(f"failed figures: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
