"""What self-supervised pretraining adds to a frozen encoder: the protocol's score of the encoder after
pretraining against the same encoder at random initialisation (same seed, so the same initial weights).

Two protocols, each on its real sample:

* ``--protocol linear_svm`` (default): LinearSVC on frozen global features, fit on the training split and
  scored on the official test split of the ModelNet40 sample's complete classes (``--data-root`` its folder).
* ``--protocol part_seg``: a 1-FC head trained on frozen per-point features of the ShapeNetPart sample's
  training shapes, instance / class mIoU on its test shapes (PointNet's metric; SCL Table 2's "1 FC" setting;
  the sample has no official lists, so ``data.variant=split`` carves a seeded, category-stratified split;
  ``--data-root`` its folder).

The pretraining (on the training split, labels unused) runs through ``pointtune train <method>`` (local
mode; SCL trains its stage 1 first), so this also exercises the CLI path. Prints a table and writes JSON.

    python bench/transfer.py --data-root ../shared/data/modelnet40_subset --setup conclu --epochs 15
    python bench/transfer.py --data-root ../shared/data/modelnet40_subset --setup dcglr-vit3d --epochs 5
    python bench/transfer.py --protocol part_seg --data-root ../shared/data/shapenetpart_subset --setup scl --epochs 10
    python bench/transfer.py --protocol part_seg --data-root ../shared/data/shapenetpart_subset --setup conclu-dgcnn
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

PROTOCOLS = {
    "linear_svm": ("modelnet40", "the ModelNet40 sample", "svm_acc", "svm_mAcc",
                   ["train.batch_size=32", "train.eval_batch_size=128", "data.classes=[airplane,bathtub,bench]"]),
    "part_seg": ("shapenetpart", "the ShapeNetPart sample (cap, skateboard, table)", "ins_miou", "cls_miou",
                 ["train.batch_size=8", "data.variant=split", "data.num_points=512", "protocol.name=part_seg",
                  "protocol.head=1fc", "protocol.epochs=200", "protocol.lr=0.01",
                  "protocol.lr_step=50", "protocol.batch_size=8"]),
}
# DCGLR at CPU scale: 512-point clouds, 2 global + 4 local crops + 2 half-resolution views, a small projector,
# one warm-up epoch (the paper's 10 are for 100+ epochs).
_DCGLR = ["data.num_points=512", "method.n_local_crops=4", "method.proj_hidden=256", "method.proj_bottleneck=64",
          "method.out_dim=256", "optim.lr.warmup_epochs=1"]
_CONCLU = ["method.projector_hidden=256", "method.projection_dim=128", "method.predictor_hidden=128",
           "method.num_prototypes=16", "method.view_points=512"]
SETUPS = {
    "conclu": ("conclu", "ConClu (PointNet-256)", [
        "method.backbone.name=pointnet", "method.backbone.emb_dims=256", *_CONCLU, "data.num_points=1024"]),
    "conclu-dgcnn": ("conclu", "ConClu (DGCNN, emb 256)", [
        "method.backbone.name=dgcnn", "method.backbone.k=20", "method.backbone.emb_dims=256", *_CONCLU]),
    "dcglr-vit3d": ("dcglr", "DCGLR (3D-ViT, D=64, L=2)", [
        *_DCGLR, "method.backbone.name=vit3d", "method.backbone.dim=64", "method.backbone.depth=2",
        "method.backbone.heads=4", "method.backbone.k=16", "method.backbone.drop_path=0.0"]),
    "dcglr-dgcnn": ("dcglr", "DCGLR (DGCNN, emb 256)", [
        *_DCGLR, "method.backbone.name=dgcnn", "method.backbone.k=20", "method.backbone.emb_dims=256"]),
    # SCL at CPU scale: the paper's encoder depths, narrower (E1 2 x 32 -> F 16, E2 4 x 32 -> H 64), 16 patches
    # of 16 points; stage 1 for a third of stage 2's epochs (the paper's 128 of 512 is a quarter).
    "scl": ("scl", "SCL (E2: 4 EdgeConv x 32, H = 64)", [
        "method.edgeconv_k=16", "method.e1_widths=[32,32]", "method.sim_dim=16", "method.e2_widths=[32,32,32,32]",
        "method.point_dim=64", "method.num_patches=16", "method.patch_k=16", "method.threshold_mode=quantile"]),
}


def scores(method, data, cfg, seed: int) -> dict[str, float]:
    """The protocol ``cfg`` of ``method`` (fit: training split, scored: test split)."""
    from pointtune.protocols import evaluate

    torch.manual_seed(seed)
    result, _ = evaluate(method, {"fit": data.train_eval, "eval": data.test}, torch.device("cpu"), data.class_names,
                         cfg, batch_size=64)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="the protocol's sample (see the module docstring)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="linear_svm")
    parser.add_argument("--setup", choices=sorted(SETUPS), default="conclu", help="method and encoder")
    parser.add_argument("--epochs", type=int, default=15, help="pretraining epochs (SCL: of stage 2)")
    parser.add_argument("--output", help="default runs/bench/transfer/<protocol>-<setup>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the setup (e.g. data.num_points=256)")
    args = parser.parse_args()
    method, title, settings = SETUPS[args.setup]
    dataset, sample, headline, second, protocol_sets = PROTOCOLS[args.protocol]

    from pointtune.config import config_from_file, plan_prerequisite
    from pointtune.data import build_datasets
    from pointtune.train.load import load_method

    out = Path(args.output or f"runs/bench/transfer/{args.protocol}-{args.setup}").resolve()
    sets = [*settings, *protocol_sets, f"data.name={dataset}", f"data.root={Path(args.data_root).resolve()}",
            *([f"method.stage1.epochs={max(1, args.epochs // 3)}"] if method == "scl" else []), *args.set]
    exp = config_from_file(method, None, sets)
    data = build_datasets(exp.data)

    pre = plan_prerequisite(exp)  # SCL's stage 2 is built without its stage-1 network here: E2 alone is judged
    untrained = pre.stand_in if pre else exp
    torch.manual_seed(exp.train.seed)
    random_init = untrained.method_cls(untrained.method, data.num_classes, exp.train.epochs)
    before = scores(random_init, data, exp.protocol, 0)

    began = time.time()
    cmd = [sys.executable, "-m", "pointtune.cli", "train", method, "--epochs", str(args.epochs), "--no-progress",
           "--output", str(out / "pretrain"), *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True)
    pretrain_s = time.time() - began
    trained = load_method(out / "pretrain" / "checkpoints" / "latest")  # the encoder after every epoch
    after = scores(trained.method, data, exp.protocol, 0)

    print(f"\n{title} on {sample}, {len(data.train_eval)} train / {len(data.test)} test shapes; "
          f"{args.protocol}, test split")
    print(f"{'encoder':<28}{headline:>10}{second:>10}")
    print(f"{'random initialisation':<28}{before[headline]:>10.4f}{before[second]:>10.4f}")
    print(f"{f'pretrained, {args.epochs} epochs':<28}{after[headline]:>10.4f}{after[second]:>10.4f}")
    print(f"(pretraining took {pretrain_s:.0f} s)")
    record = {"setup": args.setup, "protocol": args.protocol, "random_init": before, "pretrained": after,
              "epochs": args.epochs, "pretrain_s": pretrain_s, "settings": sets}
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out / 'transfer.json'}")


if __name__ == "__main__":
    main()
