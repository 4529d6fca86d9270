"""Bake a learned projection into an exported featurizer: ``embedding -> MatMul(M) -> L2 norm -> embedding``.

With neighbour labels the graph also takes the vote: ``MatMul`` with the voters, ``Softmax`` of the cosines over
the temperature, ``MatMul`` with the voters' one-hot labels, L2 norm, and concatenates the two parts weighted by
``sqrt(1 - b)`` and ``sqrt(b)``.

The input is a featurizer ``.onnx`` written by :func:`export.onnx_export.export_onnx` (uint8 pixels in, unit
``embedding`` out). The baked graph keeps the input, the output name, the opsets, the IR version (pinned to at
most :data:`export.onnx_export.MAX_IR_VERSION`) and the metadata, and adds one ``projection`` metadata entry
(dimension, mix weight, label space, SHA-256 of ``M``), so its output is
:meth:`core.metric_learning.ProjectionRanker.transform` of the plain graph's output and ranking is a dot product on
it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from core.artifacts import atomic_path
from core.errors import ArtifactError
from core.metric_learning import ProjectionRanker
from export.metadata import OUTPUT_NAME, PROJECTION_KEY


def bake_projection(onnx_path: str | Path, ranker: ProjectionRanker, out_path: str | Path) -> Path:
    """Write a copy of ``onnx_path`` whose ``embedding`` output is projected by ``ranker`` and L2-normalised.

    Raises:
        ArtifactError: The file is missing or unreadable, has no ``embedding`` output, its embedding dimension
            differs from the projection's input, or it already carries a projection.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.onnx_export import pin_ir_version

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as err:  # OSError, protobuf's DecodeError and onnx's own errors
        raise ArtifactError(f"{onnx_path}: unreadable ONNX model ({err})") from err
    outputs = [output for output in model.graph.output if output.name == OUTPUT_NAME]
    if not outputs:
        raise ArtifactError(f"{onnx_path}: no {OUTPUT_NAME!r} output to project")
    if any(prop.key == PROJECTION_KEY for prop in model.metadata_props):
        raise ArtifactError(f"{onnx_path}: already carries a projection")
    matrix = ranker._matrix()
    dims = outputs[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value != matrix.shape[0]:
        raise ArtifactError(
            f"{onnx_path}: embedding dimension {dims[1].dim_value}, the projection expects {matrix.shape[0]}"
        )
    plain = f"{OUTPUT_NAME}_unprojected"
    for node in model.graph.node:
        node.output[:] = [plain if name == OUTPUT_NAME else name for name in node.output]
        node.input[:] = [plain if name == OUTPUT_NAME else name for name in node.input]
    votes = ranker.neighbours
    constants = {"projection_matrix": matrix}
    looks = ranker.look_weight > 0
    agreement = "agreement" if looks else OUTPUT_NAME  # label agreement, then (with a look weight) the look beside it
    unit_projection = "projected_unit" if votes is not None else agreement
    nodes = [
        helper.make_node("MatMul", [plain, "projection_matrix"], ["projected"], name="projection_matmul"),
        helper.make_node("LpNormalization", ["projected"], [unit_projection], axis=1, p=2, name="projection_norm"),
    ]
    if votes is not None:
        constants |= {
            "voters_t": np.ascontiguousarray(votes.references.T),
            "inverse_temperature": np.array(1.0 / votes.temperature, np.float32),
            "voter_labels_onehot": np.eye(votes.n_labels, dtype=np.float32)[votes.labels],
            "projection_part_weight": np.array(np.sqrt(1.0 - votes.weight), np.float32),
            "label_part_weight": np.array(np.sqrt(votes.weight), np.float32),
        }
        voting_space = unit_projection if votes.space == "projected" else "plain_unit"
        if votes.space == "input":
            nodes.append(helper.make_node("LpNormalization", [plain], ["plain_unit"], axis=1, p=2))
        nodes += [
            helper.make_node("MatMul", [voting_space, "voters_t"], ["voter_cosines"]),
            helper.make_node("Mul", ["voter_cosines", "inverse_temperature"], ["voter_logits"]),
            helper.make_node("Softmax", ["voter_logits"], ["voter_weights"], axis=1),
            helper.make_node("MatMul", ["voter_weights", "voter_labels_onehot"], ["votes"]),
            helper.make_node("LpNormalization", ["votes"], ["soft_labels"], axis=1, p=2),
            helper.make_node("Mul", [unit_projection, "projection_part_weight"], ["projection_part"]),
            helper.make_node("Mul", ["soft_labels", "label_part_weight"], ["label_part"]),
            helper.make_node("Concat", ["projection_part", "label_part"], [agreement], axis=1, name="projection_out"),
        ]
    if looks:
        constants |= {
            "agreement_part_weight": np.array(np.sqrt(1.0 - ranker.look_weight), np.float32),
            "look_part_weight": np.array(np.sqrt(ranker.look_weight), np.float32),
        }
        if votes is None or votes.space != "input":  # the input vote normalised the plain embedding already
            nodes.append(helper.make_node("LpNormalization", [plain], ["plain_unit"], axis=1, p=2))
        nodes += [
            helper.make_node("Mul", [agreement, "agreement_part_weight"], ["agreement_part"]),
            helper.make_node("Mul", ["plain_unit", "look_part_weight"], ["look_part"]),
            helper.make_node("Concat", ["agreement_part", "look_part"], [OUTPUT_NAME], axis=1, name="look_out"),
        ]
    model.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(value, np.float32), name) for name, value in constants.items()
    )
    model.graph.node.extend(nodes)
    batch = dims[0] if len(dims) else None
    new_output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, ranker.output_dim])
    if batch is not None:
        new_output.type.tensor_type.shape.dim[0].CopyFrom(batch)
    model.graph.output.remove(outputs[0])
    model.graph.output.append(new_output)
    info = {
        "dims": ranker.output_dim,
        "identity_weight": ranker.identity_weight,
        "label_space": ranker.label_space,
        "look_weight": ranker.look_weight,
        "matrix_sha256": hashlib.sha256(np.ascontiguousarray(matrix, np.float32).tobytes()).hexdigest(),
    }
    model.metadata_props.add(key=PROJECTION_KEY, value=json.dumps(info, sort_keys=True))
    pin_ir_version(model)
    onnx.checker.check_model(model)
    with atomic_path(out_path, ".onnx") as temp:
        onnx.save(model, str(temp))
    return out_path
