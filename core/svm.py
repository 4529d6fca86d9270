"""A learned metric: SVM-weighted squared L2 with hard-negative mining and Platt calibration.

For unit embeddings u, v the pair feature is ``(u - v) ** 2`` per dimension. A linear max-margin model separates
same-label pairs from different-label pairs with score ``w . (u - v) ** 2 + b``, higher = more similar. The
weights are constrained to ``w <= 0``, so the score is ``b - sum_d |w_d| (u_d - v_d) ** 2``: minus a diagonal
Mahalanobis distance. More distance along any dimension never makes two images more similar, so an unfamiliar
query cannot pull in the gallery images that are extreme in some dimension (an unconstrained LinearSVC puts
positive weights on a few dimensions, and then a query far from everything ranks the far side of the gallery
first). The same constraint makes the score an L2 search after scaling by ``sqrt(-w)``, so every approximate index
serves it (:func:`core.index.space_for`).

The fit minimises a squared-hinge objective like LinearSVC's, ``0.5 ||w - w0||^2 + C sum_i c_i max(0, 1 - y_i s_i)^2``
with balanced class weights ``c_i``, by L-BFGS-B with the bound ``w <= 0`` (scipy). The regulariser's centre ``w0`` is
the best plain-L2 model rather than zero: with little evidence the ranker is plain L2, and photos unlike the training
set are ranked as L2 ranks them (with a zero centre, a few dimensions took all the weight and out-of-style queries
found 12 same-label images in their top 5 where L2 found 41, of 65; with this centre 39). Platt scaling, fitted on out-of-fold scores (the
folds of scikit-learn's ``CalibratedClassifierCV``), maps the score to the probability that the two images share
a label, which makes scores of different attributes comparable.

Saved as ``.npz`` (arrays + a JSON header), never pickle.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from core.artifacts import check_finite, load_npz_with_header, save_npz_with_header
from core.config import SVMConfig
from core.data import ComparativeSets
from core.errors import ArtifactError
from core.evaluate import Estimate, mean_proportion_interval, proportion_interval
from core.rankers import Ranker, check_embeddings

log = logging.getLogger(__name__)

#: 2: weights constrained to ``<= 0`` (version-1 files may hold positive weights; refit them).
SVM_SCHEMA_VERSION = 2
#: Comparative sets (one query with its references each) the fit uses at most: above, a stratified sample. The
#: pairs, their features and the hard-negative search grow with the sets, not with the images (100 per label by
#: default), so this only binds with many labels: 1,000 sets of 100 references at 1280-d are 1 GB of float64
#: features.
MAX_TRAIN_SETS = 1_000


@dataclass(frozen=True)
class PairAccuracy:
    """How well the SVM classifies same / different pairs (threshold at score 0), with 95 % intervals.

    The pairs of a comparative set share its query, so the different-label pairs are not independent trials and
    their part of each interval is narrower than it should be; the same-label pairs (one per set) are fewer and
    set most of the width of ``balanced_accuracy``'s.

    Attributes:
        accuracy: Share of pairs decided right, with its Wilson score interval
            (:func:`core.evaluate.proportion_interval`).
        balanced_accuracy: Mean of the share of same-label pairs and the share of different-label pairs decided
            right, with their Wilson intervals combined (:func:`core.evaluate.mean_proportion_interval`).
        n_pairs: Pairs decided.
        n_same: Same-label pairs among them.
    """

    accuracy: Estimate
    balanced_accuracy: Estimate
    n_pairs: int
    n_same: int


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
    """SVM-weighted squared L2 over pair features: ``score = w . (u - v) ** 2 + b``; higher = more similar.

    Args:
        config: Training settings.
        weights: Per-dimension weights ``w``, ``<= 0`` when fitted (set by :meth:`fit` or :meth:`load`).
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
            raise ArtifactError("SVM ranker is not fitted: run `python -m workbench fit --ranker svm` first")
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
        from core.data import make_comparative_sets
        from core.evaluate import sample_queries

        embeddings = np.asarray(embeddings, np.float32)
        labels = np.asarray(labels, dtype=object)
        rng = rng if rng is not None else np.random.default_rng(0)
        if sets is None:
            sets = make_comparative_sets(labels, 100, 99, rng)
        if len(sets) > MAX_TRAIN_SETS:
            keep = sample_queries(np.arange(len(sets)), labels[sets.queries].astype(str), MAX_TRAIN_SETS, rng)
            log.info("SVM: fitting on a stratified sample of %d of %d comparative sets", len(keep), len(sets))
            sets = ComparativeSets(sets.queries[keep], sets.references[keep])
        left, right, same = _pairs_from_sets(sets)
        universe = np.unique(np.concatenate([sets.queries, sets.references.reshape(-1)]))
        for round_ in range(self.config.hard_negative_rounds):
            self.weights, self.bias = self._solve(pair_features(embeddings[left], embeddings[right]), same)
            hard = self._hard_negatives(embeddings, labels, sets.queries, universe)
            left, right = np.r_[left, hard[0]], np.r_[right, hard[1]]
            same = np.r_[same, np.zeros(len(hard[0]), int)]
            log.info("hard-negative round %d: added %d pairs", round_ + 1, len(hard[0]))
        features = pair_features(embeddings[left], embeddings[right])
        self.platt = self._platt(features, same)
        self.weights, self.bias = self._solve(features, same)
        return self

    def _solve(self, features: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, float]:
        """Weights ``<= 0`` and bias minimising the balanced squared-hinge loss plus ``0.5 ||w - w0||^2``.

        ``w0 = -s 1`` is the best plain squared-L2 model (one scale ``s`` and a bias, fitted first), so the
        regulariser pulls towards the Euclidean metric rather than towards zero: with little evidence (small
        ``C``, few pairs, or a dimension the training pairs never exercise) the ranker stays plain L2, and it
        only moves as far from it as the training pairs demand. Shrinking towards zero instead leaves a few
        dimensions carrying all the weight, which ranks photos unlike the training set badly.
        """
        from scipy.optimize import minimize

        features = np.asarray(features, np.float64)
        target = np.where(np.asarray(same) > 0, 1.0, -1.0)
        n_positive = max(1, int((target > 0).sum()))
        n_negative = max(1, len(target) - n_positive)
        cost = self.config.C * np.where(target > 0, len(target) / (2 * n_positive), len(target) / (2 * n_negative))
        balance = cost / self.config.C
        dim = features.shape[1]

        def hinge(scores: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
            active = np.maximum(1.0 - target * scores, 0.0)
            return float(weight @ active**2), -2.0 * weight * active * target

        distances = features.sum(1)

        def isotropic(params: np.ndarray) -> tuple[float, np.ndarray]:
            loss, slope = hinge(-params[0] * distances + params[1], balance)
            return loss, np.array([-(slope @ distances), slope.sum()])

        plain = minimize(
            isotropic, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)]
        )
        prior = np.full(dim, -float(plain.x[0]))

        def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
            weights, bias = params[:dim], params[dim]
            loss, slope = hinge(features @ weights + bias, cost)
            offset = weights - prior
            return 0.5 * offset @ offset + loss, np.r_[offset + features.T @ slope, slope.sum()]

        result = minimize(
            objective,
            np.r_[prior, float(plain.x[1])],
            jac=True,
            method="L-BFGS-B",
            bounds=[(None, 0.0)] * dim + [(None, None)],
            options={"maxiter": self.config.max_iter},
        )
        if not result.success:
            log.warning("SVM solver stopped early: %s", result.message)
        return np.minimum(result.x[:dim], 0.0).astype(np.float32), float(result.x[dim])

    def _platt(self, features: np.ndarray, same: np.ndarray) -> tuple[float, float]:
        """Sigmoid ``(a, b)`` fitted on out-of-fold scores (stratified folds, no shuffling)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        scores = np.empty(len(same))
        for fit_rows, held_rows in StratifiedKFold(self.config.calibration_folds).split(features, same):
            weights, bias = self._solve(features[fit_rows], same[fit_rows])
            scores[held_rows] = features[held_rows] @ weights + bias
        sigmoid = LogisticRegression(C=1e6).fit(scores[:, None], same)
        return -float(sigmoid.coef_[0, 0]), -float(sigmoid.intercept_[0])

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
        """Accuracy of same / different decisions (score > 0) on the pairs of ``sets``, with 95 % intervals."""
        left, right, same = _pairs_from_sets(sets)
        predicted = self._pairs(embeddings[left], embeddings[right]) > 0
        truth = same.astype(bool)
        right_calls = predicted == truth
        per_class = [int(right_calls[truth].sum()), int(right_calls[~truth].sum())]
        class_sizes = [int(truth.sum()), int((~truth).sum())]
        return PairAccuracy(
            proportion_interval(int(right_calls.sum()), len(truth)),
            mean_proportion_interval(per_class, class_sizes),
            len(truth),
            class_sizes[0],
        )

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write weights, bias, calibration and config to ``.npz`` atomically (no pickle)."""
        header = {
            "schema_version": SVM_SCHEMA_VERSION,
            "bias": self.bias,
            "platt": list(self.platt),
            "config": dataclasses.asdict(self.config),
            "metadata": metadata or {},
        }
        save_npz_with_header(path, header, weights=self._weights())

    @classmethod
    def load(cls, path: str | Path) -> SVMRanker:
        """Read a ranker written by :meth:`save`.

        Raises:
            ArtifactError: Missing, unreadable, or another schema version.
        """
        hint = "run `python -m workbench fit --ranker svm`"
        arrays, header = load_npz_with_header(path, "SVM ranker", SVM_SCHEMA_VERSION, hint)
        try:
            weights = arrays["weights"]
            if weights.ndim != 1 or not weights.size or not np.issubdtype(weights.dtype, np.floating):
                raise ArtifactError(
                    f"{path}: SVM weights must be a non-empty 1-D float array, got shape {weights.shape} "
                    f"dtype {weights.dtype}; {hint}"
                )
            platt = tuple(header["platt"])
            check_finite(path, "SVM ranker", hint, weights=weights, bias=header["bias"], platt=platt)
            if (weights > 0).any():
                raise ArtifactError(f"{path}: SVM weights must be <= 0 (more distance never more similar); {hint}")
            return cls(SVMConfig(**header["config"]), weights, header["bias"], platt)
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: unreadable SVM ranker ({err}); {hint}") from err

    @property
    def input_dim(self) -> int:
        """Length of the embeddings this ranker scores (the number of weights)."""
        return int(self._weights().shape[0])
