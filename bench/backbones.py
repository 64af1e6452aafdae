"""Time per training step and peak memory of the registered backbones, as a classifier on one device.

For every backbone (``--backbones``, default ``pointnet dgcnn gbnet pct``) a fresh subprocess builds it with its
registered defaults (the official classification configurations: see the README's backbone table), puts a
linear 40-way head on its global feature, and runs SGD training steps (forward, cross-entropy, backward,
optimizer step) on random unit-sphere clouds of ``--batch`` x ``--points`` (default 16 x 1024, xyz only) in
training mode. After one untimed warm-up step, the first timed step gives the peak memory and up to
``--steps`` steps (within ``--max-seconds``) the time: the median wall-clock per step.

Peak memory: on the CPU, the process's peak resident set size (``getrusage`` ``ru_maxrss``) minus its RSS before
the timed step (torch's CPU allocations are invisible to tracemalloc; the warm-up has already paid for the
libraries, and a fresh process makes the high-water mark the step's own); on CUDA,
``torch.cuda.max_memory_allocated`` over the timed step. Parameters: those of the backbone (the head excluded).

    python bench/backbones.py [--backbones pointnet dgcnn gbnet pct] [--batch 16] [--points 1024]
                              [--device cpu|cuda] [--threads N] [--output runs/bench/backbones.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rss_kib() -> int:
    """Current resident set size of this process, KiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(spec: dict) -> dict:
    """One backbone's measurement, in its own process: ``{"seconds": [...], "peak_mib", "params"}``."""
    import torch

    from pointtune.backbones import build_backbone

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    backbone = build_backbone(spec["backbone"]).to(device)
    head = torch.nn.Linear(backbone.out_dim, 40).to(device)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head}).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xyz = torch.nn.functional.normalize(torch.randn(spec["batch"], spec["points"], 3, device=device), dim=-1)
    label = torch.randint(0, 40, (spec["batch"],), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(head(backbone(xyz)), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()                                                                 # warm-up: kernels, thread pools
    before_rss = rss_kib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    began = time.perf_counter()
    step()
    seconds = [time.perf_counter() - began]
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mib = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_rss) / 1024
    while len(seconds) < spec["steps"] and sum(seconds) < spec["max_seconds"]:
        began = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - began)
    return {"seconds": seconds, "peak_mib": peak_mib, "params": sum(p.numel() for p in backbone.parameters())}


def measure(spec: dict) -> dict:
    """Run :func:`child` in a fresh interpreter and return its result.

    Raises:
        RuntimeError: the subprocess failed (the tail of its output is in the message).
    """
    env = dict(os.environ) if spec["device"] != "cpu" else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['backbone']}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(device: str) -> dict:
    """CPU count, load average, device name and the Python and torch versions."""
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
            "device": name, "python": platform.python_version(), "torch": torch.__version__}


def main() -> None:
    """Parse the arguments, measure every backbone, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backbones", nargs="+", default=["pointnet", "dgcnn", "gbnet", "pct"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps at most")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop timing a backbone after this long")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench" / "backbones.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    settings = {"batch": args.batch, "points": args.points, "device": args.device, "threads": args.threads,
                "steps": args.steps, "max_seconds": args.max_seconds}
    rows = []
    print(f"{'backbone':<10} {'params':>11} {'s/step':>8} {'steps':>5} {'peak MiB':>9}   (B {args.batch}, "
          f"N {args.points}, {args.device})", flush=True)
    for name in args.backbones:
        result = measure({**settings, "backbone": name})
        median = statistics.median(result["seconds"])
        rows.append({"backbone": name, "median_s": median, **result, "load_avg": os.getloadavg()})
        print(f"{name:<10} {result['params']:>11,} {median:>8.3f} {len(result['seconds']):>5} "
              f"{result['peak_mib']:>9.0f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": settings, "machine": machine(args.device), "rows": rows},
                                      indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
