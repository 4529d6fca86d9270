"""A learned metric: linear-SVM-weighted L2 with hard-negative mining and Platt calibration.

For unit embeddings u, v the pair feature is ``(u - v) ** 2`` per dimension. A linear SVM (scikit-learn
``LinearSVC``) separates same-label pairs from different-label pairs; its score
``w . (u - v) ** 2 + b`` is a weighted squared L2 distance (negated where ``w < 0``), higher = more similar.
Platt scaling (scikit-learn's sigmoid calibration, fitted on out-of-fold scores) maps the score to the
probability that the two images share a label, which makes scores of different attributes comparable.

Saved as ``.npz`` (arrays + a JSON header), never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from core.artifacts import atomic_save_npz
from core.config import SVMConfig
from core.data import ComparativeSets
from core.errors import ArtifactError
from core.rankers import Ranker, check_embeddings

log = logging.getLogger(__name__)

SVM_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PairAccuracy:
    """How well the SVM classifies same / different pairs (threshold at score 0)."""

    accuracy: float
    balanced_accuracy: float
    n_pairs: int


def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-dimension squared differences of aligned rows."""
    return (np.asarray(a, np.float32) - np.asarray(b, np.float32)) ** 2


def _pairs_from_sets(sets: ComparativeSets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_refs = sets.references.shape[1]
    left = np.repeat(sets.queries, n_refs)
    right = sets.references.reshape(-1)
    same = np.tile(np.r_[1, np.zeros(n_refs - 1, int)], len(sets))
    return left, right, same


class SVMRanker(Ranker):
    """Linear-SVM-weighted squared L2 over pair features; higher = more similar.

    Args:
        config: Training settings.
        weights: Per-dimension weights ``w`` (set by :meth:`fit` or :meth:`load`).
        bias: Intercept ``b``.
        platt: ``(a, b)`` of the sigmoid ``p = 1 / (1 + exp(a * score + b))``.
    """

    name = "svm"

    def __init__(
        self,
        config: SVMConfig | None = None,
        weights: np.ndarray | None = None,
        bias: float = 0.0,
        platt: tuple[float, float] = (-1.0, 0.0),
    ) -> None:
        self.config = config or SVMConfig()
        self.weights = None if weights is None else np.asarray(weights, np.float32)
        self.bias = float(bias)
        self.platt = (float(platt[0]), float(platt[1]))

    def _weights(self) -> np.ndarray:
        if self.weights is None:
            raise ArtifactError("SVM ranker is not fitted: run `train-svm` first")
        return self.weights

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        w = self._weights()
        # sum_i w_i (q_i - g_i)^2 = (q^2 . w) + (g^2 . w) - 2 (q * w) . g
        squared = (query**2 @ w)[:, None] + (gallery**2 @ w)[None, :] - 2.0 * (query * w) @ gallery.T
        return (squared + self.bias).astype(np.float32)

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (pair_features(a, b) @ self._weights() + self.bias).astype(np.float32)

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probability that a pair shares a label, from its score."""
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(np.clip(a * np.asarray(scores, np.float64) + b, -500, 500)))

    def fit(
        self,
        embeddings: np.ndarray,
        labels: np.ndarray,
        sets: ComparativeSets | None = None,
        rng: np.random.Generator | None = None,
    ) -> Self:
        """Learn weights from the pairs of comparative sets (drawn from ``labels`` if not given).

        Args:
            embeddings: One unit row per record.
            labels: Label of each record.
            sets: Training comparative sets (indices into ``embeddings``).
            rng: Draws comparative sets when ``sets`` is None.
        """
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import LinearSVC

        from core.data import make_comparative_sets

        labels = np.asarray(labels, dtype=object)
        if sets is None:
            sets = make_comparative_sets(labels, 100, 99, rng if rng is not None else np.random.default_rng(0))
        left, right, same = _pairs_from_sets(sets)
        universe = np.unique(np.concatenate([sets.queries, sets.references.reshape(-1)]))

        def svc() -> LinearSVC:
            return LinearSVC(C=self.config.C, class_weight="balanced", max_iter=self.config.max_iter, dual="auto")

        for round_ in range(self.config.hard_negative_rounds):
            model = svc().fit(pair_features(embeddings[left], embeddings[right]), same)
            self.weights, self.bias = model.coef_[0].astype(np.float32), float(model.intercept_[0])
            hard = self._hard_negatives(embeddings, labels, sets.queries, universe)
            left, right = np.r_[left, hard[0]], np.r_[right, hard[1]]
            same = np.r_[same, np.zeros(len(hard[0]), int)]
            log.info("hard-negative round %d: added %d pairs", round_ + 1, len(hard[0]))
        calibrated = CalibratedClassifierCV(svc(), method="sigmoid", cv=self.config.calibration_folds, ensemble=False)
        calibrated.fit(pair_features(embeddings[left], embeddings[right]), same)
        fitted = calibrated.calibrated_classifiers_[0]
        self.weights = fitted.estimator.coef_[0].astype(np.float32)
        self.bias = float(fitted.estimator.intercept_[0])
        self.platt = (float(fitted.calibrators[0].a_), float(fitted.calibrators[0].b_))
        return self

    def _hard_negatives(
        self, embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray, universe: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each query, the other-label images the current model scores highest."""
        per_query = min(self.config.hard_negatives_per_query, len(universe))
        scores = self.score(embeddings[queries], embeddings[universe])
        scores[labels[queries][:, None] == labels[universe][None, :]] = -np.inf
        top = np.argpartition(-scores, per_query - 1, axis=1)[:, :per_query]
        valid = np.isfinite(np.take_along_axis(scores, top, axis=1))
        return np.repeat(queries, per_query)[valid.reshape(-1)], universe[top][valid]

    def pair_accuracy(self, embeddings: np.ndarray, sets: ComparativeSets) -> PairAccuracy:
        """Accuracy of same / different decisions (score > 0) on the pairs of ``sets``."""
        left, right, same = _pairs_from_sets(sets)
        predicted = self._pairs(embeddings[left], embeddings[right]) > 0
        truth = same.astype(bool)
        recalls = [float(np.mean(predicted[truth == value] == value)) for value in (True, False)]
        return PairAccuracy(float(np.mean(predicted == truth)), float(np.mean(recalls)), len(truth))

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write weights, bias, calibration and config to ``.npz`` atomically (no pickle)."""
        header = {
            "schema_version": SVM_SCHEMA_VERSION,
            "bias": self.bias,
            "platt": list(self.platt),
            "config": dataclasses.asdict(self.config),
            "metadata": metadata or {},
        }
        atomic_save_npz(path, weights=self._weights(), header=np.array(json.dumps(header)))

    @classmethod
    def load(cls, path: str | Path) -> SVMRanker:
        """Read a ranker written by :meth:`save`.

        Raises:
            ArtifactError: Missing, unreadable, or another schema version.
        """
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: no SVM ranker saved here; run `train-svm` first")
        try:
            with np.load(path, allow_pickle=False) as archive:
                weights, header = archive["weights"], json.loads(str(archive["header"]))
            if header.get("schema_version") != SVM_SCHEMA_VERSION:
                raise ArtifactError(
                    f"{path}: schema version {header.get('schema_version')!r}, expected {SVM_SCHEMA_VERSION}"
                )
            return cls(SVMConfig(**header["config"]), weights, header["bias"], tuple(header["platt"]))
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: unreadable SVM ranker ({err})") from err
