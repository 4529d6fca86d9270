"""Baking the projection into an ONNX featurizer: parity with ProjectionRanker.transform, metadata, bad input."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.errors import ArtifactError
from core.metric_learning import NeighbourLabels, ProjectionConfig, ProjectionRanker
from export.onnx_projection import bake_projection


def tiny_featurizer(path, dim=6):
    """uint8 pixels[batch, 5] -> Cast -> MatMul -> L2 norm -> embedding[batch, dim], IR 8 / opset 17, metadata."""
    weights = np.random.default_rng(0).normal(size=(5, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["x", "w"], ["raw"]),
            helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 5])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="fingerprint", value="abc")
    onnx.save(model, str(path))
    return path


def run(path, pixels):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"pixels": pixels})[0]


def test_baked_graph_matches_the_python_projection(tmp_path):
    plain = tiny_featurizer(tmp_path / "plain.onnx")
    matrix = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    ranker = ProjectionRanker(matrix=matrix, identity_weight=0.25)  # the default look weight: 3 + 6 columns
    baked = bake_projection(plain, ranker, tmp_path / "baked.onnx")
    pixels = np.random.default_rng(2).integers(0, 256, size=(7, 5), dtype=np.uint8)  # another batch size than 1
    got, expected = run(baked, pixels), ranker.transform(run(plain, pixels))
    assert got.shape == (7, 3 + 6)
    assert np.abs(got - expected).max() < 1e-5
    model = onnx.load(str(baked))
    assert model.ir_version <= 13 and [o.name for o in model.graph.output] == ["embedding"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["fingerprint"] == "abc" and '"dims": 9' in props["projection"]
    assert '"look_weight": 0.6' in props["projection"]
    agreement_only = ranker.with_look_weight(0.0)
    bare = bake_projection(plain, agreement_only, tmp_path / "bare.onnx")
    assert run(bare, pixels).shape == (7, 3)
    assert np.abs(run(bare, pixels) - agreement_only.transform(run(plain, pixels))).max() < 1e-5
    with pytest.raises(ArtifactError, match="already carries a projection"):
        bake_projection(baked, ranker, tmp_path / "twice.onnx")
    from export.onnx_featurizer import OnnxFeaturizer

    with pytest.raises(ArtifactError, match="baked.onnx: this model has the projection ranker baked in"):
        OnnxFeaturizer(baked)  # its output ranks; as a featurizer it would fill the cache with other vectors


@pytest.mark.parametrize("space", ["input", "projected"])
def test_baked_graph_takes_the_neighbour_vote_as_the_python_ranker_does(tmp_path, space):
    plain = tiny_featurizer(tmp_path / "plain.onnx")
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(6, 4)).astype(np.float32)
    voters = rng.normal(size=(30, 6 if space == "input" else 4)).astype(np.float32)
    voters /= np.linalg.norm(voters, axis=1, keepdims=True)
    votes = NeighbourLabels(space, voters, rng.integers(0, 5, 30), 5, temperature=0.03, weight=0.75)
    ranker = ProjectionRanker(ProjectionConfig(temperature=0.03, label_weight=0.75), matrix, 0.0, votes)
    baked = bake_projection(plain, ranker, tmp_path / "baked.onnx")
    pixels = rng.integers(0, 256, size=(9, 5), dtype=np.uint8)
    got, expected = run(baked, pixels), ranker.transform(run(plain, pixels))
    assert got.shape == (9, 4 + 5 + 6)  # projection, vote, look
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(got[:, 4:9]).max() > 0.1 and np.abs(got[:, 9:]).max() > 0.1  # the vote and the look are there
    props = {p.key: p.value for p in onnx.load(str(baked)).metadata_props}
    assert f'"label_space": "{space}"' in props["projection"] and '"dims": 15' in props["projection"]


def test_bad_inputs_are_named(tmp_path):
    plain = tiny_featurizer(tmp_path / "plain.onnx")
    with pytest.raises(ArtifactError, match="embedding dimension 6, the projection expects 4"):
        bake_projection(plain, ProjectionRanker(matrix=np.ones((4, 2), np.float32)), tmp_path / "x.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="junk.onnx: unreadable ONNX model"):
        bake_projection(
            tmp_path / "junk.onnx", ProjectionRanker(matrix=np.ones((6, 2), np.float32)), tmp_path / "y.onnx"
        )
    assert not (tmp_path / "x.onnx").exists()
