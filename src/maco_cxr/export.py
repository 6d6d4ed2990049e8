"""Export the image and text encoders as graphs that run without this package (or PyTorch).

:func:`export` writes one folder, atomically (a kill leaves the old folder or the new one):

- ``image_encoder.onnx``: ``pixels`` float32 ``[N, 3, S, S]``, normalised as
  ``(x/255 - mean)/std`` and resized/cropped to S -> ``embedding`` ``[N, D]`` and
  ``patch_embeddings`` ``[N, g*g, D]`` (row-major patch grid, g = S / patch);
- ``image_encoder_uint8.onnx``: ``pixels`` uint8 grey ``[N, 1, H, W]`` of any size, as
  :func:`maco_cxr.read_image` returns it (the images of one call share a size); normalisation,
  the resize and centre crop to S and the 3-channel copy happen inside the graph, as maco-cxr
  does them (PyTorch's antialiased bilinear weights, built in the graph and applied as two
  matrix products); same outputs;
- ``text_encoder.onnx``: ``input_ids``, ``attention_mask`` int64 ``[N, L]`` (L = max_length,
  from ``tokenizer.json`` with the ``"[CLS] "`` prefix, padded with 0) -> ``embedding`` ``[N, D]``;
- with ``formats=("torchscript",)`` the same three graphs as ``*.pt`` (``torch.jit.trace``; the
  uint8 graph's resize is scripted, so that H and W stay dynamic);
- ``tokenizer.json``, ``preprocessing.json`` (the preprocessing contract), ``export.json`` (graph
  signatures, versions, file digests and the measured agreement with eager PyTorch) and a
  generated ``MODEL_CARD.md``.

The graphs compute exactly what :func:`maco_cxr.inference.encode_images`,
:func:`~maco_cxr.inference.patch_embeddings` and :func:`~maco_cxr.inference.encode_texts`
compute (float32, eval mode): ``image_encoder_uint8`` from the file's pixels, ``image_encoder``
from pixels normalised and resized as maco-cxr does it. Embeddings are unnormalised; compare
them by cosine similarity. The batch axis N is dynamic (and H, W of ``image_encoder_uint8``);
S and L are fixed. ONNX export uses the ``torch.export``-based exporter (needs ``onnx`` and
``onnxscript``; ``onnxruntime`` checks the graphs), imported only when used:
``pip install "maco-cxr[export]"``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maco_cxr._atomic import atomic_directory, write_json, write_text
from maco_cxr.cards import INTENDED_USE, front_matter, maco_metadata
from maco_cxr.config import config_to_dict
from maco_cxr.data.tokenizer import CLS_PREFIX
from maco_cxr.errors import MacoError
from maco_cxr.models.maco import joint_embeddings, resize_center_crop

if TYPE_CHECKING:
    from maco_cxr.models.maco import MacoModel

__all__ = ["ExportError", "ExportResult", "ImageEncoderGraph", "TextEncoderGraph", "export", "model_card"]

logger = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
EXPORT_FORMAT_VERSION = 1
DEFAULT_OPSET = 18
MIN_OPSET = 17
INSTALL_HINT = 'pip install "maco-cxr[export]"'

IMAGE_GRAPH = "image_encoder"
IMAGE_UINT8_GRAPH = "image_encoder_uint8"
TEXT_GRAPH = "text_encoder"
GRAPHS = (IMAGE_GRAPH, IMAGE_UINT8_GRAPH, TEXT_GRAPH)


class ExportError(MacoError, RuntimeError):
    """A graph could not be exported, or disagrees with the eager model."""


# ------------------------------------------------------------------------------ graphs


class ImageEncoderGraph(nn.Module):
    """``pixels`` -> (``embedding`` ``[N, D]``, ``patch_embeddings`` ``[N, g*g, D]``).

    ``uint8_input=False``: normalised float32 ``[N, 3, S, S]``. ``uint8_input=True``: grey uint8
    ``[N, 1, H, W]``, normalised as ``(x/255 - mean)/std``, resized and cropped to S as
    :func:`~maco_cxr.inference.encoder_input` does, and copied to 3 channels: the eager
    reference of ``image_encoder_uint8`` (whose files are built from the float graph, see
    :func:`_write_onnx_uint8` and :class:`_Uint8Front`).
    """

    def __init__(self, model: MacoModel, uint8_input: bool) -> None:
        super().__init__()
        self.visual, self.img_proj = model.visual, model.img_proj
        self.uint8_input = uint8_input
        self.size = model.config.vision.img_size
        self.mean, self.std = float(model.config.image_mean), float(model.config.image_std)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels
        if self.uint8_input:
            x = resize_center_crop((pixels.float() / 255.0 - self.mean) / self.std, self.size)
            x = x.expand(-1, 3, -1, -1)
        return joint_embeddings(self.img_proj, self.visual.forward_features(x))


class _Uint8Front(nn.Module):
    """TorchScript ``image_encoder_uint8``: uint8 ``[N, 1, H, W]`` -> the traced float graph.

    :func:`~maco_cxr.models.maco.resize_center_crop` written so ``torch.jit.script`` keeps H
    and W dynamic (tracing would freeze the resize to the example's size); the export checks
    it against the eager reference.
    """

    def __init__(self, encoder: torch.jit.ScriptModule, size: int, mean: float, std: float) -> None:
        super().__init__()
        self.encoder, self.size, self.mean, self.std = encoder, size, mean, std

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.float() / 255.0 - self.mean) / self.std
        h, w = x.shape[-2], x.shape[-1]
        if h != self.size or w != self.size:
            scale = self.size / min(h, w)
            new_h, new_w = max(self.size, int(round(h * scale))), max(self.size, int(round(w * scale)))
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
            x = x[:, :, top : top + self.size, left : left + self.size]
        return self.encoder(x.expand(-1, 3, -1, -1))


class TextEncoderGraph(nn.Module):
    """(``input_ids``, ``attention_mask``) int64 ``[N, L]`` -> ``embedding`` ``[N, D]`` (BERT pooler)."""

    def __init__(self, model: MacoModel) -> None:
        super().__init__()
        self.text = model.text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)


@dataclass(frozen=True)
class _GraphSpec:
    name: str
    module: nn.Module
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]


def _specs(model: MacoModel) -> list[_GraphSpec]:
    c = model.config
    size, channels, dim = c.vision.img_size, 3, c.embed_dim
    patches, length = c.vision.num_patches, c.text.max_length
    image_out = (
        {"name": "embedding", "dtype": "float32", "shape": ["N", dim]},
        {"name": "patch_embeddings", "dtype": "float32", "shape": ["N", patches, dim]},
    )
    return [
        _GraphSpec(
            IMAGE_GRAPH,
            ImageEncoderGraph(model, uint8_input=False).eval(),
            (
                {
                    "name": "pixels",
                    "dtype": "float32",
                    "shape": ["N", channels, size, size],
                    "meaning": "normalised (x/255 - mean)/std, resized and centre-cropped to size",
                },
            ),
            image_out,
        ),
        _GraphSpec(
            IMAGE_UINT8_GRAPH,
            ImageEncoderGraph(model, uint8_input=True).eval(),
            (
                {
                    "name": "pixels",
                    "dtype": "uint8",
                    "shape": ["N", 1, "H", "W"],
                    "meaning": "grey pixels of any size, as read from the file (one size per call); "
                    "normalised, resized and centre-cropped to size inside",
                },
            ),
            image_out,
        ),
        _GraphSpec(
            TEXT_GRAPH,
            TextEncoderGraph(model).eval(),
            (
                {
                    "name": "input_ids",
                    "dtype": "int64",
                    "shape": ["N", length],
                    "meaning": "token ids of '[CLS] ' + text, truncated / padded with 0 to max_length",
                },
                {
                    "name": "attention_mask",
                    "dtype": "int64",
                    "shape": ["N", length],
                    "meaning": "1 for real tokens, 0 for padding (input_ids != 0)",
                },
            ),
            ({"name": "embedding", "dtype": "float32", "shape": ["N", dim]},),
        ),
    ]


def _uint8_check_sizes(size: int) -> list[tuple[int, int]]:
    """H x W the uint8 graph is checked at: as is; halved, with a rounding tie (2S+1 -> S + 0.5,
    rounded half to even like Python's ``round``); enlarged, not square; enlarged by one pixel
    (where float32 sample positions are most sensitive)."""
    return [(size, size), (2 * size + 1, 2 * size), (size * 3 // 4, size // 2 + 1), (size - 1, size + 77)]


def _example_inputs(
    model: MacoModel, name: str, batch: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, ...]]:
    """Inputs of graph ``name`` (one tuple, and one per checked size for the uint8 graph); the
    texts include a padded one and one filling all L positions. Random pixels are the worst case
    for resampling differences."""
    size = model.config.vision.img_size
    if name == IMAGE_GRAPH:
        return [(torch.randn(batch, 3, size, size, generator=generator),)]
    if name == IMAGE_UINT8_GRAPH:
        return [
            (torch.randint(0, 256, (batch, 1, h, w), generator=generator, dtype=torch.uint8),)
            for h, w in _uint8_check_sizes(size)
        ]
    texts = [
        "no acute cardiopulmonary process.",
        "small right pleural effusion. " * 40,
        "heart size is normal. the lungs are clear. no pneumothorax.",
    ]
    tokens = model.tokenizer([texts[i % len(texts)] for i in range(batch)])
    return [(tokens["input_ids"], tokens["attention_mask"])]


# ------------------------------------------------------------------------------ writers


def _import_onnx(check: bool) -> Any:
    """onnx (and onnxscript, which the exporter needs; onnxruntime when checking), or an install hint."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

        if check:
            import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript, and onnxruntime to check the graphs "
            f"(missing: {err.name}); install them with `{INSTALL_HINT}`"
        ) from err
    return onnx


def _rename_outputs(graph: Any, names: Sequence[str]) -> None:
    """Give the graph's outputs ``names``; an inner value already called so is renamed first
    (the exporter names values after their ops, so BERT's embedding lookup is "embedding")."""
    outputs = list(graph.outputs)
    wanted = set(names)
    for node in graph:
        for value in node.outputs:
            if value.name in wanted and value not in outputs:
                value.name = f"{value.name}_inner"
    for value, name in zip(outputs, names):
        value.name = name


def _write_onnx(spec: _GraphSpec, example: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    onnx = _import_onnx(check=False)
    batch = torch.export.Dim("batch")
    dynamic = {item["name"]: {0: batch} for item in spec.inputs}
    with warnings.catch_warnings():
        # Inputs sharing the batch Dim make the exporter say it keeps one axis name: harmless.
        warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used.*")
        try:
            program = torch.onnx.export(
                spec.module,
                example,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                verbose=False,
                optimize=True,
            )
        except Exception as err:
            raise ExportError(f"{spec.name}: ONNX export failed: {err}") from err
    _rename_outputs(program.model.graph, [item["name"] for item in spec.outputs])
    program.save(str(path))
    onnx.checker.check_model(str(path))


class _OnnxOps:
    """Builds ONNX nodes one op a line: each output gets a fresh name under ``prefix``, each
    constant becomes an initializer."""

    def __init__(self, prefix: str) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.prefix, self.nodes, self.constants = prefix, [], []

    def _name(self) -> str:
        return f"{self.prefix}/{len(self.nodes) + len(self.constants)}"

    def const(self, value: Any, dtype: Any) -> str:
        name = self._name()
        self.constants.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def __call__(self, op: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        output = output or self._name()
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], **attrs))
        return output


