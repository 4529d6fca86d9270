"""Command line: ``python -m workbench COMMAND``; ``python -m workbench COMMAND --help`` lists its options.

Every command that works on a dataset opens the same workspace as the app and the REST API
(``workbench.workspace``): ``--data`` (dataset folder), ``--condition`` (what "similar" means), ``--workdir``
(artifacts) and ``--config`` (TOML; flags override it). ``--run NAME`` picks the fine-tuned featurizer of run
NAME, ``--backend`` the engine that embeds (``auto``: onnxruntime when the model is exported, else PyTorch).
Missing earlier steps run automatically, from cache when possible. User errors exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from core.config import CONFIG_SECTIONS, OBJECTIVES
from core.dedup import DEFAULT_COSINE as DEDUP_COSINE
from core.dedup import DEFAULT_MAX_SHARE as DEDUP_MAX_SHARE
from core.dedup import DEFAULT_NEIGHBOURS as DEDUP_NEIGHBOURS
from core.dedup import DEFAULT_THRESHOLD as DEDUP_THRESHOLD
from core.dedup import METHODS as DEDUP_METHODS
from core.errors import WorkbenchError
from core.rankers import list_rankers, ranker_spec
from core.workdir import PRETRAINED

if TYPE_CHECKING:
    from core.evaluate import RetrievalResult
    from core.train import TrainProgress
    from workbench.workspace import Workspace, WorkspaceSpec

log = logging.getLogger("workbench")


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not 0 < value < math.inf:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
        return value

    return parse


class _HelpFormatter(argparse.HelpFormatter):
    """Argparse's help layout, except that a line break in an option's help starts a new line (a list of rankers)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        for paragraph in text.splitlines():  # a loop, not a comprehension: super() needs the method's scope
            lines.extend(super()._split_lines(paragraph, width))
        return lines


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the command and the problem) and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _ranker_help(lead: str, names: Sequence[str]) -> str:
    """``lead``, then one line per ranker: its name and what its score means (the registry's line)."""
    return "\n".join([lead, *(f"{name}: {ranker_spec(name).score_meaning}" for name in names)])


def _flag_groups() -> dict[str, _Parser]:
    """Reusable option groups; each command takes only the groups it uses."""
    from workbench.workspace import BACKENDS

    quiet = _Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    data = _Parser(add_help=False, parents=[quiet])
    group = data.add_argument_group("workspace")
    group.add_argument("--data", type=Path, help="dataset folder, one sub-folder per label (default: bundled demo)")
    group.add_argument("--condition", help="attribute that defines similarity (a column of <data>/attributes.csv)")
    group.add_argument("--attributes", help="attributes CSV (default: <data>/attributes.csv)")
    group.add_argument("--workdir", type=Path, default=Path("artifacts"), help="artifact folder (default: %(default)s)")
    group.add_argument(
        "--config", type=Path, help=f"TOML config file ({', '.join(f'[{name}]' for name in CONFIG_SECTIONS)} tables)"
    )
    group.add_argument("--seed", type=int, help="seed for split, comparative sets, training and bootstrap")

    featurizer = _Parser(add_help=False, parents=[data])
    group = featurizer.add_argument_group("featurizer")
    group.add_argument("--run", help=f"fine-tuned featurizer of this run (default: {PRETRAINED})")
    group.add_argument("--backend", choices=BACKENDS, default="auto", help="embedding engine (default: %(default)s)")
    group.add_argument("--onnx", type=Path, help="an exported model for --backend onnx (default: the cached export)")
    group.add_argument("--backbone", help="architecture of the pretrained featurizer (default: efficientnet_lite0)")
    group.add_argument("--weights", help="'default', 'none' or a weights file")
    group.add_argument("--batch-size", type=_positive(int), help="images per forward pass")
    group.add_argument("--device", help="cpu or cuda (default: cuda when available)")

    training = _Parser(add_help=False)
    group = training.add_argument_group("fine-tuning")
    group.add_argument("--epochs", type=int, help="fine-tuning epochs (0 = keep the pretrained model)")
    group.add_argument("--lr", type=_positive(float), help="peak learning rate of the new head")
    group.add_argument(
        "--freeze-body",
        action="store_true",
        default=None,
        help="train only the last stage of the body (faster; the embedding still adapts)",
    )
    group.add_argument("--input-size", type=int, help="training resolution (default: the backbone's)")
    group.add_argument("--restart", action="store_true", help="start the run over instead of resuming it")
    group.add_argument("--objective", choices=OBJECTIVES, help="what fine-tuning optimises")
    group.add_argument("--margin", type=_positive(float), help="triplet margin (default 0.2)")
    group.add_argument("--mining", choices=("semihard", "hard", "all"), help="triplet mining (default: semihard)")

    svm = _Parser(add_help=False)
    group = svm.add_argument_group("SVM ranker")
    group.add_argument("--C", type=_positive(float), dest="svm_c", help="regularisation C (default 0.01)")
    group.add_argument("--rounds", type=int, help="hard-negative mining rounds (default 1)")
    return {"quiet": quiet, "data": data, "featurizer": featurizer, "training": training, "svm": svm}


