"""What a seed study reports (:mod:`pointtune.search.study`): per run, per configuration over seeds, and the
difference of each configuration to the reference with a paired test over seeds.

Files in the study directory: ``runs.csv`` (one row per (configuration, seed) run), ``study.csv`` and
``study.md`` (one row per configuration: what differs from the reference, validation and test mean ± std and
95 % interval over seeds, the difference to the reference and its paired t-test, costs) and ``study.png``
(each seed's test value per configuration, the reference's mean marked).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pointtune.search.space import SearchSpace
from pointtune.search.spec import ROW_KEY, SweepSpec, trial_config
from pointtune.tracking import flatten

SEED_KEY = "train.seed"
REFERENCE = "reference"  # the row the others are compared with (pointtune.search.study)


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample standard deviation (ddof 1) and the two-sided 95 % Student-t interval of the mean of
    ``n`` values (NaN where ``n`` is too small: std and interval need 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def seed_stats(values: list[float]) -> SeedStats:
    """:class:`SeedStats` of ``values`` (one per seed; NaN values are left out)."""
    from scipy import stats

    x = np.asarray([v for v in values if v == v], dtype=float)
    if len(x) == 0:
        return SeedStats(0, math.nan, math.nan, math.nan, math.nan)
    if len(x) == 1:
        return SeedStats(1, float(x[0]), math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(x) - 1)) * std / math.sqrt(len(x))
    return SeedStats(len(x), float(x.mean()), std, float(x.mean()) - half, float(x.mean()) + half)


def paired_difference(values: dict[int, float], reference: dict[int, float]) -> tuple[float, float, int]:
    """The mean difference ``values - reference`` over the seeds both have, the two-sided p-value of the
    paired t-test of that difference (scipy's ``ttest_rel``; NaN with fewer than 2 pairs or no spread) and
    the number of pairs."""
    from scipy import stats

    seeds = sorted(s for s in values.keys() & reference.keys() if values[s] == values[s] and reference[s] == reference[s])
    if not seeds:
        return math.nan, math.nan, 0
    a, b = np.array([values[s] for s in seeds]), np.array([reference[s] for s in seeds])
    delta = float((a - b).mean())
    if len(seeds) < 2 or np.allclose(a - b, (a - b)[0]):
        return delta, math.nan, len(seeds)
    return delta, float(stats.ttest_rel(a, b).pvalue), len(seeds)


def tested_metric(metric: str) -> str:
    """The test metric that answers the objective ``val/<m>``: ``test/<m>``."""
    return "test/" + metric.split("/", 1)[1]


def differences(spec: SweepSpec, space: SearchSpace) -> dict[str, str]:
    """Per row, the config keys whose values differ from the reference's (or, without a reference, from the
    first row's), as ``key=value`` text; the seed is not a difference."""
    flat = {name: flatten(trial_config(spec, {ROW_KEY: name, SEED_KEY: 0}, space).to_dict()) for name in spec.rows}
    base = flat.get(REFERENCE) or next(iter(flat.values()))
    out = {}
    for name, values in flat.items():
        keys = sorted(k for k in values.keys() | base.keys() if values.get(k) != base.get(k) and k != SEED_KEY)
        out[name] = ", ".join(f"{k}={values.get(k)}" for k in keys) or "-"
    return out


def write_study(spec: SweepSpec, space: SearchSpace, trials: list) -> tuple[list[Path], str]:
    """Write ``runs.csv``, ``study.csv``, ``study.md`` and ``study.png`` from the study's ``trials``
    (:class:`pointtune.search.report.TrialSummary`, which calls this: not imported here); returns their paths and
    the table of ``study.md`` (printed at the end of the study)."""
    root, val, test = spec.root, space.metric, tested_metric(space.metric)
    runs = sorted(trials, key=lambda t: (list(spec.rows).index(t.params[ROW_KEY]), t.params[SEED_KEY]))
    tests = sorted({k for t in runs for k in t.last if k.startswith("test/")})
    with (root / "runs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "seed", "trial_id", "status", "epochs", "best_epoch", val, *tests,
                         "cost/epoch_s", "cost/params", "cost/peak_memory_mb", "mlflow_run_id", "error"])
        for t in runs:
            writer.writerow([t.params[ROW_KEY], t.params[SEED_KEY], t.trial_id, t.status, t.epochs, t.best_epoch,
                             t.best, *[t.last.get(k) for k in tests], t.last.get("cost/epoch_s"),
                             t.last.get("cost/params"), t.last.get("cost/peak_memory_mb"), t.mlflow_run_id or "",
                             t.error or ""])
    table = _rows(spec, space, runs, val, test)
    with (root / "study.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    markdown = _markdown(table, val, test, has_reference=REFERENCE in spec.rows)
    (root / "study.md").write_text(f"# Study of {spec.method}: {len(spec.rows)} configs x {len(spec.seeds)} seeds, "
                                   f"{spec.epochs} epochs\n\n{markdown}\n")
    _plot(runs, list(spec.rows), test, root / "study.png")
    return [root / "runs.csv", root / "study.csv", root / "study.md", root / "study.png"], markdown


def _rows(spec: SweepSpec, space: SearchSpace, runs: list, val: str, test: str) -> list[dict[str, Any]]:
    """One ``study.csv`` row per configuration."""
    by_row = {name: [t for t in runs if t.params[ROW_KEY] == name and t.status == "FINISHED"] for name in spec.rows}
    tested = {name: {t.params[SEED_KEY]: t.last.get(test, math.nan) for t in ts} for name, ts in by_row.items()}
    differs = differences(spec, space)
    out = []
    for name, ts in by_row.items():
        v, s = seed_stats([t.best for t in ts]), seed_stats(list(tested[name].values()))
        delta, p, pairs = paired_difference(tested[name], tested[REFERENCE]) if REFERENCE in spec.rows \
            else (math.nan, math.nan, 0)
        out.append({
            "row": name, "differs": differs[name], "seeds": s.n, f"{val} mean": v.mean, f"{val} std": v.std,
            f"{test} mean": s.mean, f"{test} std": s.std, f"{test} ci95 low": s.low, f"{test} ci95 high": s.high,
            f"{test} delta": math.nan if name == REFERENCE else delta, "pairs": pairs,
            "p (paired t)": math.nan if name == REFERENCE else p,
            "epoch_s": _mean([t.last.get("cost/epoch_s") for t in ts]),
            "params": _mean([t.last.get("cost/params") for t in ts]),
            "peak_memory_mb": max((t.last.get("cost/peak_memory_mb", math.nan) for t in ts), default=math.nan),
        })
    return out


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None and v == v]
    return float(np.mean(finite)) if finite else math.nan


