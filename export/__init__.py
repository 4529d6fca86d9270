"""ONNX export of featurizers and onnxruntime inference.

* :mod:`export.onnx_export` -- ``export_onnx(backbone, path, training_run)``: self-contained ``.onnx``
  (uint8 pixels in, L2-normalised embeddings out), checked and validated against PyTorch.
* :mod:`export.onnx_featurizer` -- ``OnnxFeaturizer(path, OrtConfig())``: the ``Featurizer`` contract on
  onnxruntime, with the PyTorch featurizer's fingerprint.
* :mod:`export.metadata` -- what the file says about itself (``metadata_props``).

Importing this package is cheap: torch, onnx and onnxruntime load only with the submodules.
"""
