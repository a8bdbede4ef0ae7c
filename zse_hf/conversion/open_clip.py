"""Convert an open_clip ViT image tower into a stock ``transformers.CLIPVisionModel`` folder.

``zse-sbir convert-backbone --from-open-clip CHECKPOINT --out DIR [--model-name ViT-B-16]
[--act quick_gelu|gelu] [--heads N]``

CHECKPOINT is a local file: ``.safetensors``, or anything ``torch.load(weights_only=True)``
reads (a bare state dict, or a training checkpoint with a ``state_dict`` / ``model`` entry,
``module.`` prefixes allowed), or OpenAI's original TorchScript ``.pt``. Keys may carry the
``visual.`` prefix (a full CLIP state dict; the text tower is ignored) or not (the image tower
alone). When CHECKPOINT is not a file and the ``[openclip]`` extra is importable, it is an
open_clip *pretrained* tag (``openai``, ``laion2b_s34b_b88k``, ...) or a path that open_clip
resolves, for ``--model-name`` (or an ``hf-hub:ORG/NAME`` open_clip model); open_clip then
fetches the weights. Nothing here imports
open_clip outside that branch.

Key mapping (open_clip ``visual.*`` -> ``CLIPVisionModel``; transformers-5 names)::

    conv1.weight                       -> embeddings.patch_embedding.weight
    class_embedding                    -> embeddings.class_embedding
    positional_embedding               -> embeddings.position_embedding.weight
    ln_pre.{weight,bias}               -> pre_layrnorm.*
    transformer.resblocks.i.ln_1       -> encoder.layers.i.layer_norm1
    ...attn.in_proj_{weight,bias}      -> ...self_attn.{q,k,v}_proj (split in thirds, q k v)
    ...attn.out_proj                   -> ...self_attn.out_proj
    ...ln_2                            -> ...layer_norm2
    ...mlp.c_fc / mlp.c_proj           -> ...mlp.fc1 / mlp.fc2
    ln_post                            -> post_layernorm
    proj [width, out]                  -> visual_projection.weight [out, width] (transposed)

Both compute the same function: open_clip's pooled output is ``ln_post(x)[:, 0] @ proj`` (the
default ``final_ln_after_pool=False``, ``pool_type='tok'``), transformers' is
``post_layernorm(last_hidden_state[:, 0])`` then ``visual_projection``. LayerNorm eps 1e-5 in
both. Variants with other parameters (layer scale ``ls_1``, ``ln_attn``, attention pooling,
timm trunks, ResNets) are refused with the offending keys.

Output folder:

* ``config.json`` + ``model.safetensors``: a ``CLIPVisionModel`` (float32), so
  ``AutoModel`` / ``ZseModel.from_backbone(DIR)`` load it with no missing or unexpected keys.
* ``visual_projection.safetensors``: the optional projection head, one tensor ``weight``
  ``[projection_dim, hidden_size]`` (``config.projection_dim`` is set to match);
  :func:`load_with_projection` builds a ``CLIPVisionModelWithProjection`` from the folder.
  (``CLIPVisionModelWithProjection.from_pretrained(DIR)`` alone would leave it random.)
* ``preprocessor_config.json``: a ``CLIPImageProcessor`` setup (OpenAI mean/std, or
  open_clip's own when it loaded the model).
* ``zse_conversion.json``: source, activation and why, inferred shapes, parity.

Activation: open_clip uses QuickGELU for OpenAI's weights and for ``*-quickgelu`` model names,
exact GELU otherwise; the shapes do not tell them apart. ``--act`` overrides; the default is
``quick_gelu`` for a ``-quickgelu`` name, the ``openai`` tag, OpenAI's TorchScript file or a
checkpoint path containing ``openai``, and ``gelu`` otherwise (open_clip's own module decides when
open_clip loaded the model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MANIFEST_NAME = "zse_conversion.json"
PROJECTION_FILE = "visual_projection.safetensors"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("quick_gelu", "gelu")
#: Parity tolerance of the self-check: max abs difference of the pooled features (and
#: projection), relative to the reference's largest magnitude when that exceeds 1 (fp32).
PARITY_TOL = 1e-4
#: open_clip head widths that are not 64 (``width // head_width`` heads), by model-name prefix.
_HEAD_WIDTHS = {"ViT-H-": 80, "ViT-g-": 88, "ViT-bigG-": 104, "ViT-e-": 112}
_BLOCK_KEYS = {
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
}
_TOP_KEYS = {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias",
             "ln_post.weight", "ln_post.bias"}


class ConversionError(ValueError):
    """The checkpoint is not a plain open_clip ViT image tower."""


# ----------------------------------------------------------------------------- reading


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a local checkpoint into a flat ``{key: tensor}`` dict.

    Handles ``.safetensors``, ``torch.load(weights_only=True)`` files (unwrapping
    ``state_dict`` / ``model`` / ``module`` entries and ``module.`` / ``_orig_mod.`` key
    prefixes) and OpenAI's TorchScript ``.pt`` archives.

    Returns:
        ``(state, info)``; ``info["torchscript"]`` is True for a TorchScript archive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    info = {"torchscript": False}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    elif _is_torchscript(path):  # OpenAI's original release
        obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        info["torchscript"] = True
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ConversionError(f"{path}: no state dict found (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            for prefix in ("module.", "_orig_mod."):
                k = k[len(prefix):] if k.startswith(prefix) else k
            state[k] = v
    return state, info


def visual_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors, keys without the ``visual.`` prefix, checked for layout.

    Raises:
        ConversionError: a required key is missing or an unsupported one is present.
    """
    if any(k.startswith("visual.") for k in state):
        visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    else:
        visual = dict(state)
    if any(k.startswith("trunk.") for k in visual):
        raise ConversionError("a timm-trunk image tower (visual.trunk.*) is not supported; only open_clip's own ViT")
    if "attnpool.c_proj.weight" in visual or "layer1.0.conv1.weight" in visual:
        raise ConversionError("a ResNet image tower (ModifiedResNet) is not supported; only ViTs")
    missing = sorted(_TOP_KEYS - set(visual))
    if missing:
        raise ConversionError(f"not an open_clip ViT image tower: missing {missing}")
    blocks = sorted({int(m.group(1)) for k in visual if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError(f"transformer.resblocks are missing or not numbered 0..N-1: {blocks[:5]}...")
    expected = set(_TOP_KEYS) | {"proj"} | {f"transformer.resblocks.{i}.{k}" for i in blocks for k in _BLOCK_KEYS}
    unknown = sorted(set(visual) - expected)
    if unknown:
        raise ConversionError(
            f"unsupported open_clip ViT variant (extra parameters: {unknown[:6]}{'...' if len(unknown) > 6 else ''}); "
            "layer scale, ln_attn / scale_fc, attention pooling and conv biases have no CLIPVisionModel equivalent"
        )
    missing = sorted(expected - {"proj"} - set(visual))
    if missing:
        raise ConversionError(f"incomplete image tower: missing {missing[:6]}")
    return visual


# ----------------------------------------------------------------------------- shapes and options


def default_heads(width: int, model_name: str | None = None) -> int:
    """Attention heads: ``width // head_width``, head width 64 unless the open_clip model name
    says otherwise (ViT-H 80, ViT-g 88, ViT-bigG 104, ViT-e 112)."""
    head_width = 64
    if model_name:
        name = model_name.split("/")[-1]
        head_width = next((w for p, w in _HEAD_WIDTHS.items() if name.startswith(p)), 64)
    return max(1, width // head_width)


def default_act(model_name: str | None = None, pretrained: str | None = None,
                checkpoint: str | os.PathLike | None = None, torchscript: bool = False) -> tuple[str, str]:
    """``(act, reason)``: ``quick_gelu`` for ``*-quickgelu`` names and OpenAI weights, else ``gelu``."""
    if model_name and model_name.lower().endswith("-quickgelu"):
        return "quick_gelu", f"model name {model_name!r} ends in -quickgelu"
    if pretrained and pretrained.lower() == "openai":
        return "quick_gelu", "OpenAI pretrained weights"
    if torchscript:
        return "quick_gelu", "OpenAI TorchScript checkpoint"
    tail = "/".join(Path(checkpoint).parts[-4:]) if checkpoint is not None else ""
    if "openai" in tail.lower():  # e.g. a file in the HF cache of timm/vit_base_patch16_clip_224.openai
        return "quick_gelu", f"checkpoint path ...{tail!r} mentions openai"
    return "gelu", "open_clip default for non-OpenAI weights (pass --act quick_gelu for OpenAI weights)"


def vision_config_from_state(visual: dict[str, torch.Tensor], heads: int | None = None,
                             act: str = "quick_gelu", model_name: str | None = None):
    """A ``CLIPVisionConfig`` inferred from the tower's shapes.

    width = ``conv1.weight.shape[0]``, patch = ``conv1.weight.shape[-1]``, layers = number of
    resblocks, mlp width = ``c_fc.weight.shape[0]``, image size = patch * sqrt(positions - 1),
    projection_dim = ``proj.shape[1]`` (width if absent), heads as given or by
    :func:`default_heads`.
    """
    from transformers import CLIPVisionConfig

    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    conv = visual["conv1.weight"]  # [W, 3, p, p]
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    if conv.shape[-2] != patch:
        raise ConversionError(f"non-square patches {tuple(conv.shape[-2:])} are not supported")
    n_pos = visual["positional_embedding"].shape[0]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid != n_pos - 1:
        raise ConversionError(f"{n_pos - 1} patch positions do not form a square grid")
    layers = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
    heads = heads or default_heads(width, model_name)
    if width % heads:
        raise ConversionError(f"width {width} is not divisible by {heads} heads")
    proj = visual.get("proj")
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        projection_dim=proj.shape[1] if proj is not None else width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_channels=channels,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act=act,
        layer_norm_eps=1e-5,
    )


def convert_state_dict(visual: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Rename/split the tower's tensors (float32) for a ``CLIPVisionModel``.

    Returns:
        ``(tower_state, projection)``: ``projection`` is the ``visual_projection.weight``
        ``[out, width]`` (``proj.T``) or None when the checkpoint has no ``proj``.
    """
    v = {k: t.detach().to(torch.float32) for k, t in visual.items()}
    sd = {
        "embeddings.patch_embedding.weight": v["conv1.weight"],
        "embeddings.class_embedding": v["class_embedding"],
        "embeddings.position_embedding.weight": v["positional_embedding"],
        "pre_layrnorm.weight": v["ln_pre.weight"],
        "pre_layrnorm.bias": v["ln_pre.bias"],
        "post_layernorm.weight": v["ln_post.weight"],
        "post_layernorm.bias": v["ln_post.bias"],
    }
    n_layers = len({k.split(".")[2] for k in v if k.startswith("transformer.resblocks.")})
    for i in range(n_layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        q, k, w = v[src + "attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, wb = v[src + "attn.in_proj_bias"].chunk(3, dim=0)
        sd.update({
            dst + "layer_norm1.weight": v[src + "ln_1.weight"],
            dst + "layer_norm1.bias": v[src + "ln_1.bias"],
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k, dst + "self_attn.k_proj.bias": kb,
            dst + "self_attn.v_proj.weight": w, dst + "self_attn.v_proj.bias": wb,
            dst + "self_attn.out_proj.weight": v[src + "attn.out_proj.weight"],
            dst + "self_attn.out_proj.bias": v[src + "attn.out_proj.bias"],
            dst + "layer_norm2.weight": v[src + "ln_2.weight"],
            dst + "layer_norm2.bias": v[src + "ln_2.bias"],
            dst + "mlp.fc1.weight": v[src + "mlp.c_fc.weight"],
            dst + "mlp.fc1.bias": v[src + "mlp.c_fc.bias"],
            dst + "mlp.fc2.weight": v[src + "mlp.c_proj.weight"],
            dst + "mlp.fc2.bias": v[src + "mlp.c_proj.bias"],
        })
    sd = {k: t.contiguous() for k, t in sd.items()}
    proj = v.get("proj")
    return sd, (proj.T.contiguous() if proj is not None else None)


def build_model(visual: dict[str, torch.Tensor], config):
    """``(CLIPVisionModel, projection nn.Linear | None)`` holding the converted weights, eval mode."""
    from transformers import CLIPVisionModel

    sd, proj = convert_state_dict(visual)
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    model.load_state_dict(sd, strict=True, assign=True)
    emb = model.embeddings  # non-persistent buffer, still on meta
    emb.register_buffer("position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ConversionError(f"tensors left uninitialised: {on_meta[:5]}")
    head = None
    if proj is not None:
        head = nn.Linear(config.hidden_size, proj.shape[0], bias=False)
        with torch.no_grad():
            head.weight.copy_(proj)
    return model.eval(), head


# ----------------------------------------------------------------------------- reference and parity


def reference_forward(visual: dict[str, torch.Tensor], pixel_values: torch.Tensor, heads: int,
                      act: str = "quick_gelu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """open_clip's ``VisionTransformer.forward`` rebuilt from torch modules on the raw tensors.

    Args:
        visual: the tower's open_clip state dict (no ``visual.`` prefix).
        pixel_values: ``[B, 3, H, W]`` normalised images, H = W = the tower's image size.
        heads: attention heads; act: ``quick_gelu`` or ``gelu``.

    Returns:
        ``(pooled [B, width], image_embeds [B, out] or None)``: ``ln_post(x)[:, 0]`` and
        ``pooled @ proj``.
    """
    v = {k: t.detach().float() for k, t in visual.items()}
    width, patch = v["conv1.weight"].shape[0], v["conv1.weight"].shape[-1]

    def ln(prefix):
        m = nn.LayerNorm(width)
        m.load_state_dict({"weight": v[prefix + ".weight"], "bias": v[prefix + ".bias"]})
        return m

    x = F.conv2d(pixel_values.float(), v["conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([v["class_embedding"].expand(x.shape[0], 1, width), x], dim=1) + v["positional_embedding"]
    x = ln("ln_pre")(x)
    n_layers = len({k.split(".")[2] for k in v if k.startswith("transformer.resblocks.")})
    gelu = (lambda t: t * torch.sigmoid(1.702 * t)) if act == "quick_gelu" else F.gelu
    for i in range(n_layers):
        p = f"transformer.resblocks.{i}."
        attn = nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({k: v[p + "attn." + k] for k in
                              ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
        h = ln(p + "ln_1")(x)
        x = x + attn(h, h, h, need_weights=False)[0]
        h = ln(p + "ln_2")(x)
        x = x + F.linear(gelu(F.linear(h, v[p + "mlp.c_fc.weight"], v[p + "mlp.c_fc.bias"])),
                         v[p + "mlp.c_proj.weight"], v[p + "mlp.c_proj.bias"])
    pooled = ln("ln_post")(x)[:, 0]
    return pooled, (pooled @ v["proj"] if "proj" in v else None)


@torch.no_grad()
def parity(model, head, reference: tuple[torch.Tensor, torch.Tensor | None], pixel_values: torch.Tensor) -> float:
    """Max abs difference between the converted model's ``pooler_output`` (and projection) on
    ``pixel_values [B, 3, H, W]`` and a reference ``(pooled [B, W], image_embeds [B, out] | None)``."""
    pooled = model(pixel_values=pixel_values).pooler_output
    diff = (pooled - reference[0]).abs().max().item()
    if head is not None and reference[1] is not None:
        diff = max(diff, (head(pooled) - reference[1]).abs().max().item())
    return diff


# ----------------------------------------------------------------------------- open_clip names


def _from_open_clip_package(model_name: str, pretrained: str | None):
    """Load through open_clip (lazy import). Returns ``(visual_state, act, heads, mean, std, forward)``."""
    try:
        import open_clip
    except Exception as err:  # noqa: BLE001 - ImportError, or torchvision failing beside this torch
        raise ConversionError(
            f"{pretrained or model_name!r} is not a file, and open_clip is not importable "
            f"({type(err).__name__}: {err}); "
            "pass a local checkpoint file, or install `zse-sbir[openclip]` with a matching torch/torchvision pair"
        ) from err
    model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu").eval()
    visual = model.visual
    if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
        raise ConversionError(f"{model_name}: not an open_clip VisionTransformer ({type(visual).__name__})")
    block = visual.transformer.resblocks[0]
    act = "quick_gelu" if type(block.mlp.gelu).__name__ == "QuickGELU" else "gelu"
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD))

    return visual.state_dict(), act, block.attn.num_heads, mean, std, visual  # visual(x): [B, out]


# ----------------------------------------------------------------------------- conversion


def load_visual_projection(folder: str | os.PathLike) -> nn.Linear | None:
    """The projection head ``Linear(hidden_size -> projection_dim, bias=False)`` saved beside a
    converted tower, or None if the folder has none."""
    from safetensors.torch import load_file

    path = Path(folder) / PROJECTION_FILE
    if not path.is_file():
        return None
    weight = load_file(str(path))["weight"]  # [out, width]
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def load_with_projection(folder: str | os.PathLike):
    """A ``CLIPVisionModelWithProjection`` from a converted folder (tower + projection head);
    its ``image_embeds [B, projection_dim]`` equal open_clip's ``encode_image`` output."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    tower = CLIPVisionModel.from_pretrained(folder)
    head = load_visual_projection(folder)
    if head is None:
        raise FileNotFoundError(f"{folder} has no {PROJECTION_FILE}")
    model = CLIPVisionModelWithProjection(tower.config)
    model.vision_model.load_state_dict(tower.state_dict())
    model.visual_projection.load_state_dict(head.state_dict())
    return model.eval()


def _preprocessor_config(image_size: int, mean, std) -> dict:
    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(mean),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(std),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def convert(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, model_name: str | None = None,
            act: str | None = None, heads: int | None = None, check: bool = True) -> dict:
    """Convert an open_clip ViT image tower into a ``CLIPVisionModel`` folder.

    Args:
        checkpoint: a local checkpoint file, or (open_clip installed) a pretrained tag for
            ``model_name``, or an ``hf-hub:ORG/NAME`` open_clip model.
        out_dir: destination folder (created; same-named files are overwritten).
        model_name: open_clip model name (``ViT-B-16``, ``ViT-L-14-quickgelu``, ...): picks the
            head count and the default activation; required for the open_clip path.
        act: ``quick_gelu`` or ``gelu``; default by :func:`default_act`.
        heads: attention heads; default by :func:`default_heads`.
        check: compare the converted model with the reference forward (open_clip's own model
            when open_clip loaded it) on 2 random images at the tower's size.

    Returns:
        the manifest dict (also written to ``zse_conversion.json``): ``folder``, ``config``
        fields, ``act``/``act_reason``, ``parity_max_abs`` (None when ``check=False``), ...
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    mean, std, oc_forward = OPENAI_MEAN, OPENAI_STD, None
    if Path(checkpoint).is_file():
        state, info = load_checkpoint(checkpoint)
        visual = visual_state_dict(state)
        act_reason = "--act"
        if act is None:
            act, act_reason = default_act(model_name, None, checkpoint, info["torchscript"])
        source = {"file": str(Path(checkpoint).resolve()), "bytes": Path(checkpoint).stat().st_size}
    else:
        pretrained = str(checkpoint)
        if pretrained.startswith("hf-hub:"):  # an open_clip Hub model: name and weights in one
            model_name, pretrained = pretrained, None
        if not model_name:
            raise ConversionError(f"{checkpoint!r} is not a file; to let open_clip fetch it, give --model-name too")
        state, oc_act, oc_heads, mean, std, oc_forward = _from_open_clip_package(model_name, pretrained)
        visual = visual_state_dict(state)
        heads = heads or oc_heads
        act_reason = "--act" if act else "open_clip's module"
        if act and act != oc_act:
            print(f"warning: --act {act} differs from open_clip's {oc_act}", file=sys.stderr)
        act = act or oc_act
        source = {"open_clip": {"model_name": model_name, "pretrained": pretrained}}
    config = vision_config_from_state(visual, heads=heads, act=act, model_name=model_name)
    config.architectures = ["CLIPVisionModel"]
    model, head = build_model(visual, config)
    diff = scale = None
    if check:
        torch.manual_seed(0)
        x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
        with torch.no_grad():
            if oc_forward is not None:  # open_clip's own module: projected embeddings only
                ref = (None, oc_forward(x))
                pooled = model(pixel_values=x).pooler_output
                diff = ((head(pooled) if head is not None else pooled) - ref[1]).abs().max().item()
            else:
                ref = reference_forward(visual, x, config.num_attention_heads, act)
                diff = parity(model, head, ref, x)
            scale = max(1.0, *(r.abs().max().item() for r in ref if r is not None))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proj_path = out / PROJECTION_FILE
    if head is not None:
        from safetensors.torch import save_file

        save_file({"weight": head.weight.detach().contiguous()}, str(proj_path), metadata={"format": "pt"})
    elif proj_path.exists():
        proj_path.unlink()
    preprocessor = _preprocessor_config(config.image_size, mean, std)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    manifest = {
        "format": 1,
        "converter": "zse_hf.conversion.open_clip",
        "source": source,
        "model_name": model_name,
        "act": act,
        "act_reason": act_reason,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "patch_size": config.patch_size,
        "image_size": config.image_size,
        "projection_dim": config.projection_dim if head is not None else None,
        "projection_file": PROJECTION_FILE if head is not None else None,
        "parity_max_abs": diff,
        "parity_scale": scale,
        "parity_ok": None if diff is None else diff <= PARITY_TOL * scale,
        "parity_reference": None if diff is None else ("open_clip" if oc_forward is not None else "reference_forward"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["folder"] = str(out)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``zse-sbir convert-backbone --from-open-clip CHECKPOINT --out DIR [--model-name NAME]
    [--act quick_gelu|gelu] [--heads N] [--no-check]``.

    Returns 0 on success, 1 if the parity self-check exceeds ``PARITY_TOL``, 2 on a bad or
    unreadable checkpoint.
    """
    ap = argparse.ArgumentParser(
        prog="zse-sbir convert-backbone",
        description="Convert an open_clip ViT image tower into a transformers CLIPVisionModel folder "
                    "(+ visual_projection.safetensors).")
    ap.add_argument("--from-open-clip", required=True, metavar="CHECKPOINT",
                    help="local .safetensors/.pt/.bin file; or, with open_clip installed, a pretrained tag "
                         "(openai, laion2b_s34b_b88k, ...) for --model-name, or hf-hub:ORG/NAME")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--model-name", default=None, help="open_clip model name, e.g. ViT-B-16 or ViT-B-16-quickgelu")
    ap.add_argument("--act", choices=ACTIVATIONS, default=None,
                    help="MLP activation (default: quick_gelu for -quickgelu names / OpenAI weights, else gelu)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default: from --model-name, or width/64)")
    ap.add_argument("--no-check", action="store_true", help="skip the parity self-check")
    args = ap.parse_args(argv)
    try:
        man = convert(args.from_open_clip, args.out, model_name=args.model_name, act=args.act,
                      heads=args.heads, check=not args.no_check)
    except (ConversionError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"folder: {man['folder']}")
    print(f"tower: width {man['hidden_size']}, {man['num_hidden_layers']} layers, {man['num_attention_heads']} heads, "
          f"patch {man['patch_size']}, image {man['image_size']}, projection {man['projection_dim']}")
    print(f"act: {man['act']} ({man['act_reason']})")
    if man["parity_max_abs"] is not None:
        print(f"parity vs {man['parity_reference']} (max abs, 2 random images): {man['parity_max_abs']:.2e}")
        if not man["parity_ok"]:
            print(f"error: parity above {PARITY_TOL:g} x {man['parity_scale']:.3g}", file=sys.stderr)
            return 1
    print(f"seconds: {man['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
