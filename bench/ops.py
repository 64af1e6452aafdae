"""Time and peak memory of the point-cloud ops at scene scale: k-d tree, blocked and dense brute force, raw SciPy.

For every cloud size (``--sizes``, default 4096, 24576 and 65536 points; batch 1, plus batch 2 at the first
size) a synthetic room is sampled (floor, ceiling and four walls of an 8 x 6 x 3 m room, 1 cm jitter, in
metres, not centred, like a raw S3DIS room) and the first stage of a PointNeXt-style encoder-decoder is run
op by op, with ``M = N / 4`` centres from FPS:

* ``fps``: ``fps(xyz, N/4)``, the bucketed Numba kernel, against the dense greedy torch loop (:func:`pointtune.ops.fps_reference`);
* ``knn``: ``knn(centres, xyz, k)`` (``--k``, default 16);
* ``ball_query``: ``ball_query(xyz, centres, radius, 32)`` (``--radius``, default 0.2 m);
* ``three_nn``: ``three_nn(xyz, centres)`` (feature propagation from the centres back to every point);

each of the last three on the k-d tree (``search='kdtree'``, what ``search='auto'`` picks for these CPU
clouds), blocked brute force (``search='brute'``, ``budget`` = :data:`pointtune.ops.DISTANCE_BUDGET`, or
``--budget``) and dense brute force (``budget=None``: one ``(B, M, N)`` block), plus ``scipy``: raw
``scipy.spatial.cKDTree`` on the same float32 arrays, tree built inside the timed call, ``workers`` = torch's
thread count (``knn``: ``cKDTree(xyz).query(centres, k)``; ``ball_query``: ``query_ball_point(centres,
radius)``, its Python lists of every point in the ball, not the 32 slots; ``three_nn``:
``cKDTree(centres).query(xyz, 3)``): the floor the tree column is measured against. A dense run whose
estimated peak exceeds ``--dense-limit-gib`` (default 4 GiB; 64k points need ~8-16 GiB) is skipped and noted
instead of run. ``knn`` also gets a ``matmul`` column: the code the blocked search replaced
(``square_distance`` + ``topk``, one block), to compare the exact difference kernel with the matmul
expansion. ``fps`` has the bucketed kernel in the ``blocked`` column. The reference FPS loop runs
``--fps-reference-steps`` samples (default 1024) and its time is scaled to ``N/4`` samples (every step costs
the same ``O(N)``; marked ``*``).

Every measurement runs in a fresh subprocess: it builds the inputs, warms the op up on a tiny cloud, then
calls it once for memory and again (up to ``--repeats`` calls, within ~5 s) for time. Peak memory is the
process's peak resident set size (``getrusage`` ``ru_maxrss``) minus its RSS just before the call
(tracemalloc does not see torch's allocations; the fresh process makes the high-water mark the call's own).
Time is the median wall-clock of the calls. Threads: torch's default (all cores) unless ``--threads``.

    python bench/ops.py [--sizes 4096 24576 65536] [--repeats 3] [--output runs/bench/ops.json]
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
OPS = ("fps", "knn", "ball_query", "three_nn")
#: Variants measured per op (columns of the table).
VARIANTS = {"fps": ("blocked", "dense"), "knn": ("kdtree", "blocked", "dense", "matmul", "scipy"),
            "ball_query": ("kdtree", "blocked", "dense", "scipy"), "three_nn": ("kdtree", "blocked", "dense", "scipy")}
# Conservative bytes per held distance entry of the dense version (float32), to decide what to skip.
DENSE_BYTES_PER_ENTRY = {"knn": 12, "three_nn": 12, "ball_query": 16}


def room(n: int, batch: int, seed: int = 0):
    """``(batch, n, 3)`` float32 points on the floor, ceiling and walls of an 8 x 6 x 3 m room (metres)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    lx, ly, lz = 8.0, 6.0, 3.0
    faces = [(lx * ly, 2, 0.0), (lx * ly, 2, lz), (lx * lz, 1, 0.0), (lx * lz, 1, ly), (ly * lz, 0, 0.0),
             (ly * lz, 0, lx)]  # (area, fixed axis, its value)
    areas = np.array([f[0] for f in faces])
    clouds = []
    for _ in range(batch):
        face = rng.choice(len(faces), size=n, p=areas / areas.sum())
        pts = rng.random((n, 3)) * np.array([lx, ly, lz])
        for i, (_, axis, value) in enumerate(faces):
            pts[face == i, axis] = value
        clouds.append(pts + rng.normal(0.0, 0.01, pts.shape))
    return torch.from_numpy(np.stack(clouds).astype(np.float32))


