"""Weight averaging of trained ZSE models ("model soups", Wortsman et al. 2022): `zse-sbir soup`.

Models fine-tuned from one initialisation (checkpoints of a run, or runs warm-started from the
same model) can often be averaged weight by weight into one model that generalises at least as
well as each of them, at the cost of one model. The averaged model is an ordinary ZSE model
folder (weights, config, processor) plus `soup_summary.json`, which names every ingredient by
path, weight and the sha256 of its weights file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..assets import sha256_file
from ..configuration_zse import ZseConfig
from ..image_processing_zse import ZseImageProcessor
from ..loading import save_model_folder
from ..modeling_zse import ZseModel

WEIGHTS_NAME = "model.safetensors"

# config fields that shape the network or its input; the loss weights and initialiser may differ
ARCHITECTURE_FIELDS = (
    "image_size", "tokenizer_channels", "num_selected_tokens", "cross_attention_heads", "cross_attention_ffn_dim",
    "cross_attention_query_side", "relation_grid", "relation_dim", "relation_mlp_dims", "image_mean", "image_std",
)
BACKBONE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                   "mlp_ratio", "layerscale_value", "use_swiglu_ffn", "apply_layernorm", "out_indices")


class SoupError(ValueError):
    """The ingredients cannot be averaged (missing weights, other architecture, other tensors)."""


def _architecture(config: ZseConfig) -> dict:
    backbone = config.backbone_config
    arch = {k: getattr(config, k, None) for k in ARCHITECTURE_FIELDS}
    arch.update({f"backbone.{k}": getattr(backbone, k, None) for k in BACKBONE_FIELDS})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}


def _weights_file(folder: Path) -> Path:
    path = folder / WEIGHTS_NAME
    if not (folder / "config.json").is_file() or not path.is_file():
        raise SoupError(f"{str(folder)!r} is not a saved ZSE model (needs config.json and {WEIGHTS_NAME})")
    return path


def check_ingredients(folders: Sequence[str | os.PathLike]) -> list[ZseConfig]:
    """Configs of `folders`, after checking that their models can be averaged.

    Raises:
        SoupError: fewer than two folders, a folder without weights or config, a config that
            differs in an architecture field (`ARCHITECTURE_FIELDS`, backbone shape), or weights
            with other tensor names or shapes than the first folder's (dtypes may differ: an
            exported float16 model averages with float32 checkpoints).
    """
    if len(folders) < 2:
        raise SoupError(f"a soup needs at least two models, got {len(folders)}")
    paths = [Path(f) for f in folders]
    configs, reference, ref_arch = [], None, None
    for path in paths:
        weights = _weights_file(path)
        config = ZseConfig.from_pretrained(str(path))
        arch = _architecture(config)
        with safe_open(str(weights), framework="pt") as f:
            layout = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if reference is None:
            reference, ref_arch = layout, arch
        else:
            diff = sorted(k for k in arch if arch[k] != ref_arch[k])
            if diff:
                raise SoupError(f"{str(path)!r} differs from {str(paths[0])!r} in {', '.join(diff)} "
                                f"({', '.join(f'{k}: {arch[k]} vs {ref_arch[k]}' for k in diff[:3])})")
            if layout != reference:
                other = sorted(set(layout) ^ set(reference)) or sorted(k for k in layout if layout[k] != reference[k])
                raise SoupError(f"{str(path)!r} holds other tensors than {str(paths[0])!r}: {other[:5]}")
        configs.append(config)
    return configs


def _normalised(weights: Sequence[float] | None, n: int) -> torch.Tensor:
    """`[n]` float64 weights summing to 1 (uniform for None); SoupError unless n finite
    non-negative weights with a positive sum."""
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    if w.numel() != n or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise SoupError(f"need {n} finite non-negative weights with a positive sum, got {list(weights or [])}")
    return w / w.sum()


def average_weights(folders: Sequence[str | os.PathLike], weights: Sequence[float] | None = None,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """The weighted mean of the models' tensors, `sum_i w_i * theta_i` with `w` normalised to sum 1.

    Args:
        folders: saved ZSE models (checked by :func:`check_ingredients`).
        weights: one non-negative weight per model (default: uniform).

    Returns:
        `{name: tensor}`, every tensor in its saved shape, accumulated in float64 and returned in
        the widest dtype any ingredient stored it in (float16 + float32 -> float32).
    """
    check_ingredients(folders)
    w = _normalised(weights, len(folders))
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path, wi in zip(tqdm(folders, desc="averaging", disable=not progress), w.tolist()):
        with safe_open(str(_weights_file(Path(path))), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                dtypes[name] = torch.promote_types(dtypes.get(name, t.dtype), t.dtype)
                if not t.is_floating_point():  # integer buffers (none today) are taken from the first model
                    total.setdefault(name, t)
                    continue
                acc = t.to(torch.float64) * wi
                total[name] = acc if name not in total else total[name] + acc
    return {k: v.to(dtypes[k]) for k, v in total.items()}


def make_soup(folders: Sequence[str | os.PathLike], weights: Sequence[float] | None = None,
              progress: bool = True) -> ZseModel:
    """A `ZseModel` with the averaged weights of `folders` and the first model's config."""
    state = average_weights(folders, weights, progress=progress)
    model = ZseModel.from_pretrained(str(folders[0]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    parameters = {name for name, _ in model.named_parameters()}
    if unexpected or parameters.intersection(missing):
        raise SoupError(f"averaged weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def save_soup(folders: Sequence[str | os.PathLike], out: str | os.PathLike, weights: Sequence[float] | None = None,
              overwrite: bool = False, progress: bool = True) -> Path:
    """Average `folders` and save the model, its processor and `soup_summary.json` to `out`.

    Written through :func:`~zse_hf.loading.save_model_folder`, so a crash leaves a complete old
    or new folder.

    Raises:
        SoupError: see :func:`check_ingredients`; or `out` exists and `overwrite` is false.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise SoupError(f"{str(out)!r} exists; pass overwrite=True (--overwrite) to replace it")
    model = make_soup(folders, weights, progress=progress)
    summary = {
        "ingredients": [{"model": str(f), "weight": w, "sha256": sha256_file(_weights_file(Path(f)))}
                        for f, w in zip(folders, _normalised(weights, len(folders)).tolist())],
        "method": "uniform weight average" if weights is None else "weighted weight average",
    }
    return save_model_folder(out, model, ZseImageProcessor.from_model_config(model.config), "soup_summary.json",
                             summary)


def main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir soup`: average the weights of models fine-tuned from one initialisation."""
    p = argparse.ArgumentParser(prog="zse-sbir soup", description=main.__doc__)
    p.add_argument("--model", action="append", required=True,
                   help="a saved ZSE model folder (a run's best/ or checkpoint-N/); repeat, at least twice")
    p.add_argument("--weight", action="append", type=float, default=None,
                   help="one weight per --model, in order (default uniform)")
    p.add_argument("--out", required=True, help="folder for the averaged model")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    if args.weight is not None and len(args.weight) != len(args.model):
        p.error(f"got {len(args.weight)} --weight for {len(args.model)} --model")
    try:
        out = save_soup(args.model, args.out, args.weight, overwrite=args.overwrite)
    except SoupError as err:
        p.error(str(err))
    print(f"saved the average of {len(args.model)} models to {out}")
    return 0
