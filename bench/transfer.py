"""Linear-SVM accuracy of a self-supervised encoder (ConClu, or DCGLR with a 3D-ViT or a DGCNN) after
pretraining, against the same encoder at random initialisation.

Both are judged by the platform's linear-SVM protocol (LinearSVC on frozen global features; fit on the
training split, scored on the official test split) on the ModelNet40 sample's complete classes. The
pretraining (on that training split, labels unused) runs through ``pointtune train <method>`` (local mode),
so this also exercises the CLI path.

    python bench/svm_transfer.py --data-root ../shared/data/modelnet40_subset --epochs 15
    python bench/svm_transfer.py --data-root ../shared/data/modelnet40_subset --setup dcglr-vit3d --epochs 5
    python bench/svm_transfer.py --data-root ../shared/data/modelnet40_subset --setup dcglr-dgcnn --epochs 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

COMMON = ["train.batch_size=32", "train.eval_batch_size=128", "data.classes=[airplane,bathtub,bench]"]
# DCGLR at CPU scale: 512-point clouds, 2 global + 4 local crops + 2 half-resolution views, a small projector,
# one warm-up epoch (the paper's 10 are for 100+ epochs).
_DCGLR = ["data.num_points=512", "method.n_local_crops=4", "method.proj_hidden=256", "method.proj_bottleneck=64",
          "method.out_dim=256", "optim.lr.warmup_epochs=1"]
SETUPS = {
    "conclu": ("conclu", "ConClu (PointNet-256)", [
        "method.backbone.name=pointnet", "method.backbone.emb_dims=256", "method.projector_hidden=256",
        "method.projection_dim=128", "method.predictor_hidden=128", "method.num_prototypes=16",
        "method.view_points=512", "data.num_points=1024"]),
    "dcglr-vit3d": ("dcglr", "DCGLR (3D-ViT, D=64, L=2)", [
        *_DCGLR, "method.backbone.name=vit3d", "method.backbone.dim=64", "method.backbone.depth=2",
        "method.backbone.heads=4", "method.backbone.k=16", "method.backbone.drop_path=0.0"]),
    "dcglr-dgcnn": ("dcglr", "DCGLR (DGCNN, emb 256)", [
        *_DCGLR, "method.backbone.name=dgcnn", "method.backbone.k=20", "method.backbone.emb_dims=256"]),
}


def svm_scores(method, data, seed: int) -> dict[str, float]:
    """Linear-SVM protocol of ``method`` (fit: training split, score: test split)."""
    from pointtune.protocols import evaluate

    torch.manual_seed(seed)
    scores, _ = evaluate(method, {"fit": data.train_eval, "eval": data.test}, torch.device("cpu"), data.class_names,
                         batch_size=128)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--setup", choices=sorted(SETUPS), default="conclu", help="method and encoder")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--output", help="default runs/bench/svm_transfer/<setup>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the setup (e.g. data.num_points=256)")
    args = parser.parse_args()
    method, title, settings = SETUPS[args.setup]

    from pointtune.config import config_from_file
    from pointtune.data import build_datasets
    from pointtune.train.checkpoint import load_method

    out = Path(args.output or f"runs/bench/svm_transfer/{args.setup}").resolve()
    sets = [*settings, *COMMON, "data.name=modelnet40", f"data.root={Path(args.data_root).resolve()}", *args.set]
    exp = config_from_file(method, None, sets)
    data = build_datasets(exp.data)

    torch.manual_seed(exp.train.seed)
    random_init = exp.method_cls(exp.method, data.num_classes, exp.train.epochs)
    before = svm_scores(random_init, data, 0)

    began = time.time()
    cmd = [sys.executable, "-m", "pointtune.cli", "train", method, "--epochs", str(args.epochs), "--no-progress",
           "--output", str(out / "pretrain"), *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True)
    pretrain_s = time.time() - began
    trained = load_method(out / "pretrain" / "checkpoints" / "latest")  # the encoder after every epoch
    after = svm_scores(trained.method, data, 0)

    print(f"\n{title} on the ModelNet40 sample, classes {exp.data.classes}, "
          f"{len(data.train_eval)} train / {len(data.test)} test shapes; linear SVM, test split")
    print(f"{'encoder':<28}{'svm_acc':>10}{'svm_mAcc':>10}")
    print(f"{'random initialisation':<28}{before['svm_acc']:>10.4f}{before['svm_mAcc']:>10.4f}")
    print(f"{f'pretrained, {args.epochs} epochs':<28}{after['svm_acc']:>10.4f}{after['svm_mAcc']:>10.4f}")
    print(f"(pretraining took {pretrain_s:.0f} s)")
    record = {"setup": args.setup, "random_init": before, "pretrained": after, "epochs": args.epochs,
              "pretrain_s": pretrain_s, "settings": sets}
    out.mkdir(parents=True, exist_ok=True)
    (out / "svm_transfer.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out / 'svm_transfer.json'}")


if __name__ == "__main__":
    main()
