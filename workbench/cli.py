"""Command line: ``python -m workbench {prepare,featurize,evaluate,search,train,train-svm,train-siamese,export,experiment,import-urls,dedup,index,serve,spark-featurize}``.

Every command takes ``--workdir`` (artifacts), ``--data`` (dataset folder) and ``--config`` (TOML);
flags override the config file. Missing earlier steps run automatically, from cache when possible.
``--run NAME`` switches the featurizer to the fine-tuned body of run NAME; ``--backend onnx`` runs the
exported model of that featurizer with onnxruntime instead of PyTorch (same features, same cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.config import WorkbenchConfig, load_config
from core.errors import WorkbenchError

log = logging.getLogger("workbench")

RANKER_CHOICES = ("random", "l1", "l2", "cosine", "svm", "siamese")


def get_args_parser() -> argparse.ArgumentParser:
    """The argument parser of all sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workdir", type=Path, default=Path("artifacts"), help="artifact folder (default: %(default)s)"
    )
    common.add_argument("--config", type=Path, help="TOML config file ([data], [featurizer], [train], [svm] tables)")
    common.add_argument("--data", type=Path, help="dataset folder, one sub-folder per label (default: bundled demo)")
    common.add_argument("--seed", type=int, help="seed for split, comparative sets, training and bootstrap")
    common.add_argument("--condition", help="attribute that defines similarity (a column of <data>/attributes.csv)")
    common.add_argument("--attributes", help="attributes CSV (default: <data>/attributes.csv)")
    common.add_argument("--backbone", help="featurizer architecture (default: efficientnet_lite0)")
    common.add_argument("--weights", help="'default', 'none' or a weights file")
    common.add_argument("--run", help="use the fine-tuned featurizer of this run (see `train`)")
    common.add_argument("--batch-size", type=int, help="images per forward pass")
    common.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    common.add_argument(
        "--backend", choices=("torch", "onnx"), default="torch", help="featurizer back end (default: %(default)s)"
    )
    common.add_argument(
        "--onnx", type=Path, help="model for --backend onnx (default: <workdir>/onnx/<run or pretrained>.onnx)"
    )
    common.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--epochs", type=int, help="fine-tuning epochs (0 = keep the pretrained model)")
    training.add_argument("--lr", type=float, help="peak learning rate of the new head")
    training.add_argument("--freeze-body", action="store_true", default=None, help="train the classifier head only")
    training.add_argument("--input-size", type=int, help="training resolution (default: the backbone's)")
    training.add_argument("--restart", action="store_true", help="start the run over instead of resuming it")
    training.add_argument(
        "--objective",
        choices=("classification", "triplet"),
        help="what fine-tuning optimises (default: classification)",
    )
    training.add_argument("--margin", type=float, help="triplet margin (default 0.2)")
    training.add_argument("--mining", choices=("semihard", "hard", "all"), help="triplet mining (default: semihard)")

    svm = argparse.ArgumentParser(add_help=False)
    svm.add_argument("--C", type=float, dest="svm_c", help="LinearSVC C (default 0.01)")
    svm.add_argument("--rounds", type=int, help="hard-negative mining rounds (default 1)")

    parser = argparse.ArgumentParser(prog="python -m workbench", description="Image-similarity ranking workbench")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", parents=[common], help="scan the dataset, split it, draw comparative sets")
    prepare.add_argument("--train-fraction", type=float, help="share of each label for training (default 0.75)")
    commands.add_parser("featurize", parents=[common], help="embed every image (cached by content hash)")
    evaluate = commands.add_parser("evaluate", parents=[common], help="rank of the positive per ranker, with CIs")
    evaluate.add_argument(
        "--ranker", action="append", choices=(*RANKER_CHOICES, "all"), help="repeatable (default: all)"
    )
    evaluate.add_argument("--split", choices=("test", "train"), default="test", help="which comparative sets")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    search = commands.add_parser("search", parents=[common], help="top-k most similar dataset images for an image")
    search.add_argument("image", type=Path, help="query image file")
    search.add_argument("-k", type=int, default=15, help="how many results (default: %(default)s)")
    search.add_argument("--ranker", choices=RANKER_CHOICES, default="cosine", help="(default: %(default)s)")
    commands.add_parser("train", parents=[common, training], help="fine-tune the backbone on the training split")
    commands.add_parser(
        "train-svm", parents=[common, svm], help="fit the SVM-weighted L2 ranker with Platt calibration"
    )
    commands.add_parser(
        "train-siamese", parents=[common], help="train the Siamese pair head on the training sets' pairs"
    )
    export = commands.add_parser(
        "export", parents=[common], help="export the featurizer to ONNX, validated against PyTorch"
    )
    export.add_argument("--out", type=Path, help="target .onnx file (default: <workdir>/onnx/<run or pretrained>.onnx)")
    commands.add_parser(
        "experiment",
        parents=[common, training, svm],
        help="split, fine-tune, featurize, fit SVMs, evaluate every ranker, pretrained vs fine-tuned: one report",
    )
    index_flags = argparse.ArgumentParser(add_help=False)
    index_flags.add_argument("--index-dir", type=Path, help="saved index folder (default: <workdir>/index)")
    index = commands.add_parser("index", help="a saved vector index of the dataset: build, add, remove, search")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    build = index_commands.add_parser(
        "build", parents=[common, index_flags], help="index every dataset image (replaces the saved index)"
    )
    build.add_argument(
        "--kind", choices=("auto", "exact", "faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus"), default="auto"
    )
    build.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="exact index storage")
    build.add_argument(
        "--ranker", choices=("cosine", "l2", "svm"), default="cosine", help="what an approximate index serves"
    )
    build.add_argument("--milvus-uri", help="Milvus server URI (default: Milvus Lite file <index-dir>/milvus.db)")
    index_commands.add_parser(
        "add", parents=[common, index_flags], help="add dataset images missing from the index (no rebuild)"
    )
    remove = index_commands.add_parser(
        "remove", parents=[common, index_flags], help="remove images (matched by content hash)"
    )
    remove.add_argument("images", type=Path, nargs="+")
    index_search = index_commands.add_parser(
        "search", parents=[common, index_flags], help="top-k indexed images for an image"
    )
    index_search.add_argument("image", type=Path)
    index_search.add_argument("-k", type=int, default=15)
    index_search.add_argument("--ranker", choices=RANKER_CHOICES, default="cosine")
    serve = commands.add_parser(
        "serve", parents=[common], help="REST service: POST /search, POST /embed, GET /health (OpenAPI at /docs)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface (default: %(default)s; 0.0.0.0 publishes the service)"
    )
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest accepted image file (default: %(default)s)"
    )
    serve.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest accepted image, w x h (default: %(default)s)"
    )
    spark = commands.add_parser(
        "spark-featurize", parents=[common], help="embed images with Apache Spark into Parquet (ONNX model)"
    )
    spark.add_argument("--out", type=Path, required=True, help="output Parquet folder (replaced)")
    spark.add_argument("--master", default="local[2]", help="Spark master URL (default: %(default)s)")
    spark.add_argument("--partitions", type=int, default=4, help="(default: %(default)s)")
    spark.add_argument(
        "--paths", type=Path, help="text file with one image path per line (default: every image of --data)"
    )
    imports = commands.add_parser(
        "import-urls", parents=[common], help="download a label<TAB>url list into a folder per label"
    )
    imports.add_argument(
        "list", type=Path, help="URL list: one label<TAB>url per line; blank lines and # comments allowed"
    )
    imports.add_argument("--out", type=Path, required=True, help="dataset folder to fill (re-running resumes)")
    imports.add_argument("--workers", type=int, default=8, help="downloads in flight (default: %(default)s)")
    imports.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt (default: %(default)s)")
    imports.add_argument("--retries", type=int, default=2, help="retries of transient failures (default: %(default)s)")
    imports.add_argument(
        "--max-bytes", type=int, default=20 * 1024 * 1024, help="largest download (default: %(default)s)"
    )
    dedup = commands.add_parser(
        "dedup", parents=[common], help="find near-duplicate images (dhash); --apply moves them aside"
    )
    dedup.add_argument("--threshold", type=int, help="largest Hamming distance in bits out of 256 (default: 32)")
    dedup.add_argument(
        "--apply", action="store_true", help="move removed images to <data>/_duplicates/ (default: report only)"
    )
    return parser


