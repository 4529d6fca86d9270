"""Command line: ``python -m workbench {prepare,featurize,evaluate,search}``.

Every command takes ``--workdir`` (artifacts), ``--data`` (dataset folder) and ``--config`` (TOML);
flags override the config file. Missing earlier steps run automatically, from cache when possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config import WorkbenchConfig, load_config
from core.errors import WorkbenchError
from core.rankers import RANKER_NAMES

log = logging.getLogger("core")


def get_args_parser() -> argparse.ArgumentParser:
    """The argument parser of all sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workdir", type=Path, default=Path("artifacts"), help="artifact folder (default: %(default)s)")
    common.add_argument("--config", type=Path, help="TOML config file ([data], [featurizer] tables)")
    common.add_argument("--data", type=Path, help="dataset folder, one sub-folder per label (default: bundled demo)")
    common.add_argument("--seed", type=int, help="seed for split, comparative sets and bootstrap")
    common.add_argument("--backbone", help="featurizer architecture (default: efficientnet_lite0)")
    common.add_argument("--weights", help="'default', 'none' or a weights file")
    common.add_argument("--batch-size", type=int, help="images per forward pass")
    common.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    common.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    parser = argparse.ArgumentParser(prog="python -m workbench", description="Image-similarity ranking workbench")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", parents=[common], help="scan the dataset, split it, draw comparative sets")
    prepare.add_argument("--train-fraction", type=float, help="share of each label for training (default 0.75)")
    commands.add_parser("featurize", parents=[common], help="embed every image (cached by content hash)")
    evaluate = commands.add_parser("evaluate", parents=[common], help="rank of the positive per ranker, with CIs")
    evaluate.add_argument("--ranker", action="append", choices=(*RANKER_NAMES, "all"), help="repeatable (default: all)")
    evaluate.add_argument("--split", choices=("test", "train"), default="test", help="which comparative sets")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    search = commands.add_parser("search", parents=[common], help="top-k most similar dataset images for an image")
    search.add_argument("image", type=Path, help="query image file")
    search.add_argument("-k", type=int, default=15, help="how many results (default: %(default)s)")
    search.add_argument("--ranker", choices=RANKER_NAMES, default="cosine", help="(default: %(default)s)")
    return parser


def _config(args: argparse.Namespace) -> WorkbenchConfig:
    config = load_config(args.config)
    data_overrides = {
        key: value
        for key, value in {"root": args.data, "seed": args.seed, "train_fraction": getattr(args, "train_fraction", None)}.items()
        if value is not None
    }
    featurizer_overrides = {
        key: value
        for key, value in {"backbone": args.backbone, "weights": args.weights, "batch_size": args.batch_size, "device": args.device}.items()
        if value is not None
    }
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, **data_overrides),
        featurizer=dataclasses.replace(config.featurizer, **featurizer_overrides),
    )


def _progress(description: str, quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="img", file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update, bar.close


def _prepared(args: argparse.Namespace, config: WorkbenchConfig, force: bool = False):
    from core import pipeline

    if not force and (args.workdir / "prepared.json").exists():
        prepared = pipeline.load_prepared(args.workdir)
        if args.data is None or prepared.config.root.resolve() == config.data.root.resolve():
            return prepared
        log.info("dataset changed to %s: preparing again", config.data.root)
    prepared = pipeline.prepare(config.data)
    path = pipeline.save_prepared(prepared, args.workdir)
    log.info("wrote %s", path)
    return prepared


def _embeddings(args: argparse.Namespace, config: WorkbenchConfig, prepared):
    from core import pipeline

    featurizer = pipeline.build_featurizer(config.featurizer)
    update, close = _progress("featurize", args.quiet)
    try:
        embeddings = pipeline.featurize(prepared, featurizer, args.workdir, config.featurizer.batch_size, update)
    finally:
        close()
    return featurizer, embeddings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for a user-facing error)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _run(args)
    except WorkbenchError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; saved artifacts are unchanged")
        return 130


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from core import pipeline
    from core.images import load_image
    from core.rankers import make_ranker

    config = _config(args)
    if args.command == "prepare":
        prepared = _prepared(args, config, force=True)
        counts = prepared.dataset.label_counts()
        print(f"{len(prepared.dataset)} images in {len(counts)} labels: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        print(f"split: {len(prepared.split.train)} train / {len(prepared.split.test)} test; skipped {len(prepared.skipped)} file(s)")
        for item in prepared.skipped:
            print(f"  skipped {item.reason}")
        return 0
    prepared = _prepared(args, config)
    featurizer, embeddings = _embeddings(args, config, prepared)
    if args.command == "featurize":
        print(f"{embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} ({featurizer.fingerprint})")
        return 0
    if args.command == "evaluate":
        names = RANKER_NAMES if not args.ranker or "all" in args.ranker else tuple(dict.fromkeys(args.ranker))
        rng = np.random.default_rng(config.data.seed)
        results = pipeline.evaluate_rankers(prepared, embeddings, [make_ranker(n, rng) for n in names], config.data.seed, args.split)
        report = pipeline.save_report(results, featurizer.fingerprint, args.workdir)
        if args.json:
            print(json.dumps({r.ranker: {k: v for k, v in r.to_dict().items() if k not in ("ranks", "query_labels")} for r in results}, indent=2))
        else:
            from core.evaluate import format_table

            print(f"featurizer {featurizer.fingerprint}, {args.split} comparative sets")
            print(format_table(results))
        log.info("report written to %s", report)
        return 0
    if args.command == "search":
        hits = pipeline.search(load_image(args.image), featurizer, prepared.dataset, embeddings, make_ranker(args.ranker), args.k)
        print(f"{'rank':>4}  {'score':>8}  {'label':<16} path")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.record.label:<16} {hit.record.path}")
        return 0
    raise AssertionError(args.command)