def rss_kib() -> int:
    """Current resident set size of this process, KiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def raw_scipy(op: str, xyz, centres, k: int, radius: float) -> None:
    """The op's neighbour search with ``scipy.spatial.cKDTree`` alone, one tree per cloud (built here)."""
    import torch
    from scipy.spatial import cKDTree

    workers = torch.get_num_threads()
    for x, c in zip(xyz.numpy(), centres.numpy()):
        if op == "knn":
            cKDTree(x).query(c, k, workers=workers)
        elif op == "ball_query":
            cKDTree(x).query_ball_point(c, radius, workers=workers)
        else:
            cKDTree(c).query(x, 3, workers=workers)


def child(spec: dict) -> dict:
    """One measurement (run in its own process): ``{"seconds": [...], "peak_mib": ..., ...}``."""
    import torch

    from pointtune import ops

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    b, n, op, variant = spec["batch"], spec["n"], spec["op"], spec["variant"]
    budget = None if variant == "dense" else spec["budget"]
    search = "kdtree" if variant == "kdtree" else "brute"
    xyz = room(n, b)
    m = n // 4
    centres = ops.gather_points(xyz, ops.fps(xyz, m))
    steps = min(m, spec["fps_steps"]) if op == "fps" and variant == "dense" else m  # reference FPS: a prefix
    calls = {
        "fps": lambda x, c: (ops.fps_reference if variant == "dense" else ops.fps)(x, min(steps, c.shape[1])),
        "knn": lambda x, c: (ops.square_distance(c, x).topk(spec["k"], dim=-1, largest=False).indices
                             if variant == "matmul" else ops.knn(c, x, spec["k"], budget=budget, search=search)),
        "ball_query": lambda x, c: ops.ball_query(x, c, spec["radius"], 32, budget=budget, search=search),
        "three_nn": lambda x, c: ops.three_nn(x, c, budget=budget, search=search),
    }
    call = calls[op]
    if variant == "scipy":
        call = lambda x, c: raw_scipy(op, x, c, spec["k"], spec["radius"])  # noqa: E731
    call(xyz[:, :256], centres[:, :64])  # warm-up: libraries, thread pools
    before_rss, before_peak = rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    call(xyz, centres)
    seconds = [time.perf_counter() - began]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    while len(seconds) < spec["repeats"] and sum(seconds) < 5.0:
        began = time.perf_counter()
        call(xyz, centres)
        seconds.append(time.perf_counter() - began)
    blocks = len(ops._query_blocks(b, m if op != "three_nn" else n, n if op != "three_nn" else m, budget))
    out = {"seconds": [s * m / steps for s in seconds], "peak_mib": max(0, peak - before_rss) / 1024,
           "slack_mib": (before_peak - before_rss) / 1024, "blocks": 1 if op == "fps" else blocks}
    if op == "fps" and steps < m:
        out.update(extrapolated_from_steps=steps, measured_seconds=seconds)
    return out