def get_args_parser() -> argparse.ArgumentParser:
    """The argument parser of all sub-commands."""
    from workbench.workflows import INDEX_KINDS

    groups = _flag_groups()
    rankers, learned = list_rankers(), list_rankers(learned=True)
    servable = [name for name in rankers if ranker_spec(name).index_servable]
    parser = _Parser(prog="python -m workbench", description="Image-similarity ranking workbench")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str, *parents: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[groups[p] for p in parents], help=help_text, description=help_text)

    prepare = command("prepare", "scan the dataset, split it, draw comparative sets", "data")
    prepare.add_argument("--train-fraction", type=float, help="share of each label for training (default 0.75)")
    command("featurize", "embed every image (cached by content hash)", "featurizer")
    evaluate = command("evaluate", "rank of the positive per ranker, with CIs", "featurizer")
    evaluate.add_argument(
        "--ranker",
        action="extend",
        nargs="+",
        choices=(*rankers, "all"),
        help=_ranker_help("one or more, e.g. --ranker projection cosine (default: all on offer); scores:", rankers),
    )
    evaluate.add_argument("--split", choices=("test", "train"), default="test", help="which comparative sets")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    search = command("search", "top-k most similar dataset images for an image", "featurizer")
    search.add_argument("image", type=Path, help="query image file")
    search.add_argument("-k", type=_positive(int), default=15, help="how many results (default: %(default)s)")
    search.add_argument(
        "--ranker",
        choices=rankers,
        help=_ranker_help(
            "(default: the ranker tune chose when it ran and no --run is given, else cosine); its score:", rankers
        ),
    )
    search.add_argument(
        "--fuse",
        action="append",
        metavar="MEANING=WEIGHT",
        help="fuse the meanings of 'similar' of the folder's attributes.csv, e.g. --fuse label=1 --fuse setting=1 "
        "(label: the label folders; each attribute by its column name; unnamed meanings weigh 0): the fused score is "
        "the weighted mean of each meaning's calibrated probability of the same value",
    )
    search.add_argument(
        "--look-weight",
        type=float,
        metavar="W",
        help="projection only: the look's share of the score, (1 - W) x label agreement + W x look (default: the "
        "fitted ranker's, 0.6); 1 ranks by looks alone, 0 by label agreement alone",
    )
    command(
        "train",
        "fine-tune the backbone on the training split, then fit the SVM ranker",
        "featurizer",
        "training",
        "svm",
    )
    fit = command("fit", "fit learned rankers on the featurizer's embeddings", "featurizer", "svm")
    fit.add_argument(
        "--ranker", action="extend", nargs="+", choices=(*learned, "all"), help="one or more (default: all learned)"
    )
    fit.add_argument(
        "--missing",
        action="store_true",
        help="fit only rankers not yet fitted for this featurizer and data (default rankers: the quick ones, "
        "svm and projection)",
    )
    fit.add_argument(
        "--fusion",
        action="store_true",
        help="fit instead the rankers that search --fuse and the REST fuse field weigh, where missing or stale: the "
        "label folders' svm and one per column of the folder's attributes.csv",
    )
    export = command("export", "export the featurizer to ONNX, validated against PyTorch", "featurizer")
    export.add_argument("--out", type=Path, help="target .onnx file (default: the workdir's export cache)")
    export.add_argument(
        "--with-projection",
        type=Path,
        metavar="FILE",
        help="also write FILE: the model with the fitted projection ranker baked in (rank its output by dot product)",
    )
    command(
        "experiment", "fine-tune, fit SVMs, evaluate every ranker, pretrained vs fine-tuned: one report",
        "featurizer", "training", "svm",
    )  # fmt: skip
    tune = command(
        "tune",
        "choose the fine-tuning recipe and ranker on a validation split of the training split; the winner becomes "
        "the app's default",
        "data",
    )
    tune.add_argument("--epochs", type=_positive(int), help="epochs of every recipe (default: each recipe's, 4)")
    tune.add_argument(
        "--budget-min", type=_positive(float), default=15.0, help="time budget in minutes (default: %(default)s)"
    )
    tune.add_argument(
        "--recipe",
        action="append",
        help="recipe to try, repeatable, in order (default: classification, triplet, multisimilarity, supcon; 'none': "
        "pretrained only)",
    )
    tune.add_argument(
        "--ranker", action="extend", nargs="+", choices=rankers, help="one or more (default: cosine l2 svm projection)"
    )
    index = commands.add_parser("index", help="a saved vector index of the dataset: build, add, remove, search")
    index_commands = index.add_subparsers(dest="index_command", required=True, metavar="ACTION", parser_class=_Parser)
    index_flags = _Parser(add_help=False, parents=[groups["featurizer"]])
    index_flags.add_argument("--index-dir", type=Path, help="saved index folder (default: in the workdir)")

    def index_command(name: str, help_text: str) -> argparse.ArgumentParser:
        return index_commands.add_parser(name, parents=[index_flags], help=help_text, description=help_text)

    build = index_command("build", "index every dataset image (replaces the saved index)")
    build.add_argument("--kind", choices=INDEX_KINDS, default="auto")
    build.add_argument(
        "--dtype",
        choices=("float32", "float16", "int8"),
        default="float32",
        help="how vectors are stored (exact: float32 or float16; faiss: also int8, scalar-quantised; "
        "float16 halves and int8 quarters the index, see docs/scale.md)",
    )
    build.add_argument("--ranker", choices=servable, default="cosine", help="what an approximate index serves")
    build.add_argument("--milvus-uri", help="Milvus server URI (default: Milvus Lite file <index-dir>/milvus.db)")
    index_command("add", "add dataset images missing from the index (no rebuild)")
    remove = index_command("remove", "remove images (matched by content hash)")
    remove.add_argument("images", type=Path, nargs="+")
    index_search = index_command("search", "top-k indexed images for an image")
    index_search.add_argument("image", type=Path)
    index_search.add_argument("-k", type=_positive(int), default=15)
    index_search.add_argument(
        "--ranker",
        choices=rankers,
        help=_ranker_help(
            "(default: the ranker the index was built for; cosine for an exact index); its score:", rankers
        ),
    )
    serve = command(
        "serve", "REST service: POST /search, POST /embed, GET /health (OpenAPI at /openapi.json)", "featurizer"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s; 0.0.0.0 publishes it)")
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve.add_argument(
        "--max-upload-mb", type=_positive(float), help="largest image file (default: [uploads] max_file_bytes, 20 MiB)"
    )
    serve.add_argument(
        "--max-pixels", type=_positive(int), help="most pixels decoded per image (default: [uploads] max_pixels_full)"
    )
    serve.add_argument(
        "--inference-threads", type=_positive(int), default=2, help="queries embedded at once (default: %(default)s)"
    )
    serve.add_argument(
        "--max-connections", type=_positive(int), default=200, help="concurrent connections (default: %(default)s)"
    )
    serve.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds to send a request body (default: %(default)s)",
    )
    spark = command("spark-featurize", "embed images with Apache Spark into Parquet (ONNX model)", "featurizer")
    spark.add_argument("--out", type=Path, required=True, help="output Parquet folder (replaced)")
    spark.add_argument("--master", default="local[2]", help="Spark master URL (default: %(default)s)")
    spark.add_argument("--partitions", type=_positive(int), default=4, help="(default: %(default)s)")
    spark.add_argument(
        "--paths", type=Path, help="text file with one image path per line (default: every image of --data)"
    )
    imports = command("import-urls", "download a label<TAB>url list into a folder per label", "quiet")
    imports.add_argument(
        "list", type=Path, help="URL list: one label<TAB>url per line; blank lines and # comments allowed"
    )
    imports.add_argument("--out", type=Path, required=True, help="dataset folder to fill (re-running resumes)")
    imports.add_argument("--workers", type=_positive(int), default=8, help="downloads in flight (default: %(default)s)")
    imports.add_argument(
        "--timeout", type=_positive(float), default=10.0, help="seconds per attempt (default: %(default)s)"
    )
    imports.add_argument("--retries", type=int, default=2, help="retries of transient failures (default: %(default)s)")
    imports.add_argument(
        "--max-bytes", type=_positive(int), default=20 * 1024 * 1024, help="largest download (default: %(default)s)"
    )
    dedup = command(
        "dedup", "find near-duplicate photos (hash, embedding or both); --apply moves them aside", "featurizer"
    )
    dedup.add_argument(
        "--method",
        choices=DEDUP_METHODS,
        default="hash",
        help="hash: dhash distance (folder only); embedding: cosine over the k-NN graph (featurizes); both: either "
        "flags a pair (default: %(default)s)",
    )
    dedup.add_argument(
        "--threshold", type=int, help=f"largest dhash distance in bits out of 256 (default: {DEDUP_THRESHOLD})"
    )
    dedup.add_argument("--cosine", type=float, help=f"smallest embedding cosine (default: {DEDUP_COSINE})")
    dedup.add_argument(
        "--neighbours",
        type=_positive(int),
        default=DEDUP_NEIGHBOURS,
        help="nearest photos each photo is compared with (default: %(default)s)",
    )
    dedup.add_argument(
        "--apply", action="store_true", help="move removed images to <data>/_duplicates/ (default: report only)"
    )
    dedup.add_argument(
        "--max-share",
        type=float,
        default=DEDUP_MAX_SHARE,
        help="--apply refuses to move more than this share of the photos (default: %(default)s)",
    )
    dedup.add_argument(
        "--allow-cross-label",
        action="store_true",
        help="--apply also moves a photo whose kept copy carries another label (refused by default)",
    )
    dedup.add_argument(
        "--leaks", action="store_true", help="also write every near-duplicate pair across the split to leaks.json"
    )
    return parser


