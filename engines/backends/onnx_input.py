"""The input an exported ONNX graph takes, checked against the clip its model expects (onnxruntime, tensorrt)."""

from __future__ import annotations

import os

import torch

from emim_stream.engines.backends.base import InputSpec
from emim_stream.engines.clip import ClipSpec
from emim_stream.engines.errors import ConfigError

__all__ = ["onnx_input_spec"]


def onnx_input_spec(path: str | os.PathLike[str], clip: ClipSpec, max_batch: int) -> InputSpec:
    """The input spec of an exported graph, checked against the clip the model expects.

    Raises:
        ConfigError: the graph is not one input ``[batch, 3, T, H, W]`` of float32/float16, or its
            T, H, W differ from ``clip``'s.
    """
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    dtypes = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16}
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type not in dtypes:
        raise ConfigError(f"'{path}' must have one float32/float16 input [batch, 3, T, H, W]")
    tensor = inputs[0].type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim)
    if len(dims) != 5 or dims[1:] != (3, clip.frames, clip.height, clip.width):
        raise ConfigError(
            f"'{path}' takes input {list(dims)}, but the model's clip is [batch, 3, {clip.frames}, {clip.height}, "
            f"{clip.width}]; export it for this clip or set engine.frames/height/width"
        )
    return InputSpec(clip.frames, clip.height, clip.width, dtypes[tensor.elem_type], max_batch)