def _aa_weights(g: _OnnxOps, size: int, length: str, resized: str, offset: str) -> str:
    """float ``[size, length]``: rows ``offset .. offset+size`` of PyTorch's antialiased bilinear
    resampling matrix from ``length`` to ``resized`` samples (0-D int64 inputs).

    The arithmetic of ATen's ``_compute_indices_min_size_weights_aa`` for float (CPU), with its
    float/double promotions step by step, so the weights agree to the last bit or two: ONNX
    ``Resize(antialias=1)`` places its samples by a different float32 formula, up to 1.2e-4
    (normalised units) off where the scale is near 1.
    """
    from onnx import TensorProto

    f32, f64, i64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64

    def one(value: float, dtype: Any) -> str:
        return g.const(value, dtype)

    scale = g("Div", g("Cast", length, to=f32), g("Cast", resized, to=f32))  # area_pixel_compute_scale
    support = g("Max", scale, one(1.0, np.float32))  # bilinear: interp_size / 2 * max(scale, 1)
    invscale = g("Cast", g("Div", one(1.0, np.float64), g("Cast", support, to=f64)), to=f32)
    max_taps = g("Add", g("Mul", g("Cast", g("Ceil", support), to=i64), one(2, np.int64)), one(1, np.int64))
    rows = g("Add", g.const(np.arange(size), np.int64), offset)
    half_rows = g("Add", g("Cast", rows, to=f64), one(0.5, np.float64))
    center = g("Cast", g("Mul", g("Cast", scale, to=f64), half_rows), to=f32)  # scale * (i + 0.5)

    def edge(sign: str) -> str:  # int64(center -/+ support + 0.5); Floor = truncation where it matters
        shifted = g("Add", g("Cast", g(sign, center, support), to=f64), one(0.5, np.float64))
        return g("Cast", g("Floor", shifted), to=i64)

    first = g("Max", edge("Sub"), one(0, np.int64))
    count = g("Min", g("Max", g("Sub", g("Min", edge("Add"), length), first), one(0, np.int64)), max_taps)
    column = g.const([-1, 1], np.int64)
    taps = g("Range", one(0, np.int64), length, one(1, np.int64))
    offset_from_center = g("Sub", g("Cast", taps, to=f32), g("Reshape", center, column))  # [size, length]
    argument = g(
        "Cast",
        g("Mul", g("Add", g("Cast", offset_from_center, to=f64), one(0.5, np.float64)), g("Cast", invscale, to=f64)),
        to=f32,
    )
    weight = g("Relu", g("Sub", one(1.0, np.float32), g("Abs", argument)))  # the triangle filter
    inside = g(
        "And",
        g("GreaterOrEqual", taps, g("Reshape", first, column)),
        g("Less", taps, g("Reshape", g("Add", first, count), column)),
    )
    weight = g("Where", inside, weight, one(0.0, np.float32))
    total = g("ReduceSum", weight, g.const([1], np.int64), keepdims=1)
    total = g("Where", g("Equal", total, one(0.0, np.float32)), one(1.0, np.float32), total)
    return g("Div", weight, total)


