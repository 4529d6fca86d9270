"""Fine-tuning on tiny real photos: weights change, a seed reproduces, resume and Ctrl-C keep checkpoints."""

import json

import numpy as np
import pytest
import torch

from core.backbones import build_backbone
from core.config import OBJECTIVES, TrainConfig
from core.data import scan_folder, stratified_split
from core.errors import ArtifactError
from core.train import fine_tune, finetuned_backbone

FAST = TrainConfig(epochs=1, batch_size=6, input_size=128, learning_rate=1e-2)


@pytest.fixture(scope="module")
def tiny(tiny_dataset):
    dataset = scan_folder(tiny_dataset).dataset
    return dataset, stratified_split(dataset.label_array, 0.75, np.random.default_rng(0))


def body_state(backbone):
    return {k: v.clone() for k, v in backbone.model.state_dict().items() if "classifier" not in k}


def test_one_epoch_changes_weights_and_is_reproducible(tiny, tmp_path, caplog):
    dataset, split = tiny
    first = fine_tune(dataset.records, split, FAST, tmp_path / "a")
    again = fine_tune(dataset.records, split, FAST, tmp_path / "b")
    assert first.labels == ("fish", "landmarks", "tools") and len(first.history) == 1
    assert first.history[0].train_loss == pytest.approx(again.history[0].train_loss, rel=1e-5)
    assert first.history[0].test_accuracy == again.history[0].test_accuracy
    tuned_a, tuned_b = body_state(finetuned_backbone(tmp_path / "a")), body_state(finetuned_backbone(tmp_path / "b"))
    pretrained = body_state(build_backbone("efficientnet_lite0"))
    assert any(not torch.equal(tuned_a[k], pretrained[k]) for k in tuned_a if tuned_a[k].is_floating_point())
    for key in tuned_a:
        torch.testing.assert_close(tuned_a[key], tuned_b[key], rtol=1e-5, atol=1e-6)

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["preprocessing"]["input_size"] == 128
    assert manifest["history"][0]["test_accuracy"] == first.history[0].test_accuracy
    with caplog.at_level("INFO", logger="core"):
        tuned = finetuned_backbone(tmp_path / "a")
    assert tuned.preprocessing.input_size == 128 and tuned.weights_id.startswith("run:a:1:")
    logged = [record.getMessage() for record in caplog.records]  # says what was loaded, not "random-init"
    assert "loaded the fine-tuned efficientnet_lite0 of run a (1 epoch(s) trained), 1280-d features" in logged
    assert not any("random" in line for line in logged), logged
    with torch.no_grad():
        assert tuned.model(torch.zeros(2, 3, 128, 128)).shape == (2, 1280)


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_interrupt_keeps_last_epoch_and_resume_finishes_the_same_run(tiny, tmp_path):
    dataset, split = tiny
    config = TrainConfig(epochs=2, batch_size=6, input_size=128, learning_rate=1e-2, augment=False)

    def stop_in_second_epoch(event):
        if event.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fine_tune(dataset.records, split, config, tmp_path / "run", progress=stop_in_second_epoch)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and len(manifest["history"]) == 1
    finetuned_backbone(tmp_path / "run")  # the checkpoint of epoch 1 is intact and loadable
    assert not list((tmp_path / "run").glob(".*tmp*"))

    resumed = fine_tune(dataset.records, split, config, tmp_path / "run")
    uninterrupted = fine_tune(dataset.records, split, config, tmp_path / "straight")
    assert [m.epoch for m in resumed.history] == [1, 2]
    assert resumed.history[1].train_loss == pytest.approx(uninterrupted.history[1].train_loss, rel=1e-4)
    assert resumed.history[1].test_accuracy == uninterrupted.history[1].test_accuracy


def test_resume_refuses_another_config(tiny, tmp_path):
    dataset, split = tiny
    fine_tune(dataset.records, split, FAST, tmp_path / "run")
    with pytest.raises(ArtifactError, match="another config or dataset"):
        fine_tune(
            dataset.records,
            split,
            TrainConfig(epochs=1, batch_size=6, input_size=128, learning_rate=1e-3),
            tmp_path / "run",
        )


