"""The leaderboard of a comparison (:mod:`pointtune.search.compare`): one row per entry, read from what its
seed study wrote (``study.csv``: the statistics over seeds, computed once by :mod:`pointtune.search.study_report`;
``runs.csv``: each seed's test value and epochs) and, for an entry that searched, its sweep's ``summary.csv``
(the epochs its trials trained).

Files in the compare directory: ``compare.csv`` and ``compare.md`` (per entry, best first: the test metric's
mean ± std and 95 % interval over seeds, validation mean ± std, seconds per epoch, parameters, peak memory,
trial-epochs spent) and ``compare.png`` (each seed's test value per entry).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointtune.config import ConfigError
from pointtune.search.study_report import plot_seeds, tested_metric


@dataclass(frozen=True)
class EntryDirs:
    """Where one entry's results are: its ``study`` directory and, if it searched, its ``sweep`` directory."""

    name: str
    method: str
    study: Path
    sweep: Path | None = None


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"{path}: missing (the entry's sweep or study has not finished)")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def trial_epochs(rows: list[dict[str, str]]) -> int:
    """Epochs trained, summed over the trials of a ``summary.csv`` or the runs of a ``runs.csv`` (their
    ``epochs`` column: what each trial reached, early stopping and failures included)."""
    return sum(int(r["epochs"]) for r in rows if r["epochs"])


def leaderboard(entries: list[EntryDirs], metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per entry, best first by the test metric's mean (``mode`` of the objective ``metric``; entries
    without a finished run last). The statistics are the entry's ``study.csv`` row, unchanged; trial-epochs are
    its sweep's (:func:`trial_epochs` of ``summary.csv``) plus its study's (of ``runs.csv``: rows x seeds x
    epochs when every run finished). Runs a sweep trains once for all its trials (SCL's stage 1) are not
    counted.

    Raises:
        ConfigError: a file is missing, or ``study.csv`` has no row named after the entry.
    """
    test = tested_metric(metric)
    out = []
    for entry in entries:
        rows = {r["row"]: r for r in _read(entry.study / "study.csv")}
        if entry.name not in rows:
            raise ConfigError(f"{entry.study / 'study.csv'}: no row {entry.name!r} (rows: {', '.join(rows)})")
        row = rows[entry.name]
        searched = trial_epochs(_read(entry.sweep / "summary.csv")) if entry.sweep is not None else 0
        studied = trial_epochs([r for r in _read(entry.study / "runs.csv") if r["row"] == entry.name])
        out.append({
            "entry": entry.name, "method": entry.method, "seeds": int(row["seeds"]),
            **{f"{test} {s}": float(row[f"{test} {s}"]) for s in ("mean", "std", "ci95 low", "ci95 high")},
            **{f"{metric} {s}": float(row[f"{metric} {s}"]) for s in ("mean", "std")},
            **{k: float(row[k]) for k in ("epoch_s", "params", "peak_memory_mb")},
            "sweep trial-epochs": searched, "study trial-epochs": studied, "trial-epochs": searched + studied,
        })
    sign = -1 if mode == "max" else 1

    def order(row: dict[str, Any]) -> tuple[bool, float]:
        value = row[f"{test} mean"]
        return math.isnan(value), 0.0 if math.isnan(value) else sign * value

    out.sort(key=order)
    return [{"rank": rank, **r} for rank, r in enumerate(out, start=1)]


def seed_values(entries: list[EntryDirs], metric: str) -> dict[str, list[float]]:
    """Each entry's finished runs' test values (``runs.csv``), by seed order: what ``compare.png`` shows."""
    test = tested_metric(metric)
    return {e.name: [float(r[test]) for r in _read(e.study / "runs.csv")
                     if r["row"] == e.name and r["status"] == "FINISHED" and r.get(test)] for e in entries}


def write_leaderboard(out: Path, title: str, entries: list[EntryDirs], metric: str, mode: str
                      ) -> tuple[list[dict[str, Any]], list[Path], str]:
    """Write ``compare.csv``, ``compare.md`` and ``compare.png`` in ``out`` (see the module docstring).

    Returns:
        The rows (:func:`leaderboard`), the files written and the markdown table.
    """
    rows = leaderboard(entries, metric, mode)
    with (out / "compare.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    markdown = _markdown(rows, metric)
    (out / "compare.md").write_text(f"# {title}\n\n{markdown}\n")
    values = seed_values(entries, metric)
    plot_seeds({r["entry"]: values[r["entry"]] for r in rows}, tested_metric(metric), out / "compare.png")
    return rows, [out / "compare.csv", out / "compare.md", out / "compare.png"], markdown


def _markdown(rows: list[dict[str, Any]], metric: str) -> str:
    test = tested_metric(metric)

    def number(value: float, fmt: str) -> str:
        return "-" if value != value else format(value, fmt)

    def pm(row: dict[str, Any], key: str) -> str:
        return "-" if row[f"{key} mean"] != row[f"{key} mean"] else \
            f"{row[f'{key} mean']:.4f} ± {number(row[f'{key} std'], '.4f')}"

    header = ["#", "entry", "method", "seeds", test, "95 % CI", metric, "s/epoch", "params", "peak MiB",
              "trial-epochs (sweep + study)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ci = "-" if r[f"{test} ci95 low"] != r[f"{test} ci95 low"] else \
            f"[{r[f'{test} ci95 low']:.4f}, {r[f'{test} ci95 high']:.4f}]"
        cells = [str(r["rank"]), r["entry"], r["method"], str(r["seeds"]), pm(r, test), ci, pm(r, metric),
                 number(r["epoch_s"], ".2f"), number(r["params"], ".0f"), number(r["peak_memory_mb"], ".0f"),
                 f"{r['trial-epochs']} ({r['sweep trial-epochs']} + {r['study trial-epochs']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
