"""The ``pointtune data`` command: ``prepare``, ``download`` and ``inspect`` (declared here, so that
:mod:`pointtune.cli` only adds it)::

    pointtune data prepare {scannet,s3dis,modelnet40} --raw DIR --out DIR [--points 2048] [--seed 0]
    pointtune data download DATASET --out DIR [--sha256 HEX]
    pointtune data inspect DIR --dataset NAME [--png FILE] [--items 4]

Errors are :class:`~pointtune.data.errors.DatasetError` lines, printed by the CLI with exit status 2.
"""

from __future__ import annotations

import argparse

__all__ = ["add_data_parser"]


def _prepare(args: argparse.Namespace) -> int:
    from pointtune.data.prepare import prepare

    options = {"num_points": args.points, "seed": args.seed} if args.dataset == "modelnet40" else {}
    print(prepare(args.dataset, args.raw, args.out, progress=not args.no_progress, **options).line())
    return 0


def _download(args: argparse.Namespace) -> int:
    from pointtune.data.download import download_dataset

    for line in download_dataset(args.dataset, args.out, args.sha256, progress=not args.no_progress):
        print(line)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from pointtune.data.inspection import inspect_dataset

    png = args.png if args.png is not None else f"{args.dataset}_inspect.png"
    report = inspect_dataset(args.root, args.dataset, png=png or None, items=args.items)
    print("\n".join(report.lines()))
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``data`` with its three subcommands to the ``pointtune`` subparsers ``sub``."""
    from pointtune.data.download import DOWNLOADS, ON_REQUEST
    from pointtune.data.prepare import PREPARE_DATASETS

    data = sub.add_parser("data", help="get datasets into pointtune's layouts: prepare raw releases, download, inspect")
    steps = data.add_subparsers(dest="data_command", required=True)

    prep = steps.add_parser("prepare", help="convert a raw release (ScanNet v2 scans, S3DIS v1.2 annotations, "
                            "ModelNet40 .off meshes) to the layout pointtune reads; resumable")
    prep.add_argument("dataset", choices=PREPARE_DATASETS)
    prep.add_argument("--raw", required=True, help="the extracted raw release")
    prep.add_argument("--out", required=True, help="the output directory (a rerun skips what is finished)")
    prep.add_argument("--points", type=int, default=2048, help="modelnet40: points sampled per shape (default 2048)")
    prep.add_argument("--seed", type=int, default=0, help="modelnet40: sampling seed (default 0)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_prepare)

    down = steps.add_parser("download", help="download a dataset whose terms allow it; resumable, checksummed")
    down.add_argument("dataset", choices=[*DOWNLOADS, *ON_REQUEST],
                      help="downloadable: " + ", ".join(DOWNLOADS) + "; the others print how to request them")
    down.add_argument("--out", required=True, help="directory for the archive and its extracted files")
    down.add_argument("--sha256", help="the archive's expected SHA-256 (none is published: see the printed one)")
    down.add_argument("--no-progress", action="store_true", help="no progress bar")
    down.set_defaults(func=_download)

    insp = steps.add_parser("inspect", help="items per split, points per item, class histogram, layout, a PNG")
    insp.add_argument("root", metavar="DIR", help="the dataset directory")
    insp.add_argument("--dataset", required=True, help="dataset name (as --dataset of train / sweep)")
    insp.add_argument("--png", help="where to draw a few items coloured by class (default ./<dataset>_inspect.png; "
                      "'' for none)")
    insp.add_argument("--items", type=int, default=4, help="items drawn (default 4)")
    insp.set_defaults(func=_inspect)