def workspace_spec(args: argparse.Namespace) -> WorkspaceSpec:
    """The workspace the parsed flags describe (config file first, flags override it)."""
    from workbench.workspace import WorkspaceSpec, configure

    def get(name: str) -> Any:
        return getattr(args, name, None)

    config = configure(
        get("config"),
        data={
            "root": get("data"), "seed": get("seed"), "train_fraction": get("train_fraction"),
            "condition": get("condition"), "attributes": get("attributes"),
        },
        featurizer={"backbone": get("backbone"), "weights": get("weights"), "batch_size": get("batch_size"), "device": get("device")},
        train={
            "backbone": get("backbone"), "weights": get("weights"), "epochs": get("epochs"), "learning_rate": get("lr"),
            "batch_size": get("batch_size"), "freeze_body": get("freeze_body"), "input_size": get("input_size"),
            "seed": get("seed"), "device": get("device"), "objective": get("objective"), "margin": get("margin"),
            "mining": get("mining"),
        },
        svm={"C": get("svm_c"), "hard_negative_rounds": get("rounds")},
        uploads={
            "max_file_bytes": int(get("max_upload_mb") * 2**20) if get("max_upload_mb") else None,
            "max_pixels_full": get("max_pixels"),
        },
    )  # fmt: skip
    return WorkspaceSpec(
        config, get("workdir") or Path("artifacts"), get("run") or PRETRAINED, get("backend") or "auto", get("onnx")
    )


