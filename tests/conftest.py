"""Shared fixtures: tiny real photos committed under tests/fixtures, and the real pretrained featurizer."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_DATASET = FIXTURES / "tiny"


@pytest.fixture(scope="session", autouse=True)
def machine_cache(tmp_path_factory) -> Path:
    """One machine-wide cache (exported ONNX featurizers) for the whole run, never the user's ~/.cache."""
    import os

    cache = tmp_path_factory.mktemp("workbench-cache")
    previous = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(cache)  # subprocesses inherit it
    yield cache
    if previous is None:
        os.environ.pop("WORKBENCH_CACHE", None)
    else:
        os.environ["WORKBENCH_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_dataset() -> Path:
    """A folder-per-label set of real photos, a few per label, small enough for every CI run."""
    return TINY_DATASET


@pytest.fixture(scope="session")
def tiny_images(tiny_dataset):
    """Decoded RGB images of the tiny set, with their paths."""
    from core.images import load_image

    paths = sorted(tiny_dataset.glob("*/*.jpg"))
    return paths, [load_image(path) for path in paths]


@pytest.fixture(scope="session")
def lite0_featurizer():
    """The default offline featurizer: EfficientNet-Lite0 with its packaged ImageNet weights, on CPU."""
    from core.backbones import build_backbone
    from core.featurize import TorchFeaturizer

    return TorchFeaturizer(build_backbone("efficientnet_lite0"), device="cpu")
