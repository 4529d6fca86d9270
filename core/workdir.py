"""The workdir layout: where every artifact of a dataset, a condition and a featurizer lives.

One folder per dataset folder and per meaning of "similar" (the label folders, or an attribute of
``attributes.csv``), so prepared splits, fine-tuning runs, learned rankers and reports of one never serve
another. Features depend only on the images, so the conditions of a dataset share them; exported ONNX models
depend only on the weights, so every workdir of the machine shares them::

    <cache>/onnx/<fingerprint>.onnx                        exported featurizers (one per fingerprint)
    <base>/<dataset>-<hash>/catalogue.npz                  the folder's files: stat, content hash, dhash
    <base>/<dataset>-<hash>/features/<fingerprint>.npz     feature cache (content-hash keyed)
    <base>/<dataset>-<hash>/reports/dedup.json             near-duplicate report
    <base>/<dataset>-<hash>/<labels | by-<attribute>>/
        prepared.json                                      records, split, comparative sets
        default.json                                       featurizer + ranker the app opens with (tune)
        runs/<run>/                                        fine-tuning runs (checkpoint + manifest)
        rankers/<fingerprint>/<ranker>.npz                 learned rankers
        reports/<fingerprint>.json, experiment-<run>.json  evaluation reports
        reports/tune.json                                  every candidate of tune, on validation
        index/                                             a saved vector index
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ArtifactError

#: The featurizer choice that means "no fine-tuning run": the packaged ImageNet weights.
PRETRAINED = "pretrained"


def default_cache_dir() -> Path:
    """The machine-wide cache of things that depend only on model weights (exported ONNX featurizers).

    ``WORKBENCH_CACHE`` if set, else ``$XDG_CACHE_HOME/workbench`` or ``~/.cache/workbench``.
    """
    configured = os.environ.get("WORKBENCH_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "workbench"


def _slug(text: str, limit: int = 40) -> str:
    """A short, filesystem-safe rendering of ``text`` (readable, not unique on its own)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "x"


def check_run_name(run: str) -> str:
    """Return ``run`` if it can name a fine-tuning run folder.

    Raises:
        ArtifactError: Empty, a path, hidden, or the reserved name ``pretrained``.
    """
    if not run or Path(run).name != run or run.startswith(".") or run != run.strip() or run == PRETRAINED:
        raise ArtifactError(f"{run!r}: a run name must be a plain folder name other than {PRETRAINED!r}")
    return run


@dataclass(frozen=True)
class WorkDir:
    """The artifact folders of one dataset and condition under a base workdir.

    Attributes:
        base: The user's ``--workdir`` (default ``artifacts``).
        data_root: The dataset folder (one sub-folder per label).
        condition: Attribute that defines similarity; empty = the label folders.
        cache: Machine-wide cache for what depends only on weights (default: :func:`default_cache_dir`).
    """

    base: Path
    data_root: Path
    condition: str = ""
    cache: Path = field(default_factory=default_cache_dir)

    @property
    def dataset_dir(self) -> Path:
        """Everything about this dataset folder, whatever the condition."""
        resolved = str(Path(self.data_root).expanduser().resolve())
        key = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return Path(self.base) / f"{_slug(Path(resolved).name)}-{key}"

    @property
    def root(self) -> Path:
        """The folder of this dataset under this condition."""
        if not self.condition:
            return self.dataset_dir / "labels"
        key = hashlib.sha256(self.condition.encode()).hexdigest()[:6]
        return self.dataset_dir / f"by-{_slug(self.condition)}-{key}"

    @property
    def prepared(self) -> Path:
        """The prepared dataset: records, split and comparative sets."""
        return self.root / "prepared.json"

    @property
    def catalogue(self) -> Path:
        """The catalogue of the dataset folder (shared by the conditions): see :mod:`core.catalogue`."""
        return self.dataset_dir / "catalogue.npz"

    @property
    def features(self) -> Path:
        """The feature cache folder (shared by the conditions of a dataset)."""
        return self.dataset_dir / "features"

    @property
    def onnx_cache(self) -> Path:
        """Exported featurizers, one file per fingerprint (shared by every workdir of the machine)."""
        return Path(self.cache) / "onnx"

    @property
    def runs(self) -> Path:
        """Fine-tuning runs of this dataset and condition."""
        return self.root / "runs"

    def run(self, name: str) -> Path:
        """Folder of the fine-tuning run ``name`` (validated)."""
        return self.runs / check_run_name(name)

    def ranker(self, name: str, fingerprint: str) -> Path:
        """Where the learned ranker ``name`` for a featurizer's embeddings is saved."""
        return self.root / "rankers" / fingerprint / f"{name}.npz"

    def report(self, fingerprint: str) -> Path:
        """The evaluation report of a featurizer."""
        return self.root / "reports" / f"{fingerprint}.json"

    def experiment_report(self, run: str) -> Path:
        """The report of ``experiment`` for a run."""
        return self.root / "reports" / f"experiment-{check_run_name(run)}.json"

    @property
    def tune_report(self) -> Path:
        """The report of ``tune``: every candidate recipe and ranker with its validation scores."""
        return self.root / "reports" / "tune.json"

    @property
    def default_choice(self) -> Path:
        """The featurizer and ranker the app opens with (written by ``tune``)."""
        return self.root / "default.json"

    @property
    def dedup_report(self) -> Path:
        """The near-duplicate report of the dataset folder."""
        return self.dataset_dir / "reports" / "dedup.json"

    @property
    def index(self) -> Path:
        """The default saved vector index."""
        return self.root / "index"