class _PhaseBars:
    """One tqdm bar per phase of a long step (featurizing, fitting rankers, downloading).

    A bar starts at the first update (not before: an empty bar would sit on the line the next log message needs),
    closes when its phase is done (its line stays; later log lines need not redraw it) and a new one starts when
    the counts start over (the next phase, e.g. featurizing with a second model).
    """

    def __init__(self, description: str, unit: str) -> None:
        self.description, self.unit = description, unit
        self.bar: Any = None  # the bar of the phase in progress, when it drew one
        self.finished = (0, 0)  # (done, total) of the phase whose bar closed last

    def update(self, done: int, total: int, note: str = "") -> None:
        """``done`` of ``total`` finished; ``note`` (say, what is being worked on) is shown beside the bar."""
        from tqdm import tqdm

        if self.bar is None or total != self.bar.total or done < self.bar.n:
            self.close()  # the counts started over: a new phase
            if total <= 0 or (done >= total and self.finished == (done, total)):
                return  # a call repeating the end of the phase just closed
            self.finished = (0, 0)
            self.bar = tqdm(total=total, desc=self.description, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()  # finished: its line stays, and later log lines need not redraw it
            self.finished = (done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress(
    description: str, quiet: bool, unit: str = "img"
) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """A ``progress(done, total)`` callback drawing one bar per phase (:class:`_PhaseBars`), and its ``close``."""
    if quiet:
        return None, lambda: None
    bars = _PhaseBars(description, unit)
    return bars.update, bars.close


class _ThroughProgressBars(logging.Handler):
    """Writes log lines with ``tqdm.write``: above a live progress bar, never on its line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: report it, never raise
            self.handleError(record)


class _OncePerCommand(logging.Filter):
    """Drops a log line identical to one this command already showed (a warning met once per split, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


#: Libraries whose INFO lines say nothing a user acts on (faiss lists every CPU build it tried to load).
_CHATTY_LOGGERS = ("faiss",)


def _configure_logging(quiet: bool) -> None:
    """INFO (or, with ``--quiet``, WARNING) lines on stderr, written around the progress bars, each line once."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ThroughProgressBars)]:
        root.removeHandler(handler)  # main() called again in one process (tests): one handler, a fresh filter
    handler = _ThroughProgressBars()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(_OncePerCommand())
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _open(args: argparse.Namespace, spec: WorkspaceSpec | None = None, deep: bool | None = None) -> Workspace:
    """Open the workspace of the flags; say what changed in the folder and whether the learned rankers still
    match it (one line each, on stderr)."""
    from workbench.workflows import since_fit
    from workbench.workspace import open_workspace

    spec = spec or workspace_spec(args)
    update, close = _progress(f"featurize ({spec.run})", args.quiet)
    try:
        ws = open_workspace(spec, update, deep=deep)
    finally:
        close()
    if ws.changes and not ws.changes.first:
        log.info("dataset folder: %s since it was last opened", ws.changes.summary())
    line = since_fit(ws).line()
    if line and args.command != "fit":
        log.warning("%s", line)
    return ws


def _step_bar(quiet: bool) -> tuple[Callable[[TrainProgress], None] | None, Callable[[], None]]:
    """One tqdm bar for all of fine-tuning (every step of every epoch), the epoch and accuracies beside it."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bars: list[Any] = []

    def update(event: TrainProgress) -> None:
        if not bars:
            bars.append(
                tqdm(
                    total=event.epochs * event.steps, desc="fine-tune", unit="step", file=sys.stderr, dynamic_ncols=True
                )
            )
        bar = bars[0]
        bar.update((event.epoch - 1) * event.steps + event.step - bar.n)
        postfix = {"epoch": f"{event.epoch}/{event.epochs}"}
        if event.metrics:
            postfix |= {
                "train_acc": f"{event.metrics.train_accuracy:.1%}",
                "test_acc": f"{event.metrics.test_accuracy:.1%}",
            }
        bar.set_postfix(postfix, refresh=False)
        if event.metrics and event.epoch == event.epochs:
            bar.close()  # fine-tuning is over: the next phase draws its own bar

    def close() -> None:
        if bars:
            bars[0].close()

    return update, close


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for a user-facing error, including a bad flag)."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error, already printed in one line (2)
        return stop.code if isinstance(stop.code, int) else 2
    _configure_logging(args.quiet)
    try:
        return COMMANDS[args.command](args)
    except WorkbenchError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; saved artifacts are unchanged")
        return 130


def _cmd_prepare(args: argparse.Namespace) -> int:
    from workbench.workspace import prepared_data

    spec = workspace_spec(args)
    prepared = prepared_data(spec.config.data, spec.layout, force=True, deep=True)
    counts = prepared.dataset.label_counts()
    print(
        f"{len(prepared.dataset)} images in {len(counts)} labels: " + ", ".join(f"{k}={v}" for k, v in counts.items())
    )
    print(
        f"split: {len(prepared.split.train)} train / {len(prepared.split.test)} test; "
        f"{len(prepared.test_sets)} test queries x (1 + {prepared.test_sets.n_negatives}); "
        f"skipped {len(prepared.skipped)} file(s)"
    )
    for item in prepared.skipped:
        print(f"  skipped {item.reason}")
    if prepared.leaks:
        print(
            f"{prepared.leaks.count} near-duplicate pair(s) straddle the split (the closest in {spec.layout.prepared}; "
            "`dedup --leaks` lists all, `dedup` removes them)"
        )
    print(f"wrote {spec.layout.prepared}")
    return 0


def _cmd_featurize(args: argparse.Namespace) -> int:
    ws = _open(args, deep=True)
    print(f"{ws.embeddings.shape[0]} embeddings of dimension {ws.embeddings.shape[1]} ({ws.fingerprint}, {ws.backend})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from core.evaluate import format_table
    from core.looks import format_looks_table
    from workbench.workflows import (
        in_sample_warning,
        label_errors,
        looks,
        near_duplicate_looks,
        result_summary,
        retrieval,
        save_report,
    )

    ws = _open(args)
    requested = args.ranker or ["all"]
    names = ws.rankers_on_offer() if "all" in requested else list(dict.fromkeys(requested))
    results = ws.evaluate(names, args.split)
    retrieved = retrieval(ws, names, args.split)
    suspects = label_errors(ws)
    copies = looks(ws, names, args.split)
    natural = near_duplicate_looks(ws, names, args.split)  # computed once: for the report and the table below
    report = save_report(ws, results, retrieved, suspects, args.split, copies, natural)
    warning = in_sample_warning(names, args.split)
    if warning and args.json:
        print(warning, file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    result.ranker: {
                        **result_summary(result),
                        "retrieval": full.to_dict(),
                        "looks": {key: value for key, value in look.to_dict().items() if key != "ranks"},
                    }
                    for result, full, look in zip(results, retrieved, copies, strict=True)
                },
                indent=2,
            )
        )
    else:
        print(f"featurizer {ws.fingerprint}, {args.split} comparative sets")
        if warning:
            print(warning)
        print(format_table(results))
        print(f"\nfull gallery: {args.split} images query all {len(ws.embeddings)} images, themselves excluded")
        print(_retrieval_table(retrieved))
        print(f"\nlooks: an edited copy of each {args.split} image searches the whole gallery for its original")
        print(format_looks_table(copies))
        if natural:
            print(
                f"\nnear-duplicates in the data: each {args.split} photo with one (dedup's hash rule) searches the "
                "gallery, itself left out"
            )
            print(format_looks_table(natural, edited=False))
        print(
            f"\n{len(suspects.errors)} likely label error(s) ({suspects.ranker}, {suspects.k} neighbours, "
            f"majority share >= {suspects.min_share:.0%}"
            + (", neighbours from the approximate clustered k-NN graph" if suspects.neighbours != "exact" else "")
            + ") listed in the report"
        )
    log.info("report written to %s", report)
    return 0


def _retrieval_table(results: Sequence[RetrievalResult]) -> str:
    """Full-gallery recall@1/5/10, MAP@R and MRR per ranker, one row each, each with its 95 % interval over the
    queries (when the result has them: Wilson score for recall@k, bootstrap for MAP@R and MRR)."""
    columns = ("recall@1", "recall@5", "recall@10", "map@r", "mrr")
    width = 19 if any(result.intervals for result in results) else 6

    def cell(result: RetrievalResult, name: str) -> str:
        value, interval = result.metrics.get(name, float("nan")), result.intervals.get(name)
        text = f"{value:.3f} [{interval.low:.2f}, {interval.high:.2f}]" if interval else f"{value:.3f}"
        return f"{text:>{width}}"

    header = f"{'ranker':<10} {'queries':>7} " + " ".join(f"{name:>{width}}" for name in columns)
    lines = [header, "-" * len(header)]
    lines += [
        f"{result.ranker:<10} {result.n_queries:>7} " + " ".join(cell(result, name) for name in columns)
        for result in results
    ]
    if width > 6:
        lines.append(
            "(95 % intervals over the queries in brackets: Wilson score for recall@k, bootstrap for MAP@R and MRR)"
        )
    dropped = max((result.n_dropped for result in results), default=0)
    if dropped:
        lines.append(f"({dropped} queries dropped: no other image carries their label)")
    lines.extend(f"({note})" for note in dict.fromkeys(result.note for result in results if result.note))
    return "\n".join(lines)


def _print_hits(rows: Sequence[tuple[int, float, str, str]]) -> None:
    from core.images import printable

    print(f"{'rank':>4}  {'score':>8}  {'label':<16} path")
    for rank, score, label, path in rows:
        print(f"{rank:>4}  {score:>8.4f}  {printable(label):<16} {printable(path)}")


def _cmd_search(args: argparse.Namespace) -> int:
    from core.images import load_image, printable
    from workbench.tuning import default_choice

    image = load_image(args.image)
    spec, ranker = workspace_spec(args), args.ranker
    tuned = default_choice(spec.layout) if args.run is None and ranker is None else None
    if tuned is not None:  # as the app opens: the featurizer and ranker tune chose
        spec, ranker = spec.with_run(tuned[0]), tuned[1]
        log.info("searching with tune's choice, featurizer %s + %s ranker (--run / --ranker override it)", *tuned)
    ws = _open(args, spec)
    if tuned is not None:
        try:
            ws.ranker(tuned[1])
        except WorkbenchError as err:  # as for a deleted run: fall back instead of stopping on tune's stale choice
            log.warning("tune chose the %s ranker, which cannot be used (%s); searching with cosine", tuned[1], err)
            ranker = "cosine"
    query = ws.embed([image])
    if args.fuse:
        return _fused_search(ws, query, args)
    hits = ws.search_embedding(query, ranker or "cosine", args.k, args.look_weight)
    if not args.quiet:
        print(f"score ({ranker or 'cosine'}): {ranker_spec(ranker or 'cosine').score_meaning}", file=sys.stderr)
    if hits and hits[0].parts is not None:  # a blended score: its two parts beside it
        print(f"{'rank':>4}  {'score':>8}  {'label':>6}  {'P(same)':>7}  {'look':>6}  {'label':<16} path")
        for hit in hits:
            agreement, look = hit.parts or (float("nan"), float("nan"))
            chance = float("nan") if hit.probability is None else hit.probability
            print(
                f"{hit.rank:>4}  {hit.score:>8.4f}  {agreement:>6.3f}  {chance:>7.3f}  {look:>6.3f}  "
                f"{printable(hit.record.label):<16} {printable(str(hit.record.path))}"
            )
    elif hits and hits[0].probability is not None:  # a calibrated probability of the same label beside the score
        print(f"{'rank':>4}  {'score':>8}  {'P(same)':>7}  {'label':<16} path")
        for hit in hits:
            print(
                f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.probability or 0.0:>7.3f}  "
                f"{printable(hit.record.label):<16} {printable(str(hit.record.path))}"
            )
    else:
        _print_hits([(hit.rank, hit.score, hit.record.label, str(hit.record.path)) for hit in hits])
    strength = ws.match(query)
    if not strength.close:
        print(f"no close match: {strength.explain()}")
    return 0


