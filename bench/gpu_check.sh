#!/usr/bin/env bash
# bench/gpu_check.sh: every CUDA path of pointtune once, on the GPU(s) of this machine, in under 8 minutes on one
# GPU. Prints one PASS/FAIL line per path with its wall time, then a summary; exits 1 if any path failed. Logs
# and JSON go to $OUT (default runs/gpu_check).
#
#   bash bench/gpu_check.sh            # from the repository root, with .venv holding a CUDA build of torch
#
# Paths: the CUDA build and device; the ops (fps, knn, ball_query, three_nn) on CUDA against the CPU results;
# a 1-GPU `pointtune train` with AMP (--fast-dev-run, then 20 batches); a 2-trial sweep sharing one GPU
# (--gpus-per-worker 0.5, both trials at once); PointNeXt-S on 24k-point S3DIS crops for a few steps with its
# peak memory; the backbone step benchmark on CUDA; with 2+ GPUs, 2 data-parallel workers over NCCL.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PT=.venv/bin/pointtune
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
failed=0
summary=()

check() {  # check NAME COMMAND...: run it, log to $OUT/NAME.log, print PASS/FAIL and the seconds it took
  local name=$1; shift
  local began=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then
    summary+=("PASS  $name  $((SECONDS - began)) s")
  else
    summary+=("FAIL  $name  $((SECONDS - began)) s  (see $OUT/$name.log)"); failed=1
  fi
  echo "${summary[-1]}"
}

check cuda $PY -c "
import torch
assert torch.cuda.is_available(), f'torch {torch.__version__} sees no CUDA device (CPU build?)'
print(torch.__version__, torch.version.cuda, torch.cuda.device_count(), torch.cuda.get_device_name(0))"

check ops_cuda_vs_cpu $PY -c "
import torch
from pointtune import ops
torch.manual_seed(0)
xyz = torch.rand(2, 24576, 3) * torch.tensor([8.0, 6.0, 3.0])
gpu = xyz.cuda()
centres = ops.fps(xyz, 6144)
assert torch.equal(centres, ops.fps(gpu, 6144).cpu()), 'fps differs on CUDA'
q, qg = ops.gather_points(xyz, centres), ops.gather_points(gpu, centres.cuda())
assert torch.equal(ops.knn(q, xyz, 16), ops.knn(qg, gpu, 16).cpu()), 'knn differs on CUDA'
assert torch.equal(ops.ball_query(xyz, q, 0.2, 32), ops.ball_query(gpu, qg, 0.2, 32).cpu()), 'ball_query differs'
i, d = ops.three_nn(xyz, q)
ig, dg = ops.three_nn(gpu, qg)
assert torch.equal(i, ig.cpu()) and torch.allclose(d, dg.cpu(), atol=1e-5), 'three_nn differs on CUDA'
print('fps, knn, ball_query, three_nn: CUDA equals CPU at 24576 points')"

check train_amp_fast_dev_run $PT train cedr --gpu --fast-dev-run --no-progress
check train_amp_20_batches $PT train cedr --gpu --epochs 1 --limit-batches 20 --no-progress --output "$OUT/train_amp"

check sweep_half_gpu $PT sweep cedr --space search_spaces/cedr_quick.yaml --trials 2 --epochs 2 \
  --gpus-per-worker 0.5 --max-concurrent 2 --output "$OUT/sweep_half_gpu"

check pointnext_s_24k $PT train amcontrast3d --gpu --dataset s3dis --data-root "$DATA/s3dis_subset" --epochs 1 \
  --limit-batches 5 --set method.backbone.variant=S --set data.num_points=24000 --set train.batch_size=2 \
  --set data.loop=4 --no-progress --output "$OUT/pointnext_s_24k"

check backbones_cuda $PY bench/backbones.py --device cuda --output "$OUT/backbones.json"

if [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  check ddp_nccl_2_workers $PT train cedr --workers 2 --gpu --fast-dev-run --no-progress
else
  summary+=("SKIP  ddp_nccl_2_workers  (one GPU: NCCL needs one device per worker)"); echo "${summary[-1]}"
fi

# What the runs measured: peak memory per epoch (cost/peak_memory_mb) and epoch time.
for run in train_amp pointnext_s_24k; do
  [ -f "$OUT/$run/metrics.jsonl" ] && $PY -c "
import json, sys
m = [json.loads(l) for l in open('$OUT/$run/metrics.jsonl')][-1]
print(f'$run: epoch {m[\"cost/epoch_s\"]:.1f} s, peak {m[\"cost/peak_memory_mb\"]:.0f} MiB GPU')"
done
[ -f "$OUT/backbones.json" ] && cat "$OUT/backbones.json" | $PY -c "
import json, sys
for r in json.load(sys.stdin)['rows']: print(f'{r[\"backbone\"]:<10} {r[\"median_s\"]:.3f} s/step  {r[\"peak_mib\"]:.0f} MiB')"

echo "---"
printf '%s\n' "${summary[@]}"
exit $failed
