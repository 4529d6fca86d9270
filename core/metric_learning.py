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

**Neighbour labels.** A linear map gives each label one region, but many labels are several looks (a "renewable
energy" label of dams, wind turbines, solar panels and geothermal plants): a dam photo's positive may be a
geothermal plant that no linear map puts near it. So the transform also carries each photo's *soft label*: the
labels of the training images nearest to it, weighted ``softmax(similarity / temperature)`` (a kernel
nearest-neighbour vote; :class:`NeighbourLabels`). The score is ``(1 - b) cos(x M, y M) + b cos(p(x), p(y))`` with
``b = ProjectionConfig.label_weight``: photos of the same soft label come first, in the projection's order (which
separates labels; it does not keep a label's looks apart, cosine does).
Which space the vote is taken in is chosen on the same validation split by MAP@R: the input embedding (keeps the
looks of a label apart, so a photo's nearest labelled neighbours are its own look), the projected one (better where
the input metric is weak), or none. Measured on pretrained Lite0 embeddings (``benchmarks/quality.py``), MAP@R
without -> with the vote: demo 0.880 -> 0.945, scenes 0.914 -> 0.919, Fashion-MNIST 0.567 -> 0.773, handwritten
digits 0.761 -> 0.906, and on a set built after these defaults were fixed (170 clip-art stamps) 0.623 -> 0.718; top-5
agreement of out-of-style photos 45/65 -> 39/65 (cosine 41/65).

**Looks.** Label agreement alone buries the photo the user asked about: within a label the agreement scores sit
within a few thousandths of each other, so an edited copy's original need not come first. The score is therefore
``(1 - w) agreement(x, y) + w cos(x, y)``, the look weight ``w = ProjectionConfig.look_weight``: label agreement
orders the labels and the input cosine (the look) orders the photos within one. It is a dot product of
``[sqrt(1 - w) A(x), sqrt(w) unit(x)]``, so it stays a cosine of one transform. Measured with the look metric
(``core/looks.py``: an edited copy searches for its original) on pretrained Lite0 embeddings, copy recall@1 /
MAP@R at ``w`` 0 -> 0.6 (cosine's copy recall@1 beside): demo 0.976 / 0.963 -> 0.988 / 0.950 (1.000), scenes
0.692 / 0.714 -> 1.000 / 0.654 (1.000), stamps 0.795 / 0.705 -> 0.949 / 0.683 (0.949). 0.6 is the smallest weight
of 0.1-0.8 that kept copy recall@1 at least 0.95x cosine's on all three; it keeps 96 %, 84 % and 94 % of the
MAP@R gain over cosine. Users move ``w`` per search (:meth:`ProjectionRanker.with_look_weight`).

Ranking is cosine on :meth:`ProjectionRanker.transform`, so every index back end serves it, and the ONNX
export can bake it in (``export/onnx_projection.py``). Deterministic given ``ProjectionConfig.seed``.

Saved as ``.npz`` (the matrix, the voters and their label ids, a JSON header), no pickle.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from core.artifacts import load_npz_with_header, save_npz_with_header
from core.config import ProjectionConfig
from core.data import ComparativeSets, Split, stratified_split
from core.errors import ArtifactError
from core.rankers import Ranker, check_embeddings

log = logging.getLogger(__name__)

PROJECTION_SCHEMA_VERSION = 4  # 2: fixed LDA shrinkage (0.9); 3: neighbour labels; 4: look weight. Older: refitted
#: Where the neighbour-label vote is taken; ``"none"`` turns it off.
LabelSpace = Literal["none", "input", "projected"]
LABEL_SPACES: tuple[LabelSpace, ...] = ("none", "input", "projected")


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


@dataclass(frozen=True, eq=False)
class NeighbourLabels:
    """A soft label per photo from a kernel vote of labelled training images.

    Attributes:
        space: ``"input"`` (votes by cosine of the embeddings) or ``"projected"`` (of ``x M``).
        references: ``float32[N, k]`` unit rows of the voters in that space.
        labels: ``int64[N]`` each voter's label, in ``[0, n_labels)``.
        n_labels: Number of labels (the soft label's length).
        temperature: Softmax temperature over the cosine similarities.
        weight: ``b``, the soft label's share of the score.
    """

    space: LabelSpace
    references: np.ndarray
    labels: np.ndarray
    n_labels: int
    temperature: float
    weight: float

    def soft_labels(self, unit_rows: np.ndarray) -> np.ndarray:
        """``float32[N, n_labels]`` unit-length soft labels of unit rows in :attr:`space`.

        Each is ``sum_i softmax_i(cos(x, r_i) / T) onehot(label_i)``, rescaled to unit length.
        """
        logits = (unit_rows @ self.references.T) / self.temperature
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        votes = weights @ np.eye(self.n_labels, dtype=np.float32)[self.labels]
        return _unit(votes).astype(np.float32)


def _recall_at_1(projected: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> float:
    """Share of ``queries`` whose nearest other row (cosine; ties to the lower index) carries their label."""
    from core.rankers import CosineRanker, top_k

    found, _ = top_k(CosineRanker(), projected[queries], projected, 2)  # blockwise: never a queries x rows matrix
    nearest = np.where(found[:, 0] == queries, found[:, -1], found[:, 0])
    return float(np.mean(labels[nearest] == labels[queries]))


class ProjectionRanker(Ranker):
    """Label agreement (cosine after a learned projection, with neighbour labels) blended with the input cosine
    by the look weight; higher = more similar.

    Args:
        config: Training settings.
        matrix: ``float32[D, d]`` projection ``M`` (set by :meth:`fit` or :meth:`load`).
        identity_weight: The chosen mix weight ``a`` (kept for reports).
        neighbours: The neighbour-label vote, or None for the projection alone.
    """

    name = "projection"

    def __init__(
        self,
        config: ProjectionConfig | None = None,
        matrix: np.ndarray | None = None,
        identity_weight: float = 1.0,
        neighbours: NeighbourLabels | None = None,
        platt: tuple[float, float] | None = None,
    ) -> None:
        self.config = config or ProjectionConfig()
        self.matrix = None if matrix is None else np.asarray(matrix, np.float32)
        self.identity_weight = float(identity_weight)
        self.neighbours = neighbours
        self.platt = None if platt is None else (float(platt[0]), float(platt[1]))

    @property
    def label_space(self) -> LabelSpace:
        """Where the neighbour-label vote is taken, ``"none"`` without one."""
        return "none" if self.neighbours is None else self.neighbours.space

    @property
    def look_weight(self) -> float:
        """``w``: the input cosine's share of the score."""
        return self.config.look_weight

    def with_look_weight(self, look_weight: float) -> ProjectionRanker:
        """This fitted ranker with another look weight (nothing is refitted).

        Raises:
            ConfigValueError: A weight outside [0, 1].
        """
        config = replace(self.config, look_weight=float(look_weight))
        return ProjectionRanker(config, self.matrix, self.identity_weight, self.neighbours, self.platt)

    def agreement_probability(self, agreement: np.ndarray) -> np.ndarray | None:
        """Calibrated probability that two photos share a label, from their label agreement (:meth:`parts`): a
        Platt sigmoid fitted on validation pairs the fit did not train on; None when the fit had no validation."""
        if self.platt is None:
            return None
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(np.clip(a * np.asarray(agreement, np.float64) + b, -500, 500)))

    @property
    def output_dim(self) -> int:
        """Length of :meth:`transform`'s rows: ``d``, plus the number of labels with a neighbour vote, plus the input
        dimension with a look weight."""
        extra = 0 if self.neighbours is None else self.neighbours.n_labels
        look = self.input_dim if self.look_weight > 0 else 0
        return int(self._matrix().shape[1]) + extra + look

    def _matrix(self) -> np.ndarray:
        if self.matrix is None:
            raise ArtifactError("projection ranker is not fitted: fit it on the training embeddings first")
        return self.matrix

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Unit rows ``float32[N, output_dim]`` whose dot product is the score.

        ``[sqrt(1 - w) A(x), sqrt(w) unit(x)]`` with ``A`` :meth:`agreement_transform` and ``w`` the look weight
        (``A(x)`` alone when ``w`` is 0).
        """
        agreement = self.agreement_transform(embeddings)
        weight = self.look_weight
        if weight == 0:
            return agreement
        look = _unit(np.asarray(embeddings, np.float32))
        return np.hstack([np.sqrt(1.0 - weight) * agreement, np.sqrt(weight) * look]).astype(np.float32)

    def parts(self, query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The two parts of the score, ``(agreement, look)``, each ``float32[Nq, Ng]`` in [-1, 1]; the score is
        ``(1 - w) agreement + w look``."""
        query, gallery = check_embeddings(query, gallery)
        agreement = self.agreement_transform(query) @ self.agreement_transform(gallery).T
        look = _unit(query) @ _unit(gallery).T
        return agreement.astype(np.float32), look.astype(np.float32)

    def agreement_transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Unit rows whose dot product is label agreement: ``unit(x M)``; with a neighbour vote,
        ``[sqrt(1 - b) unit(x M), sqrt(b) p(x)]``."""
        embeddings = np.asarray(embeddings, np.float32)
        matrix = self._matrix()
        if embeddings.ndim != 2 or embeddings.shape[1] != matrix.shape[0]:
            raise ValueError(f"expected (N, {matrix.shape[0]}) embeddings, got {embeddings.shape}")
        projected = _unit(embeddings @ matrix).astype(np.float32)
        votes = self.neighbours
        if votes is None:
            return projected
        soft = votes.soft_labels(projected if votes.space == "projected" else _unit(embeddings).astype(np.float32))
        return np.hstack([np.sqrt(1.0 - votes.weight) * projected, np.sqrt(votes.weight) * soft]).astype(np.float32)

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        return (self.transform(query) @ self.transform(gallery).T).astype(np.float32)

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (self.transform(a) * self.transform(b)).sum(1).astype(np.float32)

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, sets: ComparativeSets | None = None) -> Self:
        """Choose the mix weight and the label space on a validation split of these embeddings, then fit on all.

        Above :attr:`ProjectionConfig.max_train_rows` rows, a stratified sample of that many (seeded) is used.

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
        cap = self.config.max_train_rows
        if cap is not None and len(embeddings) > cap:
            from core.evaluate import sample_queries

            rows = sample_queries(np.arange(len(embeddings)), labels, cap, np.random.default_rng(self.config.seed))
            log.info("projection: fitting on a stratified sample of %d of %d training images", cap, len(embeddings))
            embeddings, labels = embeddings[rows], labels[rows]
        dims = min(self.config.dims or embeddings.shape[1], embeddings.shape[1])
        candidates = sorted(set(self.config.identity_weights))
        split = stratified_split(labels, 1.0 - self.config.validation_fraction, np.random.default_rng(self.config.seed))
        names = np.unique(labels)
        label_ids = np.searchsorted(names, labels)
        space: LabelSpace = "none"
        validating = len(split.test) and len(np.unique(labels[split.train])) >= 2
        if validating and (len(candidates) > 1 or self.config.label_weight > 0):
            learned, base = self._train(embeddings[split.train], labels[split.train], dims)
            recalls = [
                _recall_at_1(embeddings @ ((1 - a) * learned + a * base), labels, split.test) for a in candidates
            ]
            best = max(recalls)
            self.identity_weight = max(a for a, r in zip(candidates, recalls, strict=True) if r >= best - 1e-9)
            log.info(
                "projection: validation recall@1 %s at identity weights %s -> %.2f",
                ", ".join(f"{r:.3f}" for r in recalls),
                ", ".join(f"{a:.2f}" for a in candidates),
                self.identity_weight,
            )
            matrix = ((1 - self.identity_weight) * learned + self.identity_weight * base).astype(np.float32)
            if self.config.label_weight > 0:
                space = self._choose_label_space(embeddings, labels, label_ids, len(names), split, matrix)
            self.platt = self._calibrate(embeddings, label_ids, split, matrix, space)
        else:
            self.identity_weight = candidates[-1]
            self.platt = None
        learned, base = self._train(embeddings, labels, dims)
        self.matrix = ((1 - self.identity_weight) * learned + self.identity_weight * base).astype(np.float32)
        self.neighbours = self._neighbours(space, embeddings, label_ids, len(names), self.matrix)
        return self

    def _neighbours(
        self, space: LabelSpace, embeddings: np.ndarray, label_ids: np.ndarray, n_labels: int, matrix: np.ndarray
    ) -> NeighbourLabels | None:
        """The vote of (a stratified sample of at most ``max_references`` of) these images in ``space``."""
        if space == "none":
            return None
        keep = np.arange(len(embeddings))
        if len(keep) > self.config.max_references:
            rng = np.random.default_rng(self.config.seed)
            keep = np.sort(stratified_split(label_ids, self.config.max_references / len(keep), rng).train)
        rows = embeddings[keep] @ matrix if space == "projected" else embeddings[keep]
        return NeighbourLabels(
            space,
            _unit(rows).astype(np.float32),
            label_ids[keep].astype(np.int64),
            n_labels,
            self.config.temperature,
            self.config.label_weight,
        )

    def _calibrate(
        self, embeddings: np.ndarray, label_ids: np.ndarray, split: Split, matrix: np.ndarray, space: LabelSpace
    ) -> tuple[float, float] | None:
        """Platt ``(a, b)`` of ``P(same label) = 1 / (1 + exp(a x agreement + b))`` on pairs of a validation image
        (at most 500) and every training image of the validation fit, which never saw the validation images."""
        from sklearn.linear_model import LogisticRegression

        queries = split.test[: min(len(split.test), 500)]
        neighbours = self._neighbours(
            space, embeddings[split.train], label_ids[split.train], len(np.unique(label_ids)), matrix
        )
        held_out = ProjectionRanker(self.config, matrix, self.identity_weight, neighbours)
        agreement = (
            held_out.agreement_transform(embeddings[queries]) @ held_out.agreement_transform(embeddings[split.train]).T
        )
        same = label_ids[queries][:, None] == label_ids[split.train][None, :]
        if same.all() or not same.any():
            return None
        sigmoid = LogisticRegression(C=1e6).fit(agreement.reshape(-1, 1), same.reshape(-1))
        return -float(sigmoid.coef_[0, 0]), -float(sigmoid.intercept_[0])

    def _choose_label_space(
        self,
        embeddings: np.ndarray,
        labels: np.ndarray,
        label_ids: np.ndarray,
        n_labels: int,
        split: Split,
        matrix: np.ndarray,
    ) -> LabelSpace:
        """The label space of highest validation MAP@R: validation images query all training images, and only
        the others vote (ties go to the earlier of ``LABEL_SPACES``, the simpler)."""
        from core.evaluate import evaluate_retrieval

        scores = {}
        for space in LABEL_SPACES:
            neighbours = self._neighbours(space, embeddings[split.train], label_ids[split.train], n_labels, matrix)
            candidate = ProjectionRanker(self.config, matrix, self.identity_weight, neighbours)
            scores[space] = evaluate_retrieval(candidate, embeddings, labels, split.test, ks=(1,)).metrics["map@r"]
        best = max(scores.values())
        chosen = next(space for space in LABEL_SPACES if scores[space] >= best - 1e-9)
        shown = ", ".join(f"{space} {value:.3f}" for space, value in scores.items())
        log.info("projection: validation MAP@R by label space: %s -> %s", shown, chosen)
        return chosen

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
        steps = self.config.epochs * -(-len(inputs) // self.config.batch_size)
        if self.config.max_steps is not None:
            steps = min(steps, self.config.max_steps)
        done = 0
        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            while done < steps:  # whole epochs, the last one cut short at ``steps``
                order = torch.randperm(len(inputs), generator=generator)
                for start in range(0, len(order), self.config.batch_size):
                    batch = order[start : start + self.config.batch_size]
                    projected = torch.nn.functional.normalize(inputs[batch] @ weight, dim=1)
                    loss = loss_fn(projected, targets[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    done += 1
                    if done == steps:
                        break
        finally:
            torch.set_num_threads(threads)
        learned = weight.detach().numpy().astype(np.float64)
        scale = np.linalg.norm(embeddings @ base, axis=1).mean() / max(
            np.linalg.norm(embeddings @ learned, axis=1).mean(), 1e-12
        )
        return (learned * scale).astype(np.float32), base

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The JSON header and the arrays that describe this ranker (what :meth:`from_state` reads back)."""
        votes = self.neighbours
        header = {
            "identity_weight": self.identity_weight,
            "label_space": self.label_space,
            "n_labels": 0 if votes is None else votes.n_labels,
            "config": asdict(self.config),
            "platt": None if self.platt is None else list(self.platt),
        }
        arrays = {"matrix": self._matrix()}
        if votes is not None:
            arrays |= {"references": votes.references, "reference_labels": votes.labels}
        return header, arrays

    @classmethod
    def from_state(cls, header: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> ProjectionRanker:
        """The ranker :meth:`state` describes.

        Raises:
            KeyError, TypeError, ValueError: A missing or malformed part.
        """
        matrix = np.asarray(arrays["matrix"])
        if matrix.ndim != 2 or not np.isfinite(matrix).all():
            raise ValueError(f"projection matrix must be a finite 2-D array, got shape {matrix.shape}")
        fields = dict(header["config"])
        fields["identity_weights"] = tuple(fields["identity_weights"])
        config = ProjectionConfig(**fields)
        neighbours = None
        if header["label_space"] != "none":
            neighbours = NeighbourLabels(
                header["label_space"],
                np.asarray(arrays["references"], np.float32),
                _integer_labels(np.asarray(arrays["reference_labels"])),
                int(header["n_labels"]),
                config.temperature,
                config.label_weight,
            )
            _check_neighbours(neighbours, matrix)
        identity_weight = float(header["identity_weight"])
        if not np.isfinite(identity_weight) or not 0.0 <= identity_weight <= 1.0:
            raise ValueError(f"identity weight must be in [0, 1], got {identity_weight}")
        platt = header.get("platt")
        if platt is not None and (len(platt) != 2 or not np.isfinite(np.asarray(platt, np.float64)).all()):
            raise ValueError(f"platt must be two finite numbers, got {platt}")
        return cls(config, matrix, identity_weight, neighbours, None if platt is None else (platt[0], platt[1]))

    def same_scores_as(self, other: ProjectionRanker) -> bool:
        """Whether ``other`` scores every pair as this ranker does (same arrays and settings)."""
        (mine, my_arrays), (theirs, their_arrays) = self.state(), other.state()
        settings = ("label_space", "n_labels")
        scoring = ("temperature", "label_weight", "look_weight")
        return (
            all(mine[key] == theirs[key] for key in settings)
            and all(mine["config"][key] == theirs["config"][key] for key in scoring)
            and my_arrays.keys() == their_arrays.keys()
            and all(
                my_arrays[name].shape == their_arrays[name].shape
                and np.array_equal(my_arrays[name], their_arrays[name])
                for name in my_arrays
            )
        )

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write the matrix, the voters, the mix weight and config to ``.npz`` atomically (no pickle)."""
        header, arrays = self.state()
        header = {"schema_version": PROJECTION_SCHEMA_VERSION, **header, "metadata": metadata or {}}
        save_npz_with_header(path, header, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ProjectionRanker:
        """Read a ranker written by :meth:`save`.

        Raises:
            ArtifactError: Missing, unreadable, or another schema version.
        """
        hint = "run `python -m workbench fit --ranker projection`"
        arrays, header = load_npz_with_header(path, "projection ranker", PROJECTION_SCHEMA_VERSION, hint)
        try:
            return cls.from_state(header, arrays)
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: unreadable projection ranker ({err}); {hint}") from err

    @property
    def input_dim(self) -> int:
        """Length of the embeddings this ranker scores (the matrix's rows)."""
        return int(self._matrix().shape[0])


def _integer_labels(values: np.ndarray) -> np.ndarray:
    """Voter label ids as int64; refuses a float or other non-integer array rather than truncating it."""
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"voter labels must be integer ids, got dtype {values.dtype}")
    return values.astype(np.int64)


def _check_neighbours(votes: NeighbourLabels, matrix: np.ndarray) -> None:
    """Raise ValueError unless the vote's arrays fit each other and the matrix."""
    width = matrix.shape[1] if votes.space == "projected" else matrix.shape[0]
    if votes.space not in LABEL_SPACES[1:]:
        raise ValueError(f"label space {votes.space!r} is not one of {LABEL_SPACES[1:]}")
    if (
        votes.references.ndim != 2
        or votes.references.shape[1] != width
        or not len(votes.references)
        or not np.isfinite(votes.references).all()
    ):
        raise ValueError(f"voters must be a finite (N >= 1, {width}) array, got shape {votes.references.shape}")
    if votes.labels.shape != (len(votes.references),) or votes.labels.min() < 0 or votes.labels.max() >= votes.n_labels:
        raise ValueError(f"voter labels must be {len(votes.references)} ids in [0, {votes.n_labels})")
