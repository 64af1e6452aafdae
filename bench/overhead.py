"""Per-trial overhead of the platform: the same CEDR training (same data, epochs, seed) run three ways.

1. ``bare``: the shared loop in this process (Ray Train local mode, ``num_workers=0``; no Ray cluster, no
   MLflow), i.e. the cost of the training itself;
2. ``tune_1w``: a one-trial sweep whose trial runs a 1-worker ``TorchTrainer``;
3. ``tune_2w``: the same with 2 workers (gloo, data parallel; per-worker batch halved so that the global
   batch is the same).

Prints wall time and the ratio to the bare loop, and writes JSON. Each sweep's time includes starting Ray,
MLflow runs and the end-of-sweep report; ``ray_init_s`` is reported separately.

    python bench/overhead.py --epochs 3 --output runs/bench/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

SETTINGS = {
    "method.backbone.name": "pointnet",
    "method.backbone.emb_dims": 128,
    "data.num_points": 256,
    "data.synthetic_per_class": 48,
    "train.eval_batch_size": 128,
    "train.seed": 0,
}


def bare(epochs: int, batch: int) -> float:
    """Seconds for the in-process loop (no Ray cluster, no tracking)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pointtune.config import build_config
    from pointtune.train.loop import train_loop_per_worker

    exp = build_config("cedr", overrides={**SETTINGS, "train.epochs": epochs, "train.batch_size": batch})
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"experiment": exp.to_dict(), "objective": ["val/OA", "max"], "local_dir": tmp},
            scaling_config=ray.train.ScalingConfig(num_workers=0),
            run_config=ray.train.RunConfig(name="bare", storage_path=tmp),
        ).fit()
        return time.perf_counter() - began


def tuned(epochs: int, batch: int, workers: int, root: Path) -> float:
    """Seconds for a one-trial sweep of ``workers`` Train workers (everything fixed in the space)."""
    from pointtune.search.sweep import SweepSpec, run_sweep

    space = root / f"space_{workers}w.yaml"
    params = {k: {"type": "fixed", "value": v} for k, v in SETTINGS.items()}
    params["train.batch_size"] = {"type": "fixed", "value": batch // workers}
    space.write_text(yaml.safe_dump({"method": "cedr", "params": params}))
    spec = SweepSpec(method="cedr", space_file=str(space), sweep_dir=str(root / f"sweep_{workers}w"),
                     trials=1, epochs=epochs, workers=workers)
    began = time.perf_counter()
    run_sweep(spec)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--output", default="runs/bench/overhead.json")
    args = parser.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import ray

    from pointtune.search.sweep import init_ray

    results: dict[str, float] = {"bare": bare(args.epochs, args.batch_size)}
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        init_ray(None)
        results["ray_init_s"] = time.perf_counter() - began
        results["tune_1w"] = tuned(args.epochs, args.batch_size, 1, Path(tmp))
        results["tune_2w"] = tuned(args.epochs, args.batch_size, 2, Path(tmp))
        ray.shutdown()

    print(f"\nCEDR, synthetic data, {args.epochs} epochs, global batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'run':<10}{'wall s':>10}{'x bare':>10}")
    for name in ("bare", "tune_1w", "tune_2w"):
        print(f"{name:<10}{results[name]:>10.1f}{results[name] / results['bare']:>10.2f}")
    print(f"(ray.init: {results['ray_init_s']:.1f} s, not included in the sweeps' times)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "epochs": args.epochs, "global_batch": args.batch_size, "cpus": os.cpu_count(),
        "python": platform.python_version(), "seconds": results,
        "ratio_to_bare": {k: results[k] / results["bare"] for k in ("bare", "tune_1w", "tune_2w")},
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
