"""ONNX export of featurizers and onnxruntime inference (not implemented yet)."""