def _fused_search(ws: Any, query: Any, args: argparse.Namespace) -> int:
    """``search --fuse``: the attribute rankers (fitted where missing) fused with the given weights."""
    from workbench.attribute_fusion import (
        attribute_rankers,
        fused_search,
        fusion_model,
        fusion_score_meaning,
        parse_fusion_weights,
    )

    weights = parse_fusion_weights(args.fuse)
    rankers = attribute_rankers(ws)
    hits = fused_search(ws, query, fusion_model(rankers, weights), args.k)
    if not args.quiet:
        print(f"score (fusion): {fusion_score_meaning(rankers, weights)}", file=sys.stderr)
    _print_hits([(hit.rank, hit.score, hit.record.label, str(hit.record.path)) for hit in hits])
    return 0


def _ranker_bar(quiet: bool) -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """``progress(done, total, name)`` for fitting rankers: one bar, the ranker being fitted beside it."""
    if quiet:
        return lambda done, total, name: None, lambda: None
    bars = _PhaseBars("fit", "ranker")
    return bars.update, bars.close


def _print_fitted(fitted: Sequence[Any]) -> None:
    for item in fitted:
        print(f"{item.name} ranker fitted in {item.seconds:.1f} s: {item.path}")
        for split, accuracy in (("train", item.train_pairs), ("test", item.test_pairs)):
            if accuracy is not None:
                print(
                    f"  {split} pairs: accuracy {accuracy.accuracy:.1%}, balanced accuracy "
                    f"{accuracy.balanced_accuracy:.1%} ({accuracy.n_pairs} pairs, {accuracy.n_same} same-label; "
                    "95 % intervals from Wilson scores)"
                )


