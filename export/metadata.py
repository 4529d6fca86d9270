"""What an exported model says about itself, stored in the ONNX file's ``metadata_props``.

Every value is a string (ONNX allows nothing else); tuples of floats are JSON lists, which
round-trip floats exactly, so the :class:`~core.backbones.Preprocessing` read back compares equal to
the one the model was exported with and the featurizer fingerprint is reproduced bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.errors import ArtifactError
from core.preprocessing import Preprocessing, fingerprint_of

#: Bumped when the meaning of the graph's input/output or of a key changes.
SCHEMA = "1"
#: Name and layout of the graph input: RGB pixels as they come out of Pillow.
INPUT_NAME = "pixels"
#: Name of the graph output: L2-normalised embeddings.
OUTPUT_NAME = "embedding"
#: Metadata key of a model with the projection ranker baked in (``export.onnx_projection``): not a featurizer.
PROJECTION_KEY = "projection"
#: Name of the dynamic batch axis of both.
BATCH_AXIS = "batch"
_PREFIX = "workbench."


@dataclass(frozen=True)
class ModelMetadata:
    """Identity and contract of an exported featurizer.

    Attributes:
        backbone: Architecture name (a key of ``core.backbones.BACKBONES``).
        weights_id: Identifies the weights; together with ``backbone`` and ``preprocessing`` it
            determines the fingerprint.
        preprocessing: Resize and crop to apply before the graph; mean/std are applied inside it
            and are stored for the fingerprint and for reference.
        feature_dim: Embedding size.
        fingerprint: ``core.featurize.fingerprint_of`` of the source featurizer.
        training_run: Id of the fine-tuning run that produced the weights, empty for pretrained.
        versions: Exporter and library versions, for the record.
    """

    backbone: str
    weights_id: str
    preprocessing: Preprocessing
    feature_dim: int
    fingerprint: str
    training_run: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries, keys prefixed with ``workbench.``."""
        spec = self.preprocessing
        props = {
            "schema": SCHEMA,
            "backbone": self.backbone,
            "weights_id": self.weights_id,
            "training_run": self.training_run,
            "fingerprint": self.fingerprint,
            "feature_dim": str(self.feature_dim),
            "input_size": str(spec.input_size),
            "resize_size": str(spec.resize_size),
            "interpolation": spec.interpolation,
            "mean": json.dumps(list(spec.mean)),
            "std": json.dumps(list(spec.std)),
            "input": f"{INPUT_NAME}: uint8[{BATCH_AXIS}, {spec.input_size}, {spec.input_size}, 3] RGB, resized and centre-cropped",
            "output": f"{OUTPUT_NAME}: float32[{BATCH_AXIS}, {self.feature_dim}], L2-normalised rows",
            "normalization": "in-graph: x / 255, minus mean, over std; L2-normalised output",
            "versions": json.dumps(dict(self.versions), sort_keys=True),
        }
        return {_PREFIX + key: value for key, value in props.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], origin: str) -> ModelMetadata:
        """Parse ``metadata_props`` written by :meth:`to_props`.

        Raises:
            ArtifactError: Keys missing (not a model exported by this package), malformed values,
                unknown schema, or a fingerprint that does not match the other fields; names ``origin``.
        """
        values = {key[len(_PREFIX) :]: value for key, value in props.items() if key.startswith(_PREFIX)}
        required = (
            "schema",
            "backbone",
            "weights_id",
            "fingerprint",
            "feature_dim",
            "input_size",
            "resize_size",
            "interpolation",
            "mean",
            "std",
        )
        missing = [key for key in required if key not in values]
        if missing:
            raise ArtifactError(
                f"{origin}: no workbench metadata ({', '.join(_PREFIX + key for key in missing)} missing); "
                "export the model with `export.onnx_export.export_onnx` so its preprocessing travels with it"
            )
        if values["schema"] != SCHEMA:
            raise ArtifactError(f"{origin}: metadata schema {values['schema']!r}, this version reads {SCHEMA!r}")
        try:
            mean, std = json.loads(values["mean"]), json.loads(values["std"])
            preprocessing = Preprocessing(
                int(values["input_size"]),
                int(values["resize_size"]),
                (float(mean[0]), float(mean[1]), float(mean[2])),
                (float(std[0]), float(std[1]), float(std[2])),
                values["interpolation"],
            )
            metadata = cls(
                backbone=values["backbone"],
                weights_id=values["weights_id"],
                preprocessing=preprocessing,
                feature_dim=int(values["feature_dim"]),
                fingerprint=values["fingerprint"],
                training_run=values.get("training_run", ""),
                versions=json.loads(values.get("versions", "{}")),
            )
        except (ValueError, TypeError, IndexError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{origin}: malformed workbench metadata ({err})") from err
        expected = fingerprint_of(metadata.backbone, metadata.weights_id, metadata.preprocessing)
        if metadata.fingerprint != expected:
            raise ArtifactError(
                f"{origin}: stored fingerprint {metadata.fingerprint} does not match its backbone, weights "
                f"and preprocessing ({expected}); the metadata was edited or is from another model"
            )
        return metadata
