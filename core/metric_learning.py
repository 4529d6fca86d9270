"""A learned linear projection metric on cached embeddings: ``score = cos(x M, y M)``.

``M`` (``D x d``) is the mix ``(1 - a) W + a B`` of a learned projection ``W`` and a base projection ``B`` that
keeps the input metric (the identity when ``d = D``, else the top-``d`` principal directions of the training
embeddings). ``W`` starts from shrinkage LDA (scikit-learn ``LinearDiscriminantAnalysis(solver="eigen",
shrinkage=ProjectionConfig.shrinkage)``: its leading eigenvectors of the between- vs within-class scatter) and is
trained for a few epochs with pytorch-metric-learning's ``MultiSimilarityLoss`` on the L2-normalised projections; it takes seconds
on a CPU. ``W`` is rescaled so that projections through ``W`` and ``B`` have the same mean norm, so ``a`` weighs
the two on one scale.

The mix weight ``a`` guards against collapse on photos unlike the training ones: a projection tuned to the
training labels alone can map an unfamiliar photo next to the wrong gallery items. ``a`` is chosen from
:attr:`ProjectionConfig.identity_weights` by full-gallery recall@1 on a validation split carved from the training
embeddings only (ties go to the larger ``a``: the closer to the input metric), then ``W`` is refitted on all of
them.

The LDA shrinkage is fixed high (0.9) rather than estimated (Ledoit-Wolf, ``"auto"``), because validation photos
come from the training distribution and cannot show the failure it causes: whitening against a less shrunk
within-label scatter amplifies directions in which the gallery hardly varies, and a photo in another style varies
most in exactly those, so it lands next to arbitrary items. Measured on pretrained Lite0 embeddings: top-5 label
agreement of out-of-style photos (13 full-frame photos against the demo gallery) 28/65 with "auto", 45/65 with
0.9, cosine 41/65; full-gallery MAP@R 0.875 -> 0.880 on the demo, 0.485 -> 0.914 on the scene set. It has a
price on in-distribution queries of some data: on the 1,000 Fashion-MNIST photos (``scripts/heldout_data.py``)
MAP@R falls from 0.711 to 0.567 (cosine 0.397).

Ranking is cosine on :meth:`ProjectionRanker.transform`, so every index back end serves it, and the ONNX
export can bake ``M`` in (``export/onnx_projection.py``). Deterministic given ``ProjectionConfig.seed``.

Saved as ``.npz`` (the matrix + a JSON header), no pickle.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import numpy as np

from core.artifacts import load_npz_with_header, save_npz_with_header
from core.data import ComparativeSets, stratified_split
from core.errors import ArtifactError
from core.rankers import Ranker, check_embeddings

log = logging.getLogger(__name__)

PROJECTION_SCHEMA_VERSION = 2  # 2: fixed LDA shrinkage (0.9); version-1 files are refitted


@dataclass(frozen=True)
class ProjectionConfig:
    """How the projection is trained.

    Attributes:
        dims: Output dimension ``d`` (None: the input dimension, so ``a = 1`` is exactly cosine).
        epochs: Passes over the training embeddings.
        learning_rate: Adam learning rate.
        batch_size: Embeddings per step.
        shrinkage: LDA shrinkage of the within-label scatter towards a multiple of the identity, in (0, 1]
            (see the module docstring for why it is fixed and high).
        identity_weights: Candidate mix weights ``a`` of the base projection, chosen on validation.
        validation_fraction: Share of each label's training images held out to choose ``a``.
        seed: Seeds the validation split, initialisation order and batches.
    """

    dims: int | None = None
    epochs: int = 40
    learning_rate: float = 1e-3
    batch_size: int = 256
    shrinkage: float = 0.9
    identity_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    validation_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dims is not None and self.dims < 1:
            raise ValueError(f"ProjectionConfig.dims must be >= 1, got {self.dims}")
        if not 0.0 < self.shrinkage <= 1.0:
            raise ValueError(f"ProjectionConfig.shrinkage must be in (0, 1], got {self.shrinkage}")
        if not self.identity_weights or any(not 0.0 <= a <= 1.0 for a in self.identity_weights):
            raise ValueError(f"ProjectionConfig.identity_weights must lie in [0, 1], got {self.identity_weights}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"ProjectionConfig.validation_fraction must be in (0, 1), got {self.validation_fraction}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _base_projection(embeddings: np.ndarray, dims: int) -> np.ndarray:
    """Identity for ``dims == D``, else the top-``dims`` principal directions (orthonormal columns)."""
    dim = embeddings.shape[1]
    if dims >= dim:
        return np.eye(dim, dtype=np.float32)
    _, _, vt = np.linalg.svd(embeddings - embeddings.mean(0), full_matrices=False)
    basis = np.zeros((dim, dims), np.float32)
    basis[:, : min(dims, len(vt))] = vt[:dims].T
    return basis


def _lda_init(embeddings: np.ndarray, labels: np.ndarray, dims: int, shrinkage: float) -> np.ndarray:
    """Shrinkage-LDA directions weighted by how well each separates the labels; zero columns past ``C - 1``.

    The directions are whitened against the within-label scatter; each is scaled by the square root of its
    share of the between-label variance, so the projection starts as LDA's own discriminant space.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    with warnings.catch_warnings():  # a label with one image has no scatter of its own: nothing to warn about
        warnings.filterwarnings("ignore", "Only one sample available", UserWarning)
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(embeddings, labels)
    n_directions = min(dims, len(np.unique(labels)) - 1, embeddings.shape[1])
    ratios = np.asarray(lda.explained_variance_ratio_, np.float64)[:n_directions]
    init = np.zeros((embeddings.shape[1], dims), np.float64)
    init[:, :n_directions] = np.asarray(lda.scalings_, np.float64)[:, :n_directions] * np.sqrt(ratios)
    return init.astype(np.float32)