def _cmd_train(args: argparse.Namespace) -> int:
    from workbench.workflows import train_run

    spec = workspace_spec(args)
    run = spec.run if spec.run != PRETRAINED else "default"
    on_step, close_steps = _step_bar(args.quiet)
    on_featurize, close_featurize = _progress(f"featurize ({run})", args.quiet)
    try:
        trained = train_run(spec, run, on_step, on_featurize, resume=not args.restart)
    finally:
        close_steps()
        close_featurize()
    print(f"run {run}: {trained.training.run_dir}")
    print(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'test loss':>9} {'test acc':>8} {'seconds':>7}")
    for m in trained.training.history:
        print(
            f"{m.epoch:>5} {m.train_loss:>10.3f} {m.train_accuracy:>9.1%} {m.test_loss:>9.3f} {m.test_accuracy:>8.1%} {m.seconds:>7.1f}"
        )
    _print_fitted(trained.fitted)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from workbench.workflows import READY_RANKERS, ensure_learned, fit_ranker

    if args.fusion:
        return _fit_fusion(args)
    ws = _open(args, deep=True)
    requested = args.ranker or (list(READY_RANKERS) if args.missing else ["all"])
    names = list_rankers(learned=True) if "all" in requested else list(dict.fromkeys(requested))
    progress, close = _ranker_bar(args.quiet)
    try:
        if not args.missing:
            fitted = []
            for done, name in enumerate(names):
                progress(done, len(names), name)
                fitted.append(fit_ranker(ws, name))
            progress(len(names), len(names), "")
        else:
            ready = ensure_learned(ws, names, progress)
    finally:
        close()
    if not args.missing:
        _print_fitted(fitted)
        return 0
    _print_fitted(ready.fitted)
    if ready.current:
        print(f"already fitted for {ws.fingerprint} on this data: {', '.join(ready.current)}")
    for name, reason in ready.failed:
        print(f"not fitted: {name}: {reason}")
    return 0


