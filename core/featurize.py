"""Featurizers (image -> L2-normalised embedding) and an on-disk feature cache keyed by content hash.

One contract for every back end: ``embed(images) -> float32[N, D]`` with unit-length rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from core.artifacts import atomic_save_npz
from core.backbones import Backbone, Preprocessing
from core.data import ImageRecord
from core.errors import ArtifactError
from core.images import load_image

log = logging.getLogger(__name__)

#: Called as ``progress(done, total)`` after each batch.
ProgressFn = Callable[[int, int], None]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class Featurizer(Protocol):
    """Anything that turns images into L2-normalised embeddings."""

    @property
    def fingerprint(self) -> str:
        """Identifies the model, weights and preprocessing; features are cached under it."""
        ...

    @property
    def preprocessing(self) -> Preprocessing: ...

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed ``float32[N, 3, S, S]`` batch into ``float32[N, D]`` unit rows."""
        ...

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images into ``float32[N, D]`` unit rows."""
        ...


def preprocess(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize the shorter side, centre-crop and normalise an RGB image into ``float32[3, S, S]``."""
    size, short = preprocessing.input_size, preprocessing.resize_size
    width, height = image.size
    scale = short / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, resample=_RESAMPLE[preprocessing.interpolation])
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(preprocessing.mean, np.float32)) / np.asarray(preprocessing.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale each row to unit Euclidean length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, eps)).astype(np.float32)


class TorchFeaturizer:
    """Pooled penultimate-layer features of a PyTorch backbone, L2-normalised.

    Args:
        backbone: The network and its preprocessing, built with ``num_classes=0``.
        device: ``"cuda"``, ``"cpu"`` or ``None`` for CUDA when available.
    """

    def __init__(self, backbone: Backbone, device: str | None = None) -> None:
        import torch

        self.backbone = backbone
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels-last runs convolutions ~1.7x faster on CPU here (see benchmarks/featurize.py)
        self.model = backbone.model.to(self.device, memory_format=torch.channels_last).eval()

    @property
    def preprocessing(self) -> Preprocessing:
        return self.backbone.preprocessing

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.backbone.name, self.backbone.weights_id, self.preprocessing)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            features = self.model(inputs)
        return l2_normalize(features.float().cpu().numpy())

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images into ``float32[N, D]`` unit rows."""
        return self.embed_arrays(np.stack([preprocess(image, self.preprocessing) for image in images]))


def fingerprint_of(name: str, weights_id: str, preprocessing: Preprocessing) -> str:
    """Short stable id of a featurizer: architecture, weights and preprocessing."""
    text = f"{name}|{weights_id}|{preprocessing}"
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_files(
    featurizer: Featurizer,
    paths: Sequence[Path],
    batch_size: int = 8,
    workers: int = 2,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Embed image files in batches; decoding and resizing run in threads while the model runs.

    Raises:
        ImageLoadError: A file cannot be decoded; the message names it.
    """
    preprocessing = featurizer.preprocessing
    draft = preprocessing.resize_size

    def prepare(path: Path) -> np.ndarray:
        return preprocess(load_image(path, draft_size=draft), preprocessing)

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    outputs: list[np.ndarray] = []
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = None
        for chunk in _batches(list(paths), batch_size):
            arrays = pool.map(prepare, chunk)  # starts decoding this batch while the last one embeds
            if pending is not None:
                outputs.append(featurizer.embed_arrays(np.stack(list(pending))))
                done += len(outputs[-1])
                if progress:
                    progress(done, len(paths))
            pending = arrays
        if pending is not None:
            outputs.append(featurizer.embed_arrays(np.stack(list(pending))))
            done += len(outputs[-1])
            if progress:
                progress(done, len(paths))
    if not outputs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outputs)


class FeatureCache:
    """Embeddings on disk, one ``.npz`` per featurizer fingerprint, keyed by image content hash.

    Re-running on the same images is a lookup; renamed or moved files are still hits.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path_for(self, fingerprint: str) -> Path:
        return self.directory / f"{fingerprint}.npz"

    def load(self, fingerprint: str) -> dict[str, np.ndarray]:
        """All cached embeddings for a featurizer, by sha256 (empty when none)."""
        path = self.path_for(fingerprint)
        if not path.exists():
            return {}
        try:
            with np.load(path, allow_pickle=False) as archive:
                return dict(zip(archive["sha256"].tolist(), archive["embeddings"]))
        except (OSError, KeyError, ValueError) as err:
            raise ArtifactError(f"{path}: unreadable feature cache ({err}); delete it to rebuild") from err

    def embed(
        self,
        featurizer: Featurizer,
        records: Sequence[ImageRecord],
        batch_size: int = 8,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Embeddings of ``records`` in order, computing and saving only the missing ones."""
        cached = self.load(featurizer.fingerprint)
        missing = {record.sha256: record.path for record in records if record.sha256 not in cached}
        if missing:
            log.info("featurizing %d of %d images (%d cached)", len(missing), len(records), len(records) - len(missing))
            embeddings = embed_files(featurizer, list(missing.values()), batch_size=batch_size, progress=progress)
            cached.update(zip(missing, embeddings))
            atomic_save_npz(
                self.path_for(featurizer.fingerprint),
                sha256=np.array(list(cached), dtype=str),
                embeddings=np.stack(list(cached.values())).astype(np.float32),
            )
        elif progress:
            progress(len(records), len(records))
        if not records:
            return np.zeros((0, 0), np.float32)
        return np.stack([cached[record.sha256] for record in records]).astype(np.float32)