def measure(spec: dict) -> dict:
    """Run :func:`child` in a fresh interpreter and return its result.

    Raises:
        RuntimeError: the subprocess failed (the tail of its output is in the message).
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """CPU count, load average, and the Python, torch and NumPy versions."""
    import numpy
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "system": platform.platform()}


def main() -> None:
    """Parse the arguments, run every measurement, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 24576, 65536], help="points per cloud")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--k", type=int, default=16, help="kNN neighbours")
    parser.add_argument("--radius", type=float, default=0.2, help="ball-query radius, metres (32 slots)")
    parser.add_argument("--budget", type=int, default=None, help="blocked budget (default ops.DISTANCE_BUDGET)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (within ~5 s)")
    parser.add_argument("--dense-limit-gib", type=float, default=4.0, help="skip dense runs estimated above")
    parser.add_argument("--fps-reference-steps", type=int, default=1024,
                        help="samples of the reference FPS loop actually run (time scaled to N/4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output", default="runs/bench/ops.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from pointtune.ops import DISTANCE_BUDGET

    budget = args.budget or DISTANCE_BUDGET
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # as in every measurement's process, so machine() reports it
    configs = [(1, n) for n in args.sizes] + [(2, args.sizes[0])]
    before = machine()
    rows = []
    for b, n in configs:
        m = n // 4
        for op in args.ops:
            entries = b * m * n
            row = {"op": op, "batch": b, "n": n, "m": m, "entries": entries}
            for variant in VARIANTS[op]:
                est_gib = entries * DENSE_BYTES_PER_ENTRY.get(op, 0) / 2**30
                label = f"{op} B={b} N={n} {variant}"
                if variant in ("dense", "matmul") and est_gib > args.dense_limit_gib:
                    row[variant] = {"skipped": f"estimated peak {est_gib:.1f} GiB > --dense-limit-gib "
                                               f"{args.dense_limit_gib:g}"}
                    print(f"[bench] {label}: skipped ({row[variant]['skipped']})", flush=True)
                    continue
                spec = {"op": op, "batch": b, "n": n, "variant": variant, "budget": budget, "k": args.k,
                        "radius": args.radius, "repeats": args.repeats, "threads": args.threads,
                        "fps_steps": args.fps_reference_steps}
                print(f"[bench] {label} ...", flush=True)
                out = measure(spec)
                out["median_s"] = statistics.median(out["seconds"])
                row[variant] = out
                scaled = (f" (scaled from {out['extrapolated_from_steps']} steps)"
                          if "extrapolated_from_steps" in out else "")
                print(f"[bench] {label}: {out['median_s']:.3f} s{scaled}, +{out['peak_mib']:.0f} MiB, {out['blocks']} "
                      f"block(s)  (load {os.getloadavg()[0]:.1f})", flush=True)
            rows.append(row)

    after = machine()
    print(f"\nsynthetic room, M = N/4 FPS centres, knn k={args.k}, ball query r={args.radius:g} m x 32, "
          f"budget {budget / 2**20:g} Mi distances; {after['cpus']} CPUs, {after['torch_threads']} torch threads, "
          f"torch {after['torch']}; load avg {before['load_avg'][0]:.1f} before, {after['load_avg'][0]:.1f} after")
    print("kdtree: search='kdtree'; blocked: search='brute' (fps: the bucketed kernel); dense: fps = the dense "
          f"greedy torch loop (ops.fps_reference, * = scaled from its first {args.fps_reference_steps} steps), "
          "others = search='brute', budget=None, one (B, M, N) block; matmul (knn only) = the previous knn, "
          "square_distance + topk; scipy = raw cKDTree, tree built in the call (ball_query: its lists)")

    def cell(res, width):
        if res is None:
            return f"{'':>{width + 7}}"
        if "skipped" in res:
            return f"{'skipped':>{width}}{'-':>7}"
        star = "*" if "extrapolated_from_steps" in res else ""
        seconds = f"{res['median_s']:.3f}{star}"
        return f"{seconds:>{width}}{res['peak_mib']:>7.0f}"

    def ratio(num, den):
        if num is None or den is None or "skipped" in num or "skipped" in den:
            return f"{'-':>9}"
        return f"{num['median_s'] / den['median_s']:>9.1f}"

    print(f"{'op':<11}{'B':>2}{'N':>7}{'M':>7}{'blocks':>7}{'kdtree s':>10}{'MiB':>7}{'blocked s':>11}{'MiB':>7}"
          f"{'dense s':>10}{'MiB':>7}{'matmul s':>10}{'MiB':>7}{'scipy s':>9}{'MiB':>7}{'dense/blk':>10}"
          f"{'blk/kd':>9}{'kd/scipy':>9}")
    for row in rows:
        blk, den, kd, sp = row["blocked"], row["dense"], row.get("kdtree"), row.get("scipy")
        print(f"{row['op']:<11}{row['batch']:>2}{row['n']:>7}{row['m']:>7}{blk['blocks']:>7}{cell(kd, 10)}"
              f"{cell(blk, 11)}{cell(den, 10)}{cell(row.get('matmul'), 10)}{cell(sp, 9)}{ratio(den, blk):>10}"
              f"{ratio(blk, kd)}{ratio(kd, sp)}")
    print("MiB: peak RSS above the RSS just before the call (getrusage ru_maxrss, fresh process per "
          "measurement); s: median wall-clock; dense/blk, blk/kd, kd/scipy: time ratios")
    for r in rows:
        for variant in ("dense", "matmul"):
            if "skipped" in r.get(variant, {}):
                print(f"{variant} {r['op']} at B={r['batch']} N={r['n']} skipped: {r[variant]['skipped']}")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {"sizes": args.sizes, "configs": configs, "ops": args.ops, "k": args.k, "radius_m": args.radius,
                     "ball_slots": 32, "centres": "N/4 by fps", "budget": budget, "repeats": args.repeats,
                     "dense_limit_gib": args.dense_limit_gib, "threads": args.threads,
                     "fps_reference_steps": args.fps_reference_steps,
                     "memory": "peak RSS (getrusage ru_maxrss) minus RSS before the call, fresh subprocess"},
        "machine": {**after, "load_avg_before": before["load_avg"]}, "results": rows,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