def _fit_fusion(args: argparse.Namespace) -> int:
    """``fit --fusion``: the attribute rankers, fitted where missing or stale (what ``search --fuse`` does first)."""
    from workbench.attribute_fusion import attribute_rankers, condition_title

    if args.ranker or args.missing:
        raise WorkbenchError("fit --fusion fits the rankers the fusion weighs; leave out --ranker and --missing")
    ws = _open(args, deep=True)
    progress, close = _ranker_bar(args.quiet)
    try:
        rankers = attribute_rankers(ws, progress)
    finally:
        close()
    if rankers.conditions:
        print(f"fusion rankers ready for {ws.fingerprint}: {', '.join(map(condition_title, rankers.conditions))}")
    for condition, reason in rankers.failed:
        print(f"not fitted: {condition_title(condition)}: {reason}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from workbench.workflows import bake_projection_into, export_featurizer

    result = export_featurizer(workspace_spec(args), args.out)
    print(
        f"wrote {result.path} ({result.metadata.fingerprint}, IR {result.ir_version}, opset {result.opset}); "
        f"validated on batch {result.validation.batch_size}: max |diff| vs PyTorch {result.validation.max_abs_diff:.2e}, "
        f"min cosine {result.validation.min_cosine:.6f}"
    )
    if args.with_projection:
        baked = bake_projection_into(workspace_spec(args), result, args.with_projection)
        print(f"wrote {baked}: the projection ranker baked in (its output is the ranker's vector; rank by dot product)")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from core.evaluate import format_table
    from workbench.workflows import experiment

    spec = workspace_spec(args)
    on_step, close_steps = _step_bar(args.quiet)
    on_featurize, close_featurize = _progress("featurize", args.quiet)
    try:
        report = experiment(
            spec, spec.run if spec.run != PRETRAINED else "default", on_step, on_featurize, not args.restart
        )
    finally:
        close_steps()
        close_featurize()
    for section in report.sections:
        print(f"\n{section.name} featurizer {section.fingerprint}")
        print(format_table(section.results))
        if section.retrieval:
            print("full gallery (each test image queries every image, itself excluded):")
            print(_retrieval_table(section.retrieval))
        if section.svm.train_pairs and section.svm.test_pairs:
            print(
                f"SVM pair accuracy (balanced; 95 % intervals from Wilson scores): "
                f"train {section.svm.train_pairs.balanced_accuracy:.1%}, test {section.svm.test_pairs.balanced_accuracy:.1%}"
            )
    print(f"\nreport: {report.path}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from workbench.tuning import DEFAULT_RECIPES, TuneConfig, TuneProgress, tune

    recipes = {recipe.name: recipe for recipe in DEFAULT_RECIPES}
    chosen = args.recipe or list(recipes)
    unknown = [name for name in chosen if name not in recipes and name != "none"]
    if unknown:
        raise WorkbenchError(f"unknown recipe {unknown[0]!r}; choose from {', '.join(recipes)} or none")
    if "none" in chosen and len(set(chosen)) > 1:
        raise WorkbenchError("--recipe none means the pretrained model only; it cannot be combined with other recipes")
    defaults = TuneConfig()
    config = TuneConfig(
        budget_s=args.budget_min * 60.0,
        rankers=tuple(dict.fromkeys(args.ranker)) if args.ranker else defaults.rankers,
        recipes=tuple(
            dataclasses.replace(recipes[name], epochs=args.epochs or recipes[name].epochs)
            for name in dict.fromkeys(chosen)
            if name != "none"
        ),
        seed=args.seed if args.seed is not None else defaults.seed,
    )

    def progress(event: TuneProgress) -> None:
        if not args.quiet:
            print(f"[{event.elapsed_s:4.0f} s of {event.budget_s:.0f} s] {event.text}", file=sys.stderr, flush=True)

    report = tune(workspace_spec(args), config, progress)
    print(
        f"validation: {report.n_validation} of the {report.n_fit + report.n_validation} training images were held out "
        f"of fine-tuning and fitting; {report.n_queries} of them each searched all {report.n_fit + report.n_validation} "
        "(the test split is unread)"
    )
    looks = any(c.copy_recall_at_1 is not None for c in report.candidates)
    look_head = f" {'copy r@1':>8}" if looks else ""
    print(
        f"{'featurizer':<28} {'ranker':<11} {'MAP@R [95% CI]':<22} {'recall@1 [95% CI]':<22}{look_head} {'seconds':>7}"
    )
    for c in report.candidates:
        look = f" {c.copy_recall_at_1:>8.2f}" if c.copy_recall_at_1 is not None else (" " * 9 if looks else "")
        mark = "  <- best" if c == report.winner else ""
        mark += "  (current default)" if c.choice == report.previous else ""
        mark += f"  rejected: {c.rejected}" if c.rejected else ""
        print(
            f"{c.featurizer:<28} {c.ranker:<11} {c.map_at_r!s:<22} {c.recall_at_1!s:<22}{look} {c.seconds:>7.1f}{mark}"
        )
    for outcome in report.recipes:
        if outcome.status == "trained":
            timing = f", {outcome.seconds_per_epoch:.0f} s/epoch" if outcome.seconds_per_epoch else ""
            print(f"recipe {outcome.recipe.name}: trained ({outcome.seconds:.0f} s{timing})")
    for line in report.not_done():
        print(line)
    print(f"tuned in {report.seconds:.0f} s of a {report.budget_s:.0f} s budget: {report.decision}")
    if report.served_fit_rows:
        print(f"the served {report.choice[1]} ranker is fitted on {report.served_fit_rows} training images")
    print(f"the app opens with {' + '.join(report.choice)}")
    return 0


def _cmd_import_urls(args: argparse.Namespace) -> int:
    from core.ingest import REPORT_NAME, IngestConfig, import_urls

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


def _cmd_dedup(args: argparse.Namespace) -> int:
    from core.data import DUPLICATES_DIR
    from core.dedup import DedupConfig
    from workbench.workflows import dedup

    spec = workspace_spec(args)
    try:
        config = DedupConfig(
            args.method,
            DEDUP_THRESHOLD if args.threshold is None else args.threshold,
            DEDUP_COSINE if args.cosine is None else args.cosine,
            args.neighbours,
        )
    except ValueError as err:
        raise WorkbenchError(str(err)) from None
    update, close = _progress(f"featurize ({spec.run})", args.quiet)
    try:
        outcome = dedup(spec, config, args.apply, args.max_share, args.allow_cross_label, args.leaks, update)
    finally:
        close()
    report = outcome.report
    rule = {
        "hash": f"dhash distance <= {config.hash_threshold}/256 bits",
        "embedding": f"cosine >= {config.cosine_threshold}",
        "both": f"dhash distance <= {config.hash_threshold}/256 bits or cosine >= {config.cosine_threshold}",
    }[config.method]
    print(
        f"{report.n_images} images: {len(report.removed)} near-duplicate(s) ({report.removed_share:.1%}) in "
        f"{report.n_groups} group(s), largest {report.largest_group}, {rule}; {len(report.cross_label)} across labels; "
        f"{len(outcome.exact_duplicates)} exact duplicate(s) already left out by the scan"
    )
    shown = 20
    for row in report.to_dict(max_removed=shown)["removed"]:
        evidence = " ".join(
            part
            for part in (
                f"{row['distance']:>3} bits" if row["distance"] is not None else "",
                f"cos {row['cosine']:.3f}" if row["cosine"] is not None else "",
            )
            if part
        )
        crossing = (
            f"  [{row['removed_label']} ~ {row['kept_label']}]" if row["removed_label"] != row["kept_label"] else ""
        )
        print(f"  {evidence}  {row['removed']}  (keeps {row['kept']}){crossing}")
    if len(report.removed) > shown:
        print(f"  ... {len(report.removed) - shown} more in the report")
    if outcome.moved:
        print(f"moved {len(outcome.moved)} file(s) to {spec.config.data.root / DUPLICATES_DIR}")
        if outcome.reprepared:
            print("prepared.json rebuilt without them")
    elif report.removed:
        print("nothing moved (report only); add --apply to move them aside")
    if outcome.leaks is not None:
        print(f"{outcome.leaks.count} near-duplicate pair(s) across the train/test split: {outcome.leaks_path}")
    print(f"report: {outcome.path}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from workbench import workflows

    ws = _open(args)
    folder = args.index_dir or ws.layout.index
    if args.index_command == "build":
        config = workflows.index_config(args.kind, len(ws.dataset), folder, args.dtype, args.milvus_uri)
        index = workflows.index_build(ws, folder, config, args.ranker)
        print(f"indexed {len(index)} images ({index.backend}) for {ws.fingerprint} in {folder}")
    elif args.index_command == "add":
        added, index = workflows.index_add(ws, folder)
        print(f"added {added} image(s); {len(index)} indexed")
    elif args.index_command == "remove":
        removed, index = workflows.index_remove(ws, folder, args.images)
        print(f"removed {removed} image(s); {len(index)} indexed")
    else:
        hits = workflows.index_search(ws, folder, args.image, args.k, args.ranker)
        _print_hits(
            [(hit.rank, hit.score, hit.label or "?", hit.path or f"<id {hit.id} not in dataset>") for hit in hits]
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from workbench.api import ServeSettings, serve

    settings = ServeSettings(
        workspace_spec(args),
        inference_threads=args.inference_threads,
        max_connections=args.max_connections,
        body_timeout_s=args.body_timeout,
    )
    serve(settings, args.host, args.port, "warning" if args.quiet else "info")
    return 0


def _cmd_spark_featurize(args: argparse.Namespace) -> int:
    from workbench.spark_job import SparkJobConfig, featurize_with_spark
    from workbench.workspace import exported_model, make_featurizer, prepared_data

    spec = workspace_spec(args)
    if args.paths:
        try:
            paths = [Path(line) for line in args.paths.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise WorkbenchError(f"{args.paths}: cannot read the path list ({err})") from err
    else:
        paths = [record.path for record in prepared_data(spec.config.data, spec.layout).dataset.records]
    if spec.onnx is None:  # the cached export of the featurizer, made now if missing
        onnx = exported_model(spec, make_featurizer(dataclasses.replace(spec, backend="auto")).fingerprint)
    else:
        onnx = spec.onnx
    result = featurize_with_spark(
        paths,
        onnx,
        args.out,
        args.partitions,
        spec.config.featurizer.batch_size,
        config=SparkJobConfig(master=args.master),
    )
    print(
        f"wrote {result.n_images} embeddings ({result.n_failed} failed) of {result.fingerprint} to {result.path} "
        f"in {result.seconds:.1f} s ({result.images_per_second:.1f} img/s)"
    )
    if not args.paths:  # the workspace's own photos: opening it (CLI, app, REST) now embeds nothing
        from workbench.spark_job import import_embeddings

        _, added = import_embeddings(result.path, spec.layout.features)
        print(f"added {added} embeddings to the workspace's feature cache ({spec.layout.features})")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare": _cmd_prepare,
    "featurize": _cmd_featurize,
    "evaluate": _cmd_evaluate,
    "search": _cmd_search,
    "train": _cmd_train,
    "fit": _cmd_fit,
    "export": _cmd_export,
    "experiment": _cmd_experiment,
    "tune": _cmd_tune,
    "import-urls": _cmd_import_urls,
    "dedup": _cmd_dedup,
    "index": _cmd_index,
    "serve": _cmd_serve,
    "spark-featurize": _cmd_spark_featurize,
}