def _overrides(**values: object) -> dict[str, object]:
    return {key: value for key, value in values.items() if value is not None}


def _config(args: argparse.Namespace) -> WorkbenchConfig:
    config = load_config(args.config)
    get = lambda name: getattr(args, name, None)  # noqa: E731  (sub-commands carry different flags)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            **_overrides(
                root=args.data,
                seed=args.seed,
                train_fraction=get("train_fraction"),
                condition=get("condition"),
                attributes=get("attributes"),
            ),
        ),
        featurizer=dataclasses.replace(
            config.featurizer,
            **_overrides(backbone=args.backbone, weights=args.weights, batch_size=args.batch_size, device=args.device),
        ),
        train=dataclasses.replace(
            config.train,
            **_overrides(
                backbone=args.backbone,
                weights=args.weights,
                epochs=get("epochs"),
                learning_rate=get("lr"),
                batch_size=args.batch_size,
                freeze_body=get("freeze_body"),
                input_size=get("input_size"),
                seed=args.seed,
                device=args.device,
                objective=get("objective"),
                margin=get("margin"),
                mining=get("mining"),
            ),
        ),
        svm=dataclasses.replace(config.svm, **_overrides(C=get("svm_c"), hard_negative_rounds=get("rounds"))),
    )


def _progress(
    description: str, quiet: bool, unit: str = "img"
) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update, bar.close