def _markdown(table: list[dict[str, Any]], val: str, test: str, has_reference: bool) -> str:
    def pm(row, metric):
        if row[f"{metric} mean"] != row[f"{metric} mean"]:
            return "-"
        return f"{row[f'{metric} mean']:.4f} ± {row[f'{metric} std']:.4f}"

    header = ["config", "seeds", val, test, "95 % CI"] + (["Δ test vs reference", "p"] if has_reference else []) + \
        ["s/epoch", "params", "peak MiB", "differs from the reference" if has_reference else "differs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        ci = f"[{row[f'{test} ci95 low']:.4f}, {row[f'{test} ci95 high']:.4f}]" \
            if row[f"{test} ci95 low"] == row[f"{test} ci95 low"] else "-"
        cells = [row["row"], str(row["seeds"]), pm(row, val), pm(row, test), ci]
        if has_reference:
            delta, p = row[f"{test} delta"], row["p (paired t)"]
            cells += ["-" if delta != delta else f"{delta:+.4f}", "-" if p != p else f"{p:.3g}"]
        cells += [f"{row['epoch_s']:.2f}", f"{row['params']:.0f}" if row["params"] == row["params"] else "-",
                  f"{row['peak_memory_mb']:.0f}" if row["peak_memory_mb"] == row["peak_memory_mb"] else "-",
                  row["differs"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(runs: list, names: list[str], test: str, path: Path) -> None:
    """``study.png``: :func:`plot_seeds` of each configuration's finished runs, the reference marked."""
    values = {name: [t.last[test] for t in runs if t.params[ROW_KEY] == name and t.status == "FINISHED" and test in t.last]
              for name in names}
    plot_seeds(values, test, path, reference=REFERENCE if REFERENCE in names else None)


def plot_seeds(values: dict[str, list[float]], metric: str, path: Path, reference: str | None = None) -> None:
    """Write a PNG of each seed's ``metric`` per configuration (dots), its mean (bar) and, with ``reference``
    (a key of ``values``), that configuration's mean dashed across the plot.

    Args:
        values: configuration name -> one value per finished seed, in plot order (an empty list is skipped).
        metric: the y axis, e.g. ``test/OA``.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(values)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 4))
    for i, name in enumerate(names):
        if not values[name]:
            continue
        jitter = np.linspace(-0.12, 0.12, len(values[name])) if len(values[name]) > 1 else [0.0]
        color = "tab:gray" if name == reference else "tab:blue"
        ax.scatter(i + np.asarray(jitter), values[name], color=color, zorder=3, s=18)
        ax.hlines(np.mean(values[name]), i - 0.25, i + 0.25, color=color, linewidth=2, zorder=2)
        if name == reference:
            ax.axhline(np.mean(values[name]), color="tab:gray", linestyle="--", linewidth=1, zorder=1,
                       label=f"{reference} mean")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per seed")
    if reference in names:
        ax.legend(loc="best", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
