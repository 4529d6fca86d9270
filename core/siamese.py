"""A Siamese pair model as a ranker: a shared (frozen) body embeds both images, a small head scores the pair.

The head sees only symmetric combinations of the two embeddings, ``|u - v|`` and ``u * v``, so
``P(same | a, b) = P(same | b, a)`` holds exactly. It is trained with binary cross-entropy on the
same/different pairs of the training comparative sets (positives up-weighted to balance them), on cached
embeddings, so training takes seconds on a CPU. Saved as ``.npz`` (tensors + JSON header), no pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.artifacts import load_npz_with_header, save_npz_with_header
from core.data import ComparativeSets
from core.errors import ArtifactError
from core.rankers import Ranker, check_embeddings

SIAMESE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SiameseConfig:
    """Pair-head training settings.

    Attributes:
        hidden: Width of the hidden layer.
        epochs: Passes over the training pairs.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Pairs per step.
        seed: Seeds initialisation and batch order.
    """

    hidden: int = 256
    epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    seed: int = 0


def _pair_input(a, b):
    """Symmetric pair features of aligned torch rows: ``[|a - b|, a * b]``."""
    import torch

    return torch.cat([(a - b).abs(), a * b], dim=-1)


def _head(dim: int, hidden: int):
    from torch import nn

    return nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class SiameseRanker(Ranker):
    """Scores a pair by the logit of "same label" from a small head over symmetric pair features."""

    name = "siamese"

    def __init__(self, config: SiameseConfig = SiameseConfig(), head=None) -> None:
        self.config = config
        self.head = head

    def _model(self):
        if self.head is None:
            raise ArtifactError("Siamese ranker is not trained: run `python -m workbench fit --ranker siamese` first")
        return self.head

    def _logits(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._model()(_pair_input(torch.from_numpy(a), torch.from_numpy(b)))[..., 0].numpy()

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        out = np.empty((len(query), len(gallery)), np.float32)
        step = max(1, 4_000_000 // max(1, len(gallery) * query.shape[1]))
        for start in range(0, len(query), step):
            block = query[start : start + step]
            out[start : start + step] = self._logits(
                np.repeat(block[:, None, :], len(gallery), axis=1),
                np.broadcast_to(gallery, (len(block), *gallery.shape)).copy(),
            )
        return out

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._logits(a, b).astype(np.float32)

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """Probability that a pair shares a label, from its score (the logit)."""
        return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(scores, np.float64), -500, 500)))

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, sets: ComparativeSets | None = None) -> SiameseRanker:
        """Train the head on the pairs of ``sets`` (each query with its positive and its negatives).

        Raises:
            ValueError: No comparative sets given.
        """
        import torch

        if sets is None:
            raise ValueError("the Siamese ranker trains on comparative sets; pass the training sets")
        embeddings = np.asarray(embeddings, np.float32)
        n_refs = sets.references.shape[1]
        left = torch.from_numpy(embeddings[np.repeat(sets.queries, n_refs)])
        right = torch.from_numpy(embeddings[sets.references.reshape(-1)])
        same = torch.from_numpy(np.tile(np.r_[1.0, np.zeros(n_refs - 1)], len(sets)).astype(np.float32))
        generator = torch.Generator().manual_seed(self.config.seed)
        torch.manual_seed(self.config.seed)
        head = _head(embeddings.shape[1], self.config.hidden)
        optimizer = torch.optim.AdamW(
            head.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(max(1, n_refs - 1))))
        for _ in range(self.config.epochs):
            order = torch.randperm(len(same), generator=generator)
            for start in range(0, len(order), self.config.batch_size):
                batch = order[start : start + self.config.batch_size]
                # both orders of each pair, so the head never learns an orientation
                inputs = torch.cat([_pair_input(left[batch], right[batch]), _pair_input(right[batch], left[batch])])
                loss = loss_fn(head(inputs)[:, 0], torch.cat([same[batch], same[batch]]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.head = head.eval()
        return self

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write the head's tensors and config to ``.npz`` atomically (no pickle)."""
        state = {f"param:{key}": value.detach().numpy() for key, value in self._model().state_dict().items()}
        header = {"schema_version": SIAMESE_SCHEMA_VERSION, "config": asdict(self.config), "metadata": metadata or {}}
        save_npz_with_header(path, header, **state)

    @classmethod
    def load(cls, path: str | Path) -> SiameseRanker:
        """Read a ranker written by :meth:`save`.

        Raises:
            ArtifactError: Missing, unreadable, or another schema version.
        """
        import torch

        arrays, header = load_npz_with_header(
            path, "Siamese ranker", SIAMESE_SCHEMA_VERSION, "run `python -m workbench fit --ranker siamese` first"
        )
        try:
            state = {
                key.removeprefix("param:"): torch.from_numpy(value)
                for key, value in arrays.items()
                if key.startswith("param:")
            }
            config = SiameseConfig(**header["config"])
            head = _head(state["0.weight"].shape[1] // 2, config.hidden)
            head.load_state_dict(state)
            return cls(config, head.eval())
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ArtifactError(f"{path}: unreadable Siamese ranker ({err})") from err


class PrefilteredRanker(Ranker):
    """A two-stage ranker: a classifier predicts each image's class, the base ranker scores only the gallery
    images of the query's predicted class (the reference design's classifier -> Siamese pipeline).

    Gallery images of other predicted classes are not scored at all (that is the speed-up); they get the
    lowest possible score, so a misclassified query loses its true matches.
    """

    def __init__(self, base: Ranker, classifier) -> None:
        self.base = base
        self.classifier = classifier
        self.name = f"{base.name}+prefilter"

    def fit(self, embeddings: np.ndarray, labels: np.ndarray) -> PrefilteredRanker:
        """Fit the class predictor (a logistic regression on the embeddings) on labelled training images."""
        from sklearn.linear_model import LogisticRegression

        self.classifier = LogisticRegression(max_iter=2000).fit(embeddings, np.asarray(labels, dtype=str))
        return self

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        query_class, gallery_class = self.classifier.predict(query), self.classifier.predict(gallery)
        out = np.full((len(query), len(gallery)), np.finfo(np.float32).min, np.float32)
        for label in np.unique(query_class):
            rows, columns = np.flatnonzero(query_class == label), np.flatnonzero(gallery_class == label)
            if len(columns):
                out[np.ix_(rows, columns)] = self.base.score(query[rows], gallery[columns])
        return out

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        same_class = self.classifier.predict(a) == self.classifier.predict(b)
        scores = np.full(len(a), np.finfo(np.float32).min, np.float32)
        if same_class.any():
            scores[same_class] = self.base.score_pairs(a[same_class], b[same_class])
        return scores