def _front_nodes(size: int, mean: float, std: float, source: str, target: str) -> tuple[list[Any], list[Any]]:
    """ONNX nodes and initializers: uint8 ``source`` [N, 1, H, W] -> ``target`` float [N, 3, S, S],
    what :class:`_Uint8Front` computes: normalise, new size as Python computes it (float64,
    rounded half to even), the crop's rows of the width then the height resampling matrix
    (:func:`_aa_weights`; PyTorch resamples the width first too), 3 channels."""
    from onnx import TensorProto

    g = _OnnxOps("uint8_front")
    f32, f64, i64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64
    x = g(
        "Div",
        g("Sub", g("Div", g("Cast", source, to=f32), g.const(255.0, np.float32)), g.const(mean, np.float32)),
        g.const(std, np.float32),
    )
    shape = g("Shape", source)
    hw = g("Slice", shape, g.const([2], np.int64), g.const([4], np.int64))
    hw_f64 = g("Cast", hw, to=f64)
    size_f64 = g.const([float(size)], np.float64)
    scale = g("Div", size_f64, g("ReduceMin", hw_f64, keepdims=1))
    new_hw = g("Cast", g("Max", g("Round", g("Mul", hw_f64, scale)), size_f64), to=i64)
    start = g("Div", g("Sub", new_hw, g.const(size, np.int64)), g.const(2, np.int64))

    def axis(index: int) -> tuple[str, str, str]:
        at = g.const(index, np.int64)
        return g("Gather", hw, at), g("Gather", new_hw, at), g("Gather", start, at)

    by_width = _aa_weights(g, size, *axis(1))  # [S, W]
    by_height = _aa_weights(g, size, *axis(0))  # [S, H]
    across = g("MatMul", x, g("Transpose", by_width, perm=[1, 0]))  # [N, 1, H, S]
    resized = g("MatMul", by_height, across)  # [N, 1, S, S]
    g("Expand", resized, g.const([1, 3, 1, 1], np.int64), output=target)
    return g.nodes, g.constants