def _prepared(args: argparse.Namespace, config: WorkbenchConfig, force: bool = False):
    from core import pipeline

    if not force and (args.workdir / "prepared.json").exists():
        prepared = pipeline.load_prepared(args.workdir)
        same_data = args.data is None or prepared.config.root.resolve() == config.data.root.resolve()
        if same_data and (args.condition is None or prepared.config.condition == config.data.condition):
            return prepared
        log.info("dataset changed to %s: preparing again", config.data.root)
    prepared = pipeline.prepare(config.data)
    path = pipeline.save_prepared(prepared, args.workdir)
    log.info("wrote %s", path)
    return prepared


def _embeddings(args: argparse.Namespace, config: WorkbenchConfig, prepared, run: str | None):
    from core import pipeline

    if args.backend == "onnx":
        from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

        featurizer = OnnxFeaturizer(
            args.onnx or pipeline.onnx_path(args.workdir, run or "pretrained"), OrtConfig(allow_spinning=False)
        )
    else:
        run_dir = pipeline.run_path(args.workdir, run) if run else None
        featurizer = pipeline.build_featurizer(config.featurizer, run_dir)
    update, close = _progress(f"featurize ({run or 'pretrained'})", args.quiet)
    try:
        embeddings = pipeline.featurize(prepared, featurizer, args.workdir, config.featurizer.batch_size, update)
    finally:
        close()
    return featurizer, embeddings


def _train(args: argparse.Namespace, config: WorkbenchConfig, prepared, run: str):
    from core import pipeline
    from core.train import fine_tune

    bar = None
    if not args.quiet:
        from tqdm import tqdm

    def progress(event) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None or bar.desc != f"epoch {event.epoch}/{event.epochs}":
            if bar is not None:
                bar.close()
            bar = tqdm(total=event.steps, desc=f"epoch {event.epoch}/{event.epochs}", unit="step", file=sys.stderr)
        bar.update(event.step - bar.n)
        if event.metrics:
            bar.set_postfix(
                train_acc=f"{event.metrics.train_accuracy:.1%}", test_acc=f"{event.metrics.test_accuracy:.1%}"
            )

    pipeline.forget_export(args.workdir, run)
    try:
        result = fine_tune(
            prepared.dataset.records,
            prepared.split,
            config.train,
            pipeline.run_path(args.workdir, run),
            progress=progress,
            resume=not getattr(args, "restart", False),
        )
    finally:
        if bar is not None:
            bar.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for a user-facing error)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args, _config(args))
    except WorkbenchError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; saved artifacts are unchanged")
        return 130