def _recall_at_1(projected: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> float:
    """Share of ``queries`` whose nearest other row (cosine) carries their label."""
    unit = _unit(projected)
    scores = unit[queries] @ unit.T
    scores[np.arange(len(queries)), queries] = -np.inf
    return float(np.mean(labels[scores.argmax(axis=1)] == labels[queries]))


class ProjectionRanker(Ranker):
    """Cosine similarity after a learned linear projection; higher = more similar.

    Args:
        config: Training settings.
        matrix: ``float32[D, d]`` projection ``M`` (set by :meth:`fit` or :meth:`load`).
        identity_weight: The chosen mix weight ``a`` (kept for reports).
    """

    name = "projection"

    def __init__(
        self, config: ProjectionConfig | None = None, matrix: np.ndarray | None = None, identity_weight: float = 1.0
    ) -> None:
        self.config = config or ProjectionConfig()
        self.matrix = None if matrix is None else np.asarray(matrix, np.float32)
        self.identity_weight = float(identity_weight)

    def _matrix(self) -> np.ndarray:
        if self.matrix is None:
            raise ArtifactError("projection ranker is not fitted: fit it on the training embeddings first")
        return self.matrix

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Project and L2-normalise: ``float32[N, d]``; the score is the dot product of these rows."""
        embeddings = np.asarray(embeddings, np.float32)
        matrix = self._matrix()
        if embeddings.ndim != 2 or embeddings.shape[1] != matrix.shape[0]:
            raise ValueError(f"expected (N, {matrix.shape[0]}) embeddings, got {embeddings.shape}")
        return _unit(embeddings @ matrix).astype(np.float32)

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        return (self.transform(query) @ self.transform(gallery).T).astype(np.float32)

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (self.transform(a) * self.transform(b)).sum(1).astype(np.float32)

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, sets: ComparativeSets | None = None) -> Self:
        """Choose the mix weight on a validation split of these embeddings, then fit on all of them.

        Args:
            embeddings: Training embeddings, one row per image.
            labels: Label of each row.
            sets: Ignored (the loss uses every pair in a batch); accepted for the ranker contract.

        Raises:
            ValueError: Fewer than two labels, or misaligned inputs.
        """
        embeddings = np.asarray(embeddings, np.float32)
        labels = np.asarray(labels).astype(str)
        if embeddings.ndim != 2 or len(embeddings) != len(labels):
            raise ValueError(f"expected (N, D) embeddings and N labels, got {embeddings.shape} and {len(labels)}")
        if len(np.unique(labels)) < 2:
            raise ValueError("the projection ranker needs at least two labels")
        dims = min(self.config.dims or embeddings.shape[1], embeddings.shape[1])
        candidates = sorted(set(self.config.identity_weights))
        split = stratified_split(labels, 1.0 - self.config.validation_fraction, np.random.default_rng(self.config.seed))
        if len(candidates) > 1 and len(split.test) and len(np.unique(labels[split.train])) >= 2:
            learned, base = self._train(embeddings[split.train], labels[split.train], dims)
            recalls = [
                _recall_at_1(embeddings @ ((1 - a) * learned + a * base), labels, split.test) for a in candidates
            ]
            best = max(recalls)
            self.identity_weight = max(a for a, r in zip(candidates, recalls, strict=True) if r >= best - 1e-9)
            log.info("projection: validation recall@1 %s -> identity weight %.2f", recalls, self.identity_weight)
        else:
            self.identity_weight = candidates[-1]
        learned, base = self._train(embeddings, labels, dims)
        self.matrix = ((1 - self.identity_weight) * learned + self.identity_weight * base).astype(np.float32)
        return self

    def _train(self, embeddings: np.ndarray, labels: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
        """The learned ``W`` (scaled to the base's mean projected norm) and the base ``B``."""
        import torch
        from pytorch_metric_learning.losses import MultiSimilarityLoss

        base = _base_projection(embeddings, dims)
        init = _lda_init(embeddings, labels, dims, self.config.shrinkage)
        torch.manual_seed(self.config.seed)
        generator = torch.Generator().manual_seed(self.config.seed)
        weight = torch.nn.Parameter(torch.from_numpy(init.copy()))
        inputs = torch.from_numpy(embeddings)
        targets = torch.from_numpy(np.unique(labels, return_inverse=True)[1].astype(np.int64))
        optimizer = torch.optim.Adam([weight], lr=self.config.learning_rate)
        loss_fn = MultiSimilarityLoss()
        for _ in range(self.config.epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(order), self.config.batch_size):
                batch = order[start : start + self.config.batch_size]
                projected = torch.nn.functional.normalize(inputs[batch] @ weight, dim=1)
                loss = loss_fn(projected, targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        learned = weight.detach().numpy().astype(np.float64)
        scale = np.linalg.norm(embeddings @ base, axis=1).mean() / max(
            np.linalg.norm(embeddings @ learned, axis=1).mean(), 1e-12
        )
        return (learned * scale).astype(np.float32), base

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write the matrix, mix weight and config to ``.npz`` atomically (no pickle)."""
        header = {
            "schema_version": PROJECTION_SCHEMA_VERSION,
            "identity_weight": self.identity_weight,
            "config": asdict(self.config),
            "metadata": metadata or {},
        }
        save_npz_with_header(path, header, matrix=self._matrix())

    @classmethod
    def load(cls, path: str | Path) -> ProjectionRanker:
        """Read a ranker written by :meth:`save`.

        Raises:
            ArtifactError: Missing, unreadable, or another schema version.
        """
        arrays, header = load_npz_with_header(
            path, "projection ranker", PROJECTION_SCHEMA_VERSION, "run `python -m workbench fit --ranker projection`"
        )
        try:
            matrix = arrays["matrix"]
            if matrix.ndim != 2 or not np.isfinite(matrix).all():
                raise ArtifactError(f"{path}: projection matrix must be a finite 2-D array, got shape {matrix.shape}")
            config = header["config"]
            config["identity_weights"] = tuple(config["identity_weights"])
            return cls(ProjectionConfig(**config), matrix, header["identity_weight"])
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: unreadable projection ranker ({err})") from err
