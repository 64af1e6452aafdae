"""``pointtune train METHOD --fast-dev-run`` timed for every method on every dataset it takes here, and the
same rows at their default config for their peak memory.

Each row runs the command a user would type, in a fresh process, and reports its wall clock (imports and
exit included), the seconds the command itself reports ("fast-dev-run passed in N s"), the process's peak
resident memory as the kernel reports it at exit (``wait4``'s ``ru_maxrss``: the peak since the loop's last
per-epoch reset, :func:`pointtune.memory.reset_peak`, so it can miss an earlier epoch's or SCL's stage 1) and
the run's own ``cost/peak_memory_mb`` (the largest over every epoch of its runs: the run's peak).
``finetune`` fine-tunes the ConClu row's run, since it needs a pretrained encoder. The goal (issue 21) is under
30 s for every row on a 2-CPU machine.

``--limit-batches N`` runs the rows at their default config instead (the recipe's batch size and number of
points; ``--limit-batches N --epochs 1``: N training batches, N x batch items per judged split) and adds the
memory figures a user sees: preflight's estimate per worker printed before training, and the run's own
``cost/peak_memory_mb`` (the loop's peak RSS; SCL: the larger of its two runs, stage 1 cut to 1 epoch too).

    python bench/fast_dev_run.py                      # ~2 minutes on 2 CPUs, idle
    python bench/fast_dev_run.py --rows cedr/synthetic scl/shapenetpart --repeats 3
    python bench/fast_dev_run.py --limit-batches 1 --output runs/bench/default_config.json

Prints a table and writes JSON (``--output``, default ``runs/bench/fast_dev_run.json``): every run's figures and
command, the load average before and after each run, and the machine; each run's directory and output are kept
beside it (``runs/bench/fast_dev_run/<row>-<i>/`` and ``.log``).
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


def _rows(data: Path) -> dict[str, list[str]]:
    """Row name ``method/dataset`` -> the ``pointtune`` arguments after ``train`` (``{conclu}``: the ConClu
    row's run)."""
    modelnet = ["--dataset", "modelnet40", "--data-root", str(data / "modelnet40_subset")]
    parts = ["--dataset", "shapenetpart", "--data-root", str(data / "shapenetpart_subset"),
             "--set", "data.variant=split", "--set", "data.num_points=512", "--set", "protocol.name=part_seg"]
    return {
        "cedr/synthetic": ["cedr"],
        "cedr/modelnet40": ["cedr", *modelnet],
        "conclu/synthetic": ["conclu"],
        "conclu/modelnet40": ["conclu", *modelnet],
        "finetune/synthetic": ["finetune", "--from", "{conclu}"],
        "dcglr/synthetic": ["dcglr"],
        "dcglr/modelnet40": ["dcglr", *modelnet],
        "dcglr/shapenetpart": ["dcglr", *parts],
        "scl/synthetic": ["scl"],
        "scl/shapenetpart": ["scl", *parts],
        "amcontrast3d/scannet": ["amcontrast3d", "--dataset", "scannet", "--data-root", str(data / "scannet_subset")],
        "amcontrast3d/s3dis": ["amcontrast3d", "--dataset", "s3dis", "--data-root", str(data / "s3dis_subset")],
        "seg/s3dis": ["seg", "--dataset", "s3dis", "--data-root", str(data / "s3dis_subset")],
    }


def _run(argv: list[str], run_dir: Path) -> dict:
    """Run ``pointtune train ARGV --output RUN_DIR --no-progress``: wall seconds, the seconds a fast-dev-run
    reports, peak RSS, and the memory estimate and the run's ``cost/peak_memory_mb`` where there are."""
    load = os.getloadavg()[0]
    log = run_dir.with_suffix(".log")
    began = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([*CLI, "train", *argv, "--output", str(run_dir), "--no-progress"], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    passed = re.search(r"fast-dev-run passed in (\d+) s", text)
    estimate = re.findall(r"memory: ~([\d.]+) GB per worker at train.batch_size (\d+)", text)
    peaks = [json.loads(line).get("cost/peak_memory_mb", 0) for f in run_dir.rglob("metrics.jsonl")
             for line in f.read_text().splitlines()]
    return {"rc": proc.returncode, "wall_s": round(wall, 2), "reported_s": int(passed.group(1)) if passed else None,
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
            "estimate_gb": float(estimate[-1][0]) if estimate else None,
            "batch_size": int(estimate[-1][1]) if estimate else None,
            "run_peak_gb": round(max(peaks) / 1024, 2) if peaks else None,
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "log": str(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared samples' folder (default %(default)s)")
    parser.add_argument("--rows", nargs="+", help="rows to run (default all; finetune needs conclu/synthetic)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the table shows the median")
    parser.add_argument("--limit-batches", type=int, metavar="N",
                        help="the default config for N batches of 1 epoch instead of --fast-dev-run (memory figures)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "fast_dev_run.json")
    args = parser.parse_args()

    scratch = args.output.with_suffix("")  # the rows' run directories and logs
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rows = _rows(args.data)
    chosen = args.rows or list(rows)
    unknown = sorted(set(chosen) - set(rows))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {sorted(rows)}")
    if "finetune/synthetic" in chosen and "conclu/synthetic" not in chosen:
        chosen.insert(chosen.index("finetune/synthetic"), "conclu/synthetic")
    mode = ["--fast-dev-run"] if args.limit_batches is None else [
        "--limit-batches", str(args.limit_batches), "--epochs", "1"]
    results = {}
    print(f"{'row':22} {'wall s':>7} {'cmd s':>6} {'peak GB':>8} {'batch':>5} {'est. GB':>7} {'run GB':>6} "
          f"{'load':>5}  rc", flush=True)
    for name in chosen:
        argv = [a.replace("{conclu}", str(scratch / "conclu-synthetic-0")) for a in rows[name]] + mode
        if args.limit_batches is not None and name.startswith("scl/"):
            argv += ["--set", "method.stage1.epochs=1"]  # --epochs is stage 2's (--fast-dev-run cuts both)
        runs = [_run(argv, scratch / f"{name.replace('/', '-')}-{i}") for i in range(args.repeats)]
        wall = statistics.median(r["wall_s"] for r in runs)
        rc = max(r["rc"] for r in runs)
        results[name] = {"argv": ["train", *argv, "--no-progress"], "runs": runs, "median_wall_s": wall}
        first = runs[0]
        print(f"{name:22} {wall:7.1f} {first['reported_s'] or '-':>6} {max(r['peak_rss_gb'] for r in runs):8.2f} "
              f"{first['batch_size'] or '-':>5} {first['estimate_gb'] or '-':>7} {first['run_peak_gb'] or '-':>6} "
              f"{first['load_before']:5.2f}  {rc}" + (f"  (see {runs[-1]['log']})" if rc else ""), flush=True)
    import torch

    args.output.write_text(json.dumps({
        "rows": results, "mode": mode, "goal_s": 30 if args.limit_batches is None else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }, indent=2))
    slow = [n for n, r in results.items() if r["median_wall_s"] >= 30]
    print(f"wrote {args.output}" + ("" if args.limit_batches else f"; over 30 s: {', '.join(slow) or 'none'}"))
    return 1 if any(run["rc"] for r in results.values() for run in r["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
