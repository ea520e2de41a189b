"""From a model to a deployable graph: ONNX export, TensorRT op audit, the calibrated graph's record."""
