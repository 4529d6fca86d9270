"""Fusion of several rankers in probability space.

Raw scores of different rankers live on different scales (an SVM for texture may spread over [-5, 5],
one for sleeve length over [-0.5, 0.5]), so averaging them lets the widest scale dominate. Calibrated
probabilities of "same" share one scale, so their weighted mean weighs each attribute as intended.

Two calibrated rankers fuse: the SVM (:class:`core.svm.SVMRanker`, Platt-scaled distance: its probability falls
with the distance between two photos, so it also orders the photos of one label), and
:class:`ValueAgreementRanker`, the probability that two photos share an attribute's value according to a classifier
of that value. The second exists because a distance learns little of an attribute the embedding does not arrange
photos by: on the demo, the SVM fitted under ``--condition colour`` ranks exactly as cosine does (full-gallery
recall@1 0.341 both, MAP@R 0.129 vs 0.126), so fusing it moves nothing, while a classifier of the colour tells
which photos share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np

from core.artifacts import check_finite, load_npz_with_header, save_npz_with_header
from core.errors import ArtifactError
from core.rankers import Ranker, check_embeddings


@runtime_checkable
class CalibratedRanker(Protocol):
    """A ranker whose scores map to the probability that two photos are "the same" (share the label or value)."""

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray: ...

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """The probability of "same" for each score."""
        ...


def fuse_probabilities(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of same-shaped probability arrays.

    Raises:
        ValueError: No inputs, mismatched shapes, or weights that are negative, all zero or of another count.
    """
    if not probabilities:
        raise ValueError("nothing to fuse")
    stacked = np.stack([np.asarray(p, np.float64) for p in probabilities])
    weight_array = np.ones(len(stacked)) if weights is None else np.asarray(weights, np.float64)
    if weight_array.shape != (len(stacked),) or (weight_array < 0).any() or weight_array.sum() == 0:
        raise ValueError(f"need {len(stacked)} non-negative weights with a positive sum, got {weight_array.tolist()}")
    return np.tensordot(weight_array / weight_array.sum(), stacked, axes=1)


class FusionRanker(Ranker):
    """Weighted mean of calibrated rankers' probabilities over the same embeddings."""

    name = "fusion"

    def __init__(self, rankers: Sequence[CalibratedRanker], weights: Sequence[float] | None = None) -> None:
        self.rankers = list(rankers)
        self.weights = weights

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        return fuse_probabilities([r.probability(r.score(query, gallery)) for r in self.rankers], self.weights).astype(
            np.float32
        )

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return fuse_probabilities([r.probability(r.score_pairs(a, b)) for r in self.rankers], self.weights).astype(
            np.float32
        )


#: 1: classes, coefficients and intercepts of a softmax classifier.
AGREEMENT_SCHEMA_VERSION = 1


class ValueAgreementRanker(Ranker):
    """The probability that two photos share an attribute's value: ``sum_v P(v | a) P(v | b)``, with ``P(v | x)`` a
    multinomial logistic regression on the embeddings (the two photos' values drawn independently from the
    classifier's beliefs). Scores are probabilities already, in [0, 1].

    Args:
        regularisation: Inverse regularisation strength ``C`` of the logistic regression.
        values: The attribute's values (set by :meth:`fit` or :meth:`load`).
        coefficients: ``(V, D)`` softmax weights, one row per value.
        intercepts: ``(V,)`` softmax biases.
    """

    name = "agreement"

    def __init__(
        self,
        regularisation: float = 1.0,
        values: Sequence[str] = (),
        coefficients: np.ndarray | None = None,
        intercepts: np.ndarray | None = None,
    ) -> None:
        self.regularisation = regularisation
        self.values = tuple(values)
        self.coefficients = coefficients
        self.intercepts = intercepts

    def fit(self, embeddings: np.ndarray, labels: np.ndarray) -> Self:
        """Learn ``P(value | embedding)`` from labelled embeddings (the training split).

        Raises:
            ValueError: Fewer than two distinct values.
        """
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels, dtype=object).astype(str)
        values = np.unique(labels)
        if len(values) < 2:
            raise ValueError(f"needs at least 2 values to tell apart, found {len(values)}")
        model = LogisticRegression(C=self.regularisation, max_iter=5_000).fit(
            np.asarray(embeddings, np.float32), labels
        )
        coefficients, intercepts = np.asarray(model.coef_, np.float64), np.asarray(model.intercept_, np.float64)
        if len(values) == 2:  # a binary model gives one logit: P(second) = sigmoid(w.x + b), softmax of (0, w.x + b)
            coefficients = np.vstack([np.zeros_like(coefficients), coefficients])
            intercepts = np.concatenate([[0.0], intercepts])
        self.values = tuple(str(value) for value in model.classes_)
        self.coefficients, self.intercepts = coefficients.astype(np.float32), intercepts.astype(np.float32)
        return self

    def value_probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """``P(value | embedding)`` per row, ``float32[N, V]`` (columns in :attr:`values` order)."""
        if self.coefficients is None or self.intercepts is None:
            raise ValueError("ValueAgreementRanker is not fitted")
        logits = np.asarray(embeddings, np.float32) @ self.coefficients.T + self.intercepts
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        return self.value_probabilities(query) @ self.value_probabilities(gallery).T

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (self.value_probabilities(a) * self.value_probabilities(b)).sum(axis=1).astype(np.float32)

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """The scores themselves: they are probabilities of a shared value."""
        return np.asarray(scores)

    @property
    def input_dim(self) -> int:
        """Length of the embeddings this ranker scores."""
        return 0 if self.coefficients is None else int(self.coefficients.shape[1])

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write values, coefficients and intercepts to ``.npz`` atomically (no pickle)."""
        if self.coefficients is None or self.intercepts is None:
            raise ValueError("ValueAgreementRanker is not fitted")
        header = {
            "schema_version": AGREEMENT_SCHEMA_VERSION,
            "values": list(self.values),
            "regularisation": self.regularisation,
            "metadata": metadata or {},
        }
        save_npz_with_header(path, header, coefficients=self.coefficients, intercepts=self.intercepts)

    @classmethod
    def load(cls, path: str | Path) -> ValueAgreementRanker:
        """Read a ranker written by :meth:`save`.

        Raises:
            ArtifactError: Missing, unreadable, another schema version, or arrays that do not fit together.
        """
        hint = "it is fitted again on the next use of the fusion"
        arrays, header = load_npz_with_header(path, "value-agreement ranker", AGREEMENT_SCHEMA_VERSION, hint)
        try:
            coefficients, intercepts, values = arrays["coefficients"], arrays["intercepts"], header["values"]
            if coefficients.ndim != 2 or intercepts.shape != (len(values),) or len(coefficients) != len(values):
                raise ArtifactError(
                    f"{Path(path)}: {len(values)} values, coefficients {coefficients.shape} and intercepts "
                    f"{intercepts.shape} do not fit together; {hint}"
                )
            check_finite(path, "value-agreement ranker", hint, coefficients=coefficients, intercepts=intercepts)
            return cls(float(header["regularisation"]), [str(v) for v in values], coefficients, intercepts)
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{Path(path)}: unreadable value-agreement ranker ({err}); {hint}") from err