def _write_onnx_uint8(model: MacoModel, float_path: Path, path: Path) -> None:
    """``image_encoder_uint8.onnx``: the float graph at ``float_path`` behind :func:`_front_nodes`.

    Built in ONNX rather than exported: ``torch.export`` cannot trace a resize whose size is
    computed from dynamic H and W.
    """
    onnx = _import_onnx(check=False)
    from onnx import TensorProto, helper

    proto = onnx.load(str(float_path))
    graph = proto.graph
    (pixels,) = graph.input
    normalised = "uint8_front/pixels_normalised"
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    if any(v.startswith("uint8_front/") for v in taken):
        raise ExportError(f"{IMAGE_GRAPH}.onnx already has values named uint8_front/...; cannot add the uint8 input")
    for node in graph.node:
        node.input[:] = [normalised if v == pixels.name else v for v in node.input]
    c = model.config
    nodes, constants = _front_nodes(c.vision.img_size, float(c.image_mean), float(c.image_std), pixels.name, normalised)
    batch = pixels.type.tensor_type.shape.dim[0].dim_param or "N"
    encoder_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *encoder_nodes])
    graph.initializer.extend(constants)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(pixels.name, TensorProto.UINT8, [batch, 1, "H", "W"]))
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def _write_torchscript_uint8(model: MacoModel, float_path: Path, path: Path) -> None:
    """``image_encoder_uint8.pt``: :class:`_Uint8Front` (scripted) around the traced float graph."""
    c = model.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        encoder = torch.jit.load(str(float_path))
        try:
            scripted = torch.jit.script(
                _Uint8Front(encoder, c.vision.img_size, float(c.image_mean), float(c.image_std))
            )
        except Exception as err:
            raise ExportError(f"{IMAGE_UINT8_GRAPH}: TorchScript scripting failed: {err}") from err
        torch.jit.save(scripted, str(path))