def test_frozen_body_trains_only_the_last_stage_and_still_changes_the_embedding(tiny, tmp_path):
    dataset, split = tiny
    fine_tune(
        dataset.records,
        split,
        TrainConfig(epochs=1, batch_size=6, input_size=128, freeze_body=True),
        tmp_path / "frozen",
    )
    tuned_backbone = finetuned_backbone(tmp_path / "frozen")
    tuned, pretrained = body_state(tuned_backbone), body_state(build_backbone("efficientnet_lite0"))
    last_stage = ("blocks.6.", "conv_head.", "bn2.")
    changed = {
        key for key, value in tuned.items() if value.is_floating_point() and not torch.equal(value, pretrained[key])
    }
    assert changed and all(key.startswith(last_stage) for key in changed)  # nothing before the last stage moved
    assert any(key.startswith("conv_head.") for key in changed)
    with torch.no_grad():  # so the embedding differs from the pretrained one (a head-only run would be identical)
        image = torch.rand(2, 3, 128, 128)
        moved = tuned_backbone.model(image) - build_backbone("efficientnet_lite0").model(image)
    assert moved.abs().max() > 1e-3


def test_missing_or_corrupt_runs_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="nothing/manifest.json: not found"):
        finetuned_backbone(tmp_path / "nothing")


def test_triplet_miner_picks_hard_and_semihard_negatives_on_a_hand_built_batch():
    from core.train import _Embedding

    # anchor a0 and positive a1 are 0.2 apart; negatives at distance 0.1 (hard: closer than the positive),
    # 0.3 (semi-hard: farther than the positive but within the 0.2 margin) and 1.5 (easy)
    embeddings = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.1], [0.0, 0.3], [0.0, 1.5]])
    labels = torch.tensor([0, 0, 1, 2, 3])

    def mined_negatives(mining: str) -> set[int]:
        objective = _Embedding(TrainConfig(objective="triplet", margin=0.2, mining=mining))
        objective.miner.distance.normalize_embeddings = False  # keep the hand-built geometry
        anchors, positives, negatives = objective.miner(embeddings, labels)
        return {int(n) for a, p, n in zip(anchors, positives, negatives, strict=True) if int(a) == 0 and int(p) == 1}

    assert mined_negatives("hard") == {2}
    assert mined_negatives("semihard") == {3}
    assert mined_negatives("all") == {2, 3}


@pytest.mark.parametrize("name", [o for o in OBJECTIVES if o != "classification"])
def test_embedding_objectives_prefer_batches_grouped_by_label_and_count_nearest_neighbours(name):
    from core.train import _objective

    objective = _objective(TrainConfig(objective=name, mining="all"))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    grouped = torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [0.05, 0.95], [-1.0, 0.0], [-0.95, -0.05]])
    mixed = grouped[[0, 2, 4, 1, 3, 5]]  # same points, labels no longer follow them
    assert float(objective.loss(grouped, labels)) < float(objective.loss(mixed, labels))
    assert objective.correct(grouped, labels) == 6
    assert objective.correct(mixed, labels) == 0
    trainable = mixed.clone().requires_grad_(True)
    objective.loss(trainable, labels).backward()
    assert trainable.grad is not None and float(trainable.grad.abs().sum()) > 0


def test_unknown_objective_is_named():
    from core.train import _objective

    config = TrainConfig()
    object.__setattr__(config, "objective", "arcface")  # past validation, as a hand-edited manifest could be
    with pytest.raises(ValueError, match="unknown objective 'arcface'"):
        _objective(config)


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_triplet_fine_tune_learns_an_embedding_that_serves_as_featurizer(tiny, tmp_path):
    dataset, split = tiny
    config = TrainConfig(epochs=1, batch_size=12, input_size=128, learning_rate=1e-2, objective="triplet", mining="all")
    result = fine_tune(dataset.records, split, config, tmp_path / "triplet")
    assert len(result.history) == 1 and 0.0 <= result.history[0].test_accuracy <= 1.0
    tuned = finetuned_backbone(tmp_path / "triplet")
    pretrained = body_state(build_backbone("efficientnet_lite0"))
    state = body_state(tuned)
    assert any(not torch.equal(state[k], pretrained[k]) for k in state if state[k].is_floating_point())
    with torch.no_grad():
        assert tuned.model(torch.zeros(2, 3, 128, 128)).shape == (2, 1280)
    frozen = fine_tune(
        dataset.records, split, TrainConfig(epochs=1, objective="triplet", freeze_body=True), tmp_path / "frozen"
    )  # a triplet run has no head: with a frozen body its last stage is what learns
    assert len(frozen.history) == 1