def _cmd_prepare(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    prepared = _prepared(args, config, force=True)
    counts = prepared.dataset.label_counts()
    print(
        f"{len(prepared.dataset)} images in {len(counts)} labels: " + ", ".join(f"{k}={v}" for k, v in counts.items())
    )
    print(
        f"split: {len(prepared.split.train)} train / {len(prepared.split.test)} test; skipped {len(prepared.skipped)} file(s)"
    )
    for item in prepared.skipped:
        print(f"  skipped {item.reason}")
    if prepared.leaks:
        print(
            f"{len(prepared.leaks)} near-duplicate pair(s) straddle the split (see the warnings; `dedup` removes them)"
        )
    return 0


def _cmd_featurize(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    featurizer, embeddings = _embeddings(args, config, _prepared(args, config), args.run)
    print(f"{embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} ({featurizer.fingerprint})")
    return 0


def _ranker_names(requested: list[str] | None, workdir: Path, featurizer_id: str) -> list[str]:
    from core import pipeline

    if requested and "all" not in requested:
        return list(dict.fromkeys(requested))
    names = ["random", "l1", "l2", "cosine"]
    names += ["svm"] if pipeline.svm_path(workdir, featurizer_id).exists() else []
    return names + (["siamese"] if pipeline.siamese_path(workdir, featurizer_id).exists() else [])


def _cmd_evaluate(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline
    from core.evaluate import format_table

    prepared = _prepared(args, config)
    featurizer, embeddings = _embeddings(args, config, prepared, args.run)
    names = _ranker_names(args.ranker, args.workdir, featurizer.fingerprint)
    rankers = pipeline.load_rankers(names, args.workdir, featurizer.fingerprint, config.data.seed)
    results = pipeline.evaluate_rankers(prepared, embeddings, rankers, config.data.seed, args.split)
    report = pipeline.save_report(results, featurizer.fingerprint, args.workdir)
    if args.json:
        summary = {
            r.ranker: {k: v for k, v in r.to_dict().items() if k not in ("ranks", "query_labels")} for r in results
        }
        print(json.dumps(summary, indent=2))
    else:
        print(f"featurizer {featurizer.fingerprint}, {args.split} comparative sets")
        print(format_table(results))
    log.info("report written to %s", report)
    return 0


def _cmd_search(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline
    from core.images import load_image, printable

    image = load_image(args.image)
    prepared = _prepared(args, config)
    featurizer, embeddings = _embeddings(args, config, prepared, args.run)
    [ranker] = pipeline.load_rankers([args.ranker], args.workdir, featurizer.fingerprint, config.data.seed)
    hits = pipeline.search(image, featurizer, prepared.dataset, embeddings, ranker, args.k)
    print(f"{'rank':>4}  {'score':>8}  {'label':<16} path")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.record.label:<16} {printable(str(hit.record.path))}")
    return 0


def _cmd_train(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    run = args.run or "default"
    result = _train(args, config, _prepared(args, config), run)
    print(f"run {run}: {result.run_dir}")
    print(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'test loss':>9} {'test acc':>8} {'seconds':>7}")
    for m in result.history:
        print(
            f"{m.epoch:>5} {m.train_loss:>10.3f} {m.train_accuracy:>9.1%} {m.test_loss:>9.3f} {m.test_accuracy:>8.1%} {m.seconds:>7.1f}"
        )
    return 0


def _cmd_train_svm(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline

    prepared = _prepared(args, config)
    featurizer, embeddings = _embeddings(args, config, prepared, args.run)
    _, train_accuracy, test_accuracy = pipeline.fit_svm(
        prepared, embeddings, config.svm, featurizer.fingerprint, args.workdir
    )
    print(
        f"SVM ranker for {featurizer.fingerprint} (C={config.svm.C}, {config.svm.hard_negative_rounds} hard-negative round(s))"
    )
    for split, accuracy in (("train", train_accuracy), ("test", test_accuracy)):
        print(
            f"  {split} pairs: accuracy {accuracy.accuracy:.1%}, balanced accuracy {accuracy.balanced_accuracy:.1%} ({accuracy.n_pairs} pairs)"
        )
    return 0


def _cmd_train_siamese(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline

    prepared = _prepared(args, config)
    featurizer, embeddings = _embeddings(args, config, prepared, args.run)
    pipeline.fit_siamese(prepared, embeddings, featurizer.fingerprint, args.workdir)
    print(f"Siamese ranker for {featurizer.fingerprint}: {pipeline.siamese_path(args.workdir, featurizer.fingerprint)}")
    return 0


def _cmd_export(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline
    from export.onnx_export import export_onnx

    featurizer = pipeline.build_featurizer(
        config.featurizer, pipeline.run_path(args.workdir, args.run) if args.run else None
    )
    out = args.out or pipeline.onnx_path(args.workdir, args.run or "pretrained")
    result = export_onnx(featurizer.backbone, out, training_run=args.run or "")
    print(
        f"wrote {result.path} ({result.metadata.fingerprint}, IR {result.ir_version}, opset {result.opset}); "
        f"validated on batch {result.validation.batch_size}: max |diff| vs PyTorch {result.validation.max_abs_diff:.2e}, "
        f"min cosine {result.validation.min_cosine:.6f}"
    )
    return 0


def _cmd_experiment(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline
    from core.artifacts import atomic_write_json, environment_versions
    from core.evaluate import format_table

    run = args.run or "default"
    prepared = _prepared(args, config, force=True)
    _train(args, config, prepared, run)
    sections = {}
    for name, run_name in (("pretrained", None), ("fine-tuned", run)):
        featurizer, embeddings = _embeddings(args, config, prepared, run_name)
        _, train_pairs, test_pairs = pipeline.fit_svm(
            prepared, embeddings, config.svm, featurizer.fingerprint, args.workdir
        )
        names = ["random", "l1", "l2", "cosine", "svm"]
        rankers = pipeline.load_rankers(names, args.workdir, featurizer.fingerprint, config.data.seed)
        results = pipeline.evaluate_rankers(prepared, embeddings, rankers, config.data.seed)
        pipeline.save_report(results, featurizer.fingerprint, args.workdir)
        sections[name] = (featurizer.fingerprint, results, train_pairs, test_pairs)
        print(f"\n{name} featurizer {featurizer.fingerprint}")
        print(format_table(results))
        print(
            f"SVM pair accuracy (balanced): train {train_pairs.balanced_accuracy:.1%}, test {test_pairs.balanced_accuracy:.1%}"
        )
    report = args.workdir / "reports" / f"experiment-{run}.json"
    atomic_write_json(
        report,
        {
            "config": dataclasses.asdict(config),
            "versions": environment_versions(),
            "sections": {
                name: {
                    "featurizer": fingerprint,
                    "svm_pairs": {"train": dataclasses.asdict(train_pairs), "test": dataclasses.asdict(test_pairs)},
                    "results": {
                        r.ranker: {k: v for k, v in r.to_dict().items() if k not in ("ranks", "query_labels")}
                        for r in results
                    },
                }
                for name, (fingerprint, results, train_pairs, test_pairs) in sections.items()
            },
        },
    )
    print(f"\nreport: {report}")
    return 0


def _cmd_import_urls(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core.ingest import REPORT_NAME, IngestConfig, import_urls

    for name in ("workers", "timeout", "max_bytes"):
        if getattr(args, name) <= 0:
            raise WorkbenchError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.retries < 0:
        raise WorkbenchError(f"--retries must be 0 or more, got {args.retries}")
    ingest_config = IngestConfig(
        workers=args.workers, timeout=args.timeout, retries=args.retries, max_bytes=args.max_bytes
    )
    update, close = _progress("download", args.quiet, unit="url")
    try:
        report = import_urls(args.list, args.out, ingest_config, update)
    finally:
        close()
    counts = report.counts()
    print(
        f"{counts['downloaded']} downloaded, {counts['present']} already present, {counts['failed']} failed, "
        f"{counts['duplicate']} duplicate(s), {counts['malformed']} malformed line(s) in {report.seconds:.1f} s"
    )
    for bad in report.malformed:
        print(f"  line {bad.line}: malformed: {bad.reason}")
    for item in report.with_status("failed"):
        print(f"  line {item.line}: failed: {item.url}: {item.reason}")
    for item in report.with_status("duplicate"):
        print(f"  line {item.line}: duplicate: {item.url}: {item.reason}")
    print(f"report: {args.out / REPORT_NAME}")
    return 0


def _cmd_dedup(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline
    from core.artifacts import atomic_write_json
    from core.data import DUPLICATES_DIR, scan_folder
    from core.dedup import DEFAULT_THRESHOLD, find_near_duplicates, move_duplicates

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if not 0 <= threshold <= 256:
        raise WorkbenchError(f"--threshold must be between 0 and 256 bits, got {threshold}")
    root = config.data.root
    scan = scan_folder(root)
    report = find_near_duplicates(scan.dataset, scan.dhashes, threshold)
    exact = [item for item in scan.skipped if "exact duplicate of" in item.reason]
    path = args.workdir / "reports" / "dedup.json"
    atomic_write_json(
        path, {**report.to_dict(), "exact_duplicates": [item.reason for item in exact], "applied": args.apply}
    )
    print(
        f"{report.n_images} images: {len(report.removed)} near-duplicate(s) in {report.n_groups} group(s) at threshold {threshold}/256 bits; "
        f"{len(exact)} exact duplicate(s) already left out by the scan"
    )
    for row in report.to_dict()["removed"]:
        print(f"  {row['distance']:>3}  {row['removed']}  (keeps {row['kept']})")
    if args.apply and report.removed:
        moved = move_duplicates(report, root)
        print(f"moved {len(moved)} file(s) to {root / DUPLICATES_DIR}")
        if (args.workdir / "prepared.json").exists() and pipeline.load_prepared(
            args.workdir
        ).config.root.resolve() == root.resolve():
            _prepared(args, config, force=True)
            print("prepared.json rebuilt without them")
    elif report.removed:
        print("nothing moved (report only); add --apply to move them aside")
    print(f"report: {path}")
    return 0


def _index_config(args: argparse.Namespace, folder: Path, n_images: int):
    from core.index import default_config
    from core.index.exact import ExactConfig
    from core.index.faiss_backend import FaissConfig
    from core.index.milvus_backend import MilvusConfig

    if args.kind == "auto":
        chosen = default_config(n_images)
        return ExactConfig(dtype=args.dtype) if isinstance(chosen, ExactConfig) else chosen
    if args.kind == "exact":
        return ExactConfig(dtype=args.dtype)
    if args.kind == "milvus":
        return MilvusConfig(uri=args.milvus_uri or str(folder / "milvus.db"))
    return FaissConfig(kind=args.kind.removeprefix("faiss-"))


def _cmd_index(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    import shutil

    import numpy as np

    from core import pipeline
    from core.images import content_hash, load_image, printable
    from core.index import content_ids, create_index, load_index
    from core.index.exact import ExactConfig

    prepared = _prepared(args, config)
    featurizer, embeddings = _embeddings(args, config, prepared, args.run)
    fingerprint, folder = featurizer.fingerprint, args.index_dir or args.workdir / "index"
    records = prepared.dataset.records
    ids = content_ids([record.sha256 for record in records])
    if args.index_command == "build":
        index_config = _index_config(args, folder, len(records))
        ranker = None
        if not isinstance(index_config, ExactConfig):
            [ranker] = pipeline.load_rankers([args.ranker], args.workdir, fingerprint, config.data.seed)
        index = create_index(index_config, fingerprint, embeddings.shape[1], ranker)
        index.add(ids, embeddings, fingerprint=fingerprint)
        shutil.rmtree(folder, ignore_errors=True)
        index.save(folder)
        print(f"indexed {len(index)} images ({index.backend}) for {fingerprint} in {folder}")
        return 0
    index = load_index(folder, fingerprint=fingerprint)
    if args.index_command == "add":
        new = ~np.isin(ids, index.ids())
        index.add(ids[new], embeddings[new], fingerprint=fingerprint)
        index.save(folder)
        print(f"added {int(new.sum())} image(s); {len(index)} indexed")
    elif args.index_command == "remove":
        removed = index.remove(content_ids([content_hash(path.read_bytes()) for path in args.images]))
        index.save(folder)
        print(f"removed {removed} image(s); {len(index)} indexed")
    else:
        [ranker] = pipeline.load_rankers([args.ranker], args.workdir, fingerprint, config.data.seed)
        hits = index.search(featurizer.embed([load_image(args.image)]), args.k, ranker, fingerprint=fingerprint)
        by_id = dict(zip(ids.tolist(), records, strict=True))
        print(f"{'rank':>4}  {'score':>8}  {'label':<16} path")
        for rank, (hit_id, score) in enumerate(zip(hits.ids[0].tolist(), hits.scores[0].tolist(), strict=True), 1):
            record = by_id.get(hit_id)
            label, path = (
                (record.label, printable(str(record.path))) if record else ("?", f"<id {hit_id} not in dataset>")
            )
            print(f"{rank:>4}  {score:>8.4f}  {label:<16} {path}")
    return 0


def _cmd_serve(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from workbench.api import ServeSettings, serve

    settings = ServeSettings(
        data=config.data.root,
        workdir=args.workdir,
        choice=args.run or "pretrained",
        backend="onnx" if args.backend == "onnx" else "auto",
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
    )
    serve(settings, args.host, args.port, "warning" if args.quiet else "info")
    return 0


def _cmd_spark_featurize(args: argparse.Namespace, config: WorkbenchConfig) -> int:
    from core import pipeline
    from workbench.spark_job import SparkJobConfig, featurize_with_spark

    if args.paths:
        paths = [Path(line) for line in args.paths.read_text().splitlines() if line.strip()]
    else:
        paths = [record.path for record in _prepared(args, config).dataset.records]
    onnx = args.onnx or pipeline.onnx_path(args.workdir, args.run or "pretrained")
    result = featurize_with_spark(
        paths, onnx, args.out, args.partitions, args.batch_size or 16, config=SparkJobConfig(master=args.master)
    )
    print(
        f"wrote {result.n_images} embeddings ({result.n_failed} failed) of {result.fingerprint} to {result.path} "
        f"in {result.seconds:.1f} s ({result.images_per_second:.1f} img/s)"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, WorkbenchConfig], int]] = {
    "prepare": _cmd_prepare,
    "featurize": _cmd_featurize,
    "evaluate": _cmd_evaluate,
    "search": _cmd_search,
    "train": _cmd_train,
    "train-svm": _cmd_train_svm,
    "train-siamese": _cmd_train_siamese,
    "export": _cmd_export,
    "experiment": _cmd_experiment,
    "import-urls": _cmd_import_urls,
    "dedup": _cmd_dedup,
    "index": _cmd_index,
    "serve": _cmd_serve,
    "spark-featurize": _cmd_spark_featurize,
}