def _write_torchscript(spec: _GraphSpec, example: tuple[torch.Tensor, ...], path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated (FutureWarning) and the tracer flags shape checks it freezes
        # (TracerWarning); S and L are fixed by design, and every graph is checked after export.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(spec.module, example, check_trace=False)
        except Exception as err:
            raise ExportError(f"{spec.name}: TorchScript tracing failed: {err}") from err
        torch.jit.save(traced, str(path))


# ------------------------------------------------------------------------------ checks


def _run_onnx(path: Path, spec: _GraphSpec, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(
        [o["name"] for o in spec.outputs], {item["name"]: x.numpy() for item, x in zip(spec.inputs, inputs)}
    )


def _run_torchscript(path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        out = torch.jit.load(str(path))(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _max_abs_diff(spec: _GraphSpec, got: list[np.ndarray], inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Per output, the largest absolute difference of ``got`` from the eager module on ``inputs``."""
    with torch.no_grad():
        want = spec.module(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    diffs = {}
    for item, a, b in zip(spec.outputs, got, want):
        if a.shape != tuple(b.shape):
            raise ExportError(f"{spec.name}: output {item['name']} has shape {a.shape}, eager {tuple(b.shape)}")
        diffs[item["name"]] = float(np.abs(a - b.numpy()).max())
    return diffs


def _check(spec: _GraphSpec, fmt: str, path: Path, trials: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
    """The largest difference per output from eager PyTorch over all ``trials``."""
    worst: dict[str, float] = {}
    for inputs in trials:
        got = _run_onnx(path, spec, inputs) if fmt == "onnx" else _run_torchscript(path, inputs)
        for name, value in _max_abs_diff(spec, got, inputs).items():
            worst[name] = max(worst.get(name, 0.0), value)
    return worst


# ------------------------------------------------------------------------------ contract and card


def preprocessing_contract(model: MacoModel) -> dict[str, Any]:
    """What a caller must do to pixels and text before the graphs (``preprocessing.json``)."""
    c = model.config
    return {
        "image": {
            "size": c.vision.img_size,
            "channels": 3,
            "mean": c.image_mean,
            "std": c.image_std,
            "normalise": "x = (u8 / 255 - mean) / std on grey uint8 pixels u8, copied to 3 channels",
            "resize": {
                "rule": "shorter side to size, then the centre size x size crop "
                "(offset (new - size) // 2; the new longer side is round(side * size / shorter))",
                "interpolation": "bilinear",
                "antialias": True,
                "align_corners": False,
                "order": "normalise to float first, then resize: image_encoder_uint8 does both "
                "inside (pass the file's uint8 pixels at their own size); image_encoder "
                "expects them done (resizing uint8 and rounding first changes the result)",
            },
            "patch_size": c.vision.patch_size,
            "grid": c.vision.grid_size,
            "patch_order": "row-major over the grid (index = row * grid + column)",
        },
        "text": {
            "tokenizer": "tokenizer.json",
            "prefix": CLS_PREFIX,
            "max_length": c.text.max_length,
            "pad_id": 0,
            "truncation": "keep the first max_length ids (the prefix's [CLS] included)",
            "attention_mask": "input_ids != 0",
            "lowercase": "done by the tokenizer's normaliser",
        },
        "embedding": {"dim": c.embed_dim, "normalised": False, "similarity": "cosine"},
    }


def _training_data(metadata: dict[str, Any] | None) -> str:
    """The training data a model's ``config.json`` records, else "unknown"."""
    metadata = metadata or {}
    pretraining = metadata.get("pretraining")
    if isinstance(pretraining, dict):
        data = (pretraining.get("config") or {}).get("data") or {}
        parts = [f"{key} `{data[key]}`" for key in ("source", "kind", "path", "split") if data.get(key) is not None]
        return f"pre-trained with maco-cxr for {pretraining.get('steps', 'an unrecorded number of')} steps on " + (
            ", ".join(parts) if parts else "data not recorded"
        )
    origin = metadata.get("converted_from")
    if isinstance(origin, dict) and origin.get("training_data"):
        digest = f", sha256 `{origin['sha256']}`" if origin.get("sha256") else ""
        return f"{origin['training_data']} (converted from `{origin.get('file')}`{digest})"
    return "unknown"


_ORT_EXAMPLE = """\
import json

import numpy as np
import onnxruntime as ort
from maco_cxr import read_image  # PNG/JPEG (8- or 16-bit) or DICOM -> uint8 grey [H, W]
from tokenizers import Tokenizer

pre = json.load(open("preprocessing.json"))
length = pre["text"]["max_length"]
tokenizer = Tokenizer.from_file("tokenizer.json")


def tokenize(texts):
    ids = np.zeros((len(texts), length), dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch([pre["text"]["prefix"] + t for t in texts])):
        kept = encoding.ids[:length]
        ids[row, :len(kept)] = kept
    return ids, (ids != 0).astype(np.int64)


image_encoder = ort.InferenceSession("image_encoder_uint8.onnx", providers=["CPUExecutionProvider"])
text_encoder = ort.InferenceSession("text_encoder.onnx", providers=["CPUExecutionProvider"])
pixels = read_image("cxr.png")[None, None]  # [1, 1, H, W] uint8 at the file's size; "cxr.dcm" works too
# resized, cropped and normalised inside; images of one size can share a call: [N, 1, H, W]
image_embedding, patch_embeddings = image_encoder.run(None, {"pixels": pixels})
ids, mask = tokenize(["There is a right pleural effusion.", "No acute cardiopulmonary process."])
(text_embedding,) = text_encoder.run(None, {"input_ids": ids, "attention_mask": mask})
unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
similarity = unit(image_embedding) @ unit(text_embedding).T  # cosine, [N_images, N_texts]
print(similarity)
"""


def model_card(
    model: MacoModel,
    metadata: dict[str, Any] | None = None,
    formats: Sequence[str] = ("onnx",),
    source: str | None = None,
) -> str:
    """``MODEL_CARD.md`` of an export: architecture, training data (from ``metadata``, the model's
    ``config.json``, else "unknown"), preprocessing, intended use, limitations, how to run it."""
    from maco_cxr._version import __version__

    c = model.config
    files = ", ".join(f"`{name}{SUFFIXES[fmt]}`" for fmt in formats for name in GRAPHS)
    lines = [
        front_matter(maco_metadata(metadata or {})),
        "# MaCo chest X-ray encoders (exported)",
        "",
        f"Exported by maco-cxr {__version__}" + (f" from `{source}`" if source else "") + f": {files}.",
        "MaCo (Huang et al., *Nature Communications* 2024) is a masked-contrastive chest X-ray "
        "vision-language model: images and report sentences are mapped into one embedding space.",
        "",
        "## Architecture",
        "",
        f"- Image encoder: ViT, {c.vision.img_size} px input, {c.vision.patch_size} px patches "
        f"({c.vision.grid_size} x {c.vision.grid_size} grid), width {c.vision.embed_dim}, depth {c.vision.depth}, "
        f"{c.vision.num_heads} heads, MLP ratio {c.vision.mlp_ratio:g}; a linear map (`img_proj`) takes each "
        f"patch token into the joint space; the image embedding is the mean of the {c.vision.num_patches} "
        "patch embeddings (CLS token unused).",
        f"- Text encoder: BERT, width {c.text.hidden_size}, {c.text.num_layers} layers, {c.text.num_heads} heads, "
        f"FFN {c.text.intermediate_size}, vocabulary {c.text.vocab_size}, at most {c.text.max_length} tokens; "
        "the text embedding is BERT's pooler output (tanh of a dense layer on [CLS]).",
        f"- Joint embedding width D = {c.embed_dim}. Embeddings are not normalised: compare them by cosine similarity.",
        "",
        "## Training data",
        "",
        _training_data(metadata),
        "",
        "## Graphs",
        "",
        "| graph | inputs | outputs |",
        "|---|---|---|",
    ]
    for spec in _specs(model):

        def describe(items: Sequence[dict[str, Any]]) -> str:
            return "<br>".join(f"`{i['name']}` {i['dtype']} [{', '.join(map(str, i['shape']))}]" for i in items)

        lines.append(f"| `{spec.name}` | {describe(spec.inputs)} | {describe(spec.outputs)} |")
    lines += [
        "",
        "N (the batch) is dynamic, and so are H and W of `image_encoder_uint8`. `export.json` lists the "
        "graphs, the versions, the files' SHA-256 and the "
        "largest difference from eager PyTorch measured at export.",
        "",
        "## Preprocessing",
        "",
        f"- Images: grey uint8, normalised as (x / 255 - {c.image_mean}) / {c.image_std}, shorter side "
        f"resized to {c.vision.img_size} (bilinear, antialiased), centre {c.vision.img_size} x "
        f"{c.vision.img_size} crop, copied to 3 channels. `image_encoder_uint8` does all of this inside: "
        "pass the image's grey pixels at their own size (one call per size) and it computes what maco-cxr "
        "computes. `image_encoder` takes pixels already normalised and resized (resize after normalising, "
        "in float, for identical results).",
        "- Reading files: `maco_cxr.read_image` reads PNG/JPEG (8- or 16-bit; 16-bit as v * 255 / 65535) "
        "and DICOM (modality and VOI LUTs, MONOCHROME1 inverted) as the uint8 grey pixels the model was "
        "used with (importing it does not load PyTorch). A reader of your own must give "
        'the same pixels: e.g. PIL\'s `convert("L")` turns a 16-bit PNG white.',
        f'- Text: `"{CLS_PREFIX}"` + the text, tokenized with `tokenizer.json` (WordPiece, lower-cased), '
        f"truncated or padded with 0 to {c.text.max_length} ids; attention mask = ids != 0.",
        "- `preprocessing.json` states the same contract in machine-readable form.",
        "",
        INTENDED_USE,
        "",
        "Uses: zero-shot classification (similarity of an image to positive and negative prompts), "
        "image-report retrieval, phrase grounding from the patch embeddings, and features for fine-tuning.",
        "",
        "- It reflects its training data (see above) and may not transfer to other hospitals, devices, "
        "populations, projections or image processing; scores are uncalibrated similarities, not "
        "probabilities.",
        "- English report language and the vocabulary of `tokenizer.json` only; text beyond "
        f"{c.text.max_length} tokens is cut off.",
        "",
        "## Running it with onnxruntime",
        "",
        "```python",
        _ORT_EXAMPLE.rstrip("\n"),
        "```",
    ]
    if "torchscript" in formats:
        lines += [
            "",
            "TorchScript (`torch.jit` is deprecated in recent PyTorch; prefer the ONNX graphs):",
            "",
            "```python",
            "import torch",
            "",
            'image_encoder = torch.jit.load("image_encoder_uint8.pt")',
            "with torch.no_grad():  # pixels: uint8 [N, 1, H, W] as above",
            "    image_embedding, patch_embeddings = image_encoder(torch.from_numpy(pixels))",
            "```",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ export


@dataclass
class ExportResult:
    """What :func:`export` wrote: the folder, its files, and per format and graph the largest
    absolute difference of each output from eager PyTorch (empty when ``check=False``)."""

    directory: Path
    files: list[str]
    max_abs_diff: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def export(
    model: MacoModel,
    directory: str | Path,
    *,
    formats: Sequence[ExportFormat] = ("onnx",),
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = 1e-4,
    metadata: dict[str, Any] | None = None,
    source: str | None = None,
    seed: int = 0,
) -> ExportResult:
    """Write the image and text encoders of ``model`` to ``directory`` (see the module docstring).

    formats: ``onnx`` and/or ``torchscript``. check: run every graph (onnxruntime / torch.jit) on
    a batch of 3 (the graphs are traced on 2, so this also exercises the dynamic batch) and raise
    :class:`ExportError` when an output differs from eager float32 by more than ``atol``.
    metadata: the model's ``config.json`` (for the model card's training data). source: where
    the model came from, for the card. ``model`` itself is not changed.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {unknown or formats}; choose from {list(FORMATS)}")
    if "onnx" in formats:
        if opset < MIN_OPSET:
            raise ExportError(f"opset {opset} is too old; use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
        _import_onnx(check)
    weight = model.img_proj.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        model = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    specs = _specs(model)
    result = ExportResult(Path(directory), [])
    digests: dict[str, str] = {}
    try:
        with atomic_directory(directory, "export") as tmp:
            for spec in specs:  # IMAGE_GRAPH first: the uint8 graph is built from its files
                built = spec.name == IMAGE_UINT8_GRAPH
                example = () if built else _example_inputs(model, spec.name, 2, generator)[0]
                trials = _example_inputs(model, spec.name, 3, generator) if check else []
                for fmt in formats:
                    path = tmp / f"{spec.name}{SUFFIXES[fmt]}"
                    logger.info("exporting %s as %s", spec.name, fmt)
                    if built:
                        float_path = tmp / f"{IMAGE_GRAPH}{SUFFIXES[fmt]}"
                        write = _write_onnx_uint8 if fmt == "onnx" else _write_torchscript_uint8
                        write(model, float_path, path)
                    elif fmt == "onnx":
                        _write_onnx(spec, example, path, opset)
                    else:
                        _write_torchscript(spec, example, path)
                    if check:
                        diffs = _check(spec, fmt, path, trials)
                        result.max_abs_diff.setdefault(fmt, {})[spec.name] = diffs
                        worst = max(diffs, key=diffs.get)
                        if not diffs[worst] <= atol:
                            raise ExportError(
                                f"{spec.name}.{fmt}: output {worst} differs from eager PyTorch by "
                                f"{diffs[worst]:.3g} (> atol {atol:g}); the graph is not written"
                            )
            model.tokenizer.save(tmp / "tokenizer.json")
            write_json(tmp / "preprocessing.json", preprocessing_contract(model))
            write_text(tmp / "MODEL_CARD.md", model_card(model, metadata, formats, source))
            from maco_cxr._version import __version__
            from maco_cxr.hub import file_sha256

            digests = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
            model_config = config_to_dict(model.config)
            model_config["text"]["tokenizer"] = None  # tokenizer.json sits next to the graphs
            write_json(
                tmp / "export.json",
                {
                    "format_version": EXPORT_FORMAT_VERSION,
                    "maco_cxr_version": __version__,
                    "torch_version": torch.__version__,
                    "onnx_opset": opset if "onnx" in formats else None,
                    "source": source,
                    "model": model_config,
                    "graphs": {
                        spec.name: {
                            "files": {fmt: f"{spec.name}{SUFFIXES[fmt]}" for fmt in formats},
                            "inputs": list(spec.inputs),
                            "outputs": list(spec.outputs),
                        }
                        for spec in specs
                    },
                    "check": {
                        "atol": atol,
                        "batch": 3,
                        "max_abs_diff": result.max_abs_diff,
                        f"{IMAGE_UINT8_GRAPH}_sizes": [
                            list(hw) for hw in _uint8_check_sizes(model.config.vision.img_size)
                        ],
                    }
                    if check
                    else None,
                    "sha256": digests,
                },
            )
    finally:
        model.train(was_training)
    result.files = sorted([*digests, "export.json"])
    return result
