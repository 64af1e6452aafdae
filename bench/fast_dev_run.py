"""``pointtune train METHOD --fast-dev-run`` timed for every method on every dataset it takes here.

Each row runs the command a user would type, in a fresh process, and reports its wall clock (imports and
exit included), the seconds the command itself reports ("fast-dev-run passed in N s"), and the process's
peak resident memory (``wait4``'s ``ru_maxrss``). ``finetune`` fine-tunes the ConClu row's run (kept with
``--output``), since it needs a pretrained encoder. The issue's goal is under 30 s for every row on a 2-CPU
machine.

    python bench/fast_dev_run.py                      # ~5 minutes on 2 CPUs, idle
    python bench/fast_dev_run.py --rows cedr/synthetic scl/shapenetpart --repeats 3

Prints a table and writes JSON (``--output``, default ``runs/bench/fast_dev_run.json``): every run's times and
command, the load average before and after each run, and the machine; each run's output is kept beside it
(``runs/bench/fast_dev_run/<row>-<i>.log``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLI = [sys.executable, "-m", "pointtune.cli"]


def _rows(data: Path, scratch: Path) -> dict[str, list[str]]:
    """Row name ``method/dataset`` -> the ``pointtune`` arguments after ``train``."""
    modelnet = ["--dataset", "modelnet40", "--data-root", str(data / "modelnet40_subset")]
    parts = ["--dataset", "shapenetpart", "--data-root", str(data / "shapenetpart_subset"),
             "--set", "data.variant=split", "--set", "data.num_points=512", "--set", "protocol.name=part_seg"]
    return {
        "cedr/synthetic": ["cedr"],
        "cedr/modelnet40": ["cedr", *modelnet],
        "conclu/synthetic": ["conclu", "--output", str(scratch / "conclu")],
        "conclu/modelnet40": ["conclu", *modelnet],
        "finetune/synthetic": ["finetune", "--from", str(scratch / "conclu")],
        "dcglr/synthetic": ["dcglr"],
        "dcglr/modelnet40": ["dcglr", *modelnet],
        "dcglr/shapenetpart": ["dcglr", *parts],
        "scl/synthetic": ["scl"],
        "scl/shapenetpart": ["scl", *parts],
        "amcontrast3d/scannet": ["amcontrast3d", "--dataset", "scannet", "--data-root", str(data / "scannet_subset")],
        "amcontrast3d/s3dis": ["amcontrast3d", "--dataset", "s3dis", "--data-root", str(data / "s3dis_subset")],
        "seg/s3dis": ["seg", "--dataset", "s3dis", "--data-root", str(data / "s3dis_subset")],
    }


def _run(argv: list[str], log: Path) -> dict:
    """Run ``pointtune train ARGV --fast-dev-run --no-progress``; wall seconds, reported seconds, peak RSS."""
    load = os.getloadavg()[0]
    began = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([*CLI, "train", *argv, "--fast-dev-run", "--no-progress"], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    passed = re.search(r"fast-dev-run passed in (\d+) s", text)
    return {"rc": proc.returncode, "wall_s": round(wall, 2), "reported_s": int(passed.group(1)) if passed else None,
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2), "log": str(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared samples' folder (default %(default)s)")
    parser.add_argument("--rows", nargs="+", help="rows to run (default all; finetune needs conclu/synthetic)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the table shows the median")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "fast_dev_run.json")
    args = parser.parse_args()

    scratch = args.output.with_suffix("")  # the rows' logs and the ConClu run that finetune starts from
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rows = _rows(args.data, scratch)
    chosen = args.rows or list(rows)
    unknown = sorted(set(chosen) - set(rows))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {sorted(rows)}")
    if "finetune/synthetic" in chosen and "conclu/synthetic" not in chosen:
        chosen.insert(chosen.index("finetune/synthetic"), "conclu/synthetic")
    results = {}
    print(f"{'row':22} {'wall s':>7} {'cmd s':>6} {'peak GB':>8} {'load':>5}  rc", flush=True)
    for name in chosen:
        runs = []
        for i in range(args.repeats):
            if name == "conclu/synthetic" and i:
                break  # its --output run is the fine-tuning source; once is enough
            runs.append(_run(rows[name], scratch / f"{name.replace('/', '-')}-{i}.log"))
        wall = statistics.median(r["wall_s"] for r in runs)
        rc = max(r["rc"] for r in runs)
        results[name] = {"argv": ["train", *rows[name], "--fast-dev-run", "--no-progress"], "runs": runs,
                         "median_wall_s": wall}
        print(f"{name:22} {wall:7.1f} {runs[0]['reported_s'] or '-':>6} {max(r['peak_rss_gb'] for r in runs):8.2f} "
              f"{runs[0]['load_before']:5.2f}  {rc}" + (f"  (see {runs[-1]['log']})" if rc else ""), flush=True)
    import torch

    args.output.write_text(json.dumps({
        "rows": results, "goal_s": 30,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }, indent=2))
    slow = [n for n, r in results.items() if r["median_wall_s"] >= 30]
    print(f"wrote {args.output}; over 30 s: {', '.join(slow) or 'none'}")
    return 1 if any(run["rc"] for r in results.values() for run in r["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
