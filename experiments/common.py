"""Small helpers shared by the experiments: results directory, JSON/CSV writing, saving the
resolved config and seeds, and log-log power-law fits with a bootstrap interval.

Every experiment writes ``results/<name>/`` holding machine-readable results (JSON and/or CSV),
``config.json`` (the resolved config, with the command line and versions) and ``seeds.json``, so a
figure can be regenerated without rerunning the experiment.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

#: Default root of all results; override with the environment variable TEAMTR_RESULTS.
RESULTS_ROOT = Path(os.environ.get("TEAMTR_RESULTS", Path(__file__).resolve().parent.parent / "results"))


def results_dir(name: str, root: str | Path | None = None) -> Path:
    """``<root>/<name>`` (created). ``root`` defaults to :data:`RESULTS_ROOT`."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"results name must be a plain directory name, got {name!r}")
    path = Path(root) if root is not None else RESULTS_ROOT
    path = path / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy scalars/arrays, paths and tuples to plain JSON types (nan/inf kept as floats)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (temp file, then rename)."""
    path = Path(path)
    _atomic_write(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write a list of flat dicts as CSV (columns: ``columns`` or the union in first-seen order)."""
    path = Path(path)
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        columns = list(seen)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: to_jsonable(row.get(k, "")) for k in columns})
    _atomic_write(path, buf.getvalue())
    return path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_run_metadata(out: Path, config: Any, seeds: Iterable[int]) -> None:
    """Write ``config.json`` (resolved config + command line, Python/numpy versions, UTC time) and
    ``seeds.json`` into ``out``."""
    meta = {
        "config": to_jsonable(config),
        "command": " ".join([Path(sys.executable).name, "-m"] + sys.argv) if sys.argv else "",
        "argv": sys.argv,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out / "config.json", meta)
    write_json(out / "seeds.json", {"seeds": [int(s) for s in seeds]})


def cli_overrides(args: Any, tuples: Sequence[str] = (), scalars: Sequence[str] = ()) -> dict[str, Any]:
    """Config keyword arguments from the argparse options the user gave (``None`` = not given):
    the ``tuples`` options (``nargs="+"``) as tuples, the ``scalars`` as they are."""
    kwargs: dict[str, Any] = {}
    for name in tuples:
        if getattr(args, name) is not None:
            kwargs[name] = tuple(getattr(args, name))
    for name in scalars:
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (s): a load-independent
    measure of an experiment's cost (wall time depends on what else the machine runs)."""
    t = os.times()
    return float(t.user + t.system + t.children_user + t.children_system)


# ---------------------------------------------------------------------------------------------
# Power-law fits


@dataclasses.dataclass(frozen=True)
class PowerFit:
    """y ~ exp(intercept) x^alpha by least squares on (log x, log y); ``ci`` the bootstrap interval
    (percentile, level ``level``) of alpha; ``n_boot`` the resamples used (0: no interval)."""

    alpha: float
    intercept: float
    ci_low: float
    ci_high: float
    level: float
    n_boot: int
    r2: float


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """(alpha, intercept, r^2) of log y = intercept + alpha log x; needs >= 2 positive points."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return math.nan, math.nan, math.nan
    lx, ly = np.log(x[keep]), np.log(y[keep])
    alpha, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + alpha * lx)
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else math.nan
    return float(alpha), float(intercept), r2


def bootstrap_power_fit(
    x: Sequence[float],
    samples: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PowerFit:
    """Fit mean_seed(samples) ~ x^alpha with a seed-resampling bootstrap interval.

    Args:
        x: (K,) the abscissa (e.g. team sizes N).
        samples: (K, R): R replicate values (seeds) at each x. The bootstrap draws R seed indices
            with replacement, the same indices at every x (seed r is one replicate of the whole
            curve), recomputes the per-x means and refits. NaN entries are ignored in the means.
        n_boot: number of resamples; 0 gives no interval.
        level: interval level.
        seed: seed of the bootstrap generator.
    """
    x = np.asarray(x, dtype=float)
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.shape[0] != x.shape[0]:
        raise ValueError(f"samples must have shape (K, R) with K = len(x) = {x.shape[0]}, got {samples.shape}")
    alpha, intercept, r2 = loglog_fit(x, np.nanmean(samples, axis=1))
    if n_boot <= 0 or not np.isfinite(alpha):
        return PowerFit(alpha, intercept, math.nan, math.nan, level, 0, r2)
    rng = np.random.default_rng(seed)
    r = samples.shape[1]
    idx = rng.integers(0, r, size=(n_boot, r))
    boot = np.nanmean(samples[:, idx], axis=2)  # (K, n_boot)
    lx = np.log(x)
    good = np.all(boot > 0, axis=0)
    if not good.any():
        return PowerFit(alpha, intercept, math.nan, math.nan, level, 0, r2)
    ly = np.log(boot[:, good])
    lxc = lx - lx.mean()
    slopes = (lxc[:, None] * (ly - ly.mean(axis=0))).sum(axis=0) / (lxc**2).sum()
    lo, hi = np.quantile(slopes, [(1 - level) / 2, 1 - (1 - level) / 2])
    return PowerFit(alpha, intercept, float(lo), float(hi), level, int(good.sum()), r2)


def limit_blas_threads(n: int = 1) -> list[str]:
    """Set the thread count of every OpenBLAS already loaded in this process (numpy's and scipy's
    bundled copies) to ``n``; returns the libraries changed. The exact evaluator's dense LU on a
    ~150-state system is ~100x slower with multithreaded OpenBLAS on a loaded 2-core machine.
    Linux only (reads /proc/self/maps); a no-op elsewhere."""
    import ctypes

    names = ("openblas_set_num_threads", "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
             "openblas_set_num_threads64_")
    changed: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if len(line.split()) >= 6}
    except OSError:
        return changed
    libs = sorted(p for p in paths if "openblas" in Path(p).name.lower() and ".so" in Path(p).name)
    for lib in libs:
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for name in names:
            fn = getattr(handle, name, None)
            if fn is not None:
                fn(int(n))
                changed.append(lib)
                break
    return changed


def run_pool(
    fn: "Callable[[Any], Any]",
    jobs: Sequence[Any],
    *,
    workers: int,
    desc: str,
    ordered: bool = False,
    chunksize: int = 1,
    progress: bool = True,
) -> "Iterator[Any]":
    """Yield ``fn(job)`` for every job, in a fork pool of ``workers`` processes (in-process when
    ``workers <= 1`` or there is one job), with a tqdm bar on stderr.

    The one worker-pool + progress loop of every study. ``ordered`` keeps the job order
    (``imap``); otherwise results come as they finish (``imap_unordered``). The caller consumes the
    generator (and may write each result as it arrives, so an interrupted study keeps its work);
    the pool is closed when the generator ends or is closed.
    """
    import multiprocessing

    from tqdm import tqdm

    jobs = list(jobs)
    pool = multiprocessing.get_context("fork").Pool(int(workers)) if workers > 1 and len(jobs) > 1 else None
    try:
        if pool is None:
            results: Iterable[Any] = map(fn, jobs)
        elif ordered:
            results = pool.imap(fn, jobs, chunksize=chunksize)
        else:
            results = pool.imap_unordered(fn, jobs, chunksize=chunksize)
        yield from tqdm(results, total=len(jobs), desc=desc, mininterval=1.0, file=sys.stderr,
                        disable=not progress)
    finally:
        if pool is not None:
            pool.terminate() if sys.exc_info()[0] is not None else pool.close()
            pool.join()
