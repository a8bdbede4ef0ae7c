"""`zse-sbir export`: write a trained model folder as the content of its Hub repo (weights,
configs, remote code, model card, licence), after checking the eval JSON belongs to its weights.

    zse-sbir export --model runs/offline-cpu/best --eval results.json --out hub_card/

The exported folder loads with `AutoModel.from_pretrained(...)` with this package installed,
and with `trust_remote_code=True` without it; so do its pipelines (`"image-feature-extraction"`,
`"sketch-based-image-retrieval"`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..configuration_zse import check_default_ranking
from ..loading import ModelLoadError, load_model, weights_fingerprint
from ..model_summary import find_training_summary, human_size, offline_data_stats
from .errors import HubError, one_line
from .eval_json import load_eval_results
from .model_card import ExportInfo, render_card, render_license, validate_card
from .repo_files import (
    AUTO_MAP,
    CUSTOM_PIPELINES,
    DEFAULT_REPO_ID,
    EXPORTED_FILES,
    OPTIONAL_FILES,
    PACKAGE_DIR,
    REMOTE_CODE_FILES,
    list_upload_files,
)

_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
_DTYPE_NAMES = {torch.float16: "float16", torch.float32: "float32", torch.bfloat16: "bfloat16"}


def probe_images():
    """A drawn sketch and a cut-out 'photo' (RGBA), deterministic, for export checks."""
    from PIL import Image, ImageDraw

    sketch = Image.new("RGB", (160, 120), "white")
    d = ImageDraw.Draw(sketch)
    d.rectangle([40, 50, 120, 105], outline="black", width=3)
    d.polygon([(35, 52), (80, 15), (125, 52)], outline="black", width=3)
    d.rectangle([70, 75, 90, 105], outline="black", width=2)
    photo = Image.new("RGBA", (140, 100), (0, 0, 0, 0))
    d = ImageDraw.Draw(photo)
    for i in range(30):
        d.ellipse([10 + i, 10 + i // 2, 130 - i, 90 - i // 2], fill=(200 - 5 * i, 80 + 3 * i, 40 + 4 * i, 255))
    return sketch, photo


def _probe_embeddings(model, processor) -> torch.Tensor:
    """`[2, D]` [Ret] embeddings of the probe sketch and photo."""
    sketch, photo = probe_images()
    inputs = processor(sketches=[sketch], photos=[photo], return_tensors="pt")
    pixels = torch.cat([inputs["sketch_pixel_values"], inputs["photo_pixel_values"]])
    with torch.no_grad():
        return model.get_image_features(pixels.float()).ret_embeds.float()


def _source_dtype(model_dir: Path) -> torch.dtype:
    try:
        name = json.loads((model_dir / "config.json").read_text()).get("dtype") or "float32"
    except (OSError, json.JSONDecodeError):
        name = "float32"
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


def _load_source(model_dir: Path):
    """The ZseModel (fp32) and processor of a trained model folder (never a bare backbone)."""
    from ..processing_zse import ZseProcessor

    if not (model_dir / "config.json").is_file():
        raise HubError(f"not a model folder (no config.json): {model_dir}")
    try:
        model, image_processor, _ = load_model(model_dir, strict=True)
    except ModelLoadError as err:
        raise HubError(str(err)) from None
    return model, ZseProcessor(image_processor=image_processor)


def export(model_dir: str | os.PathLike, eval_json: str | os.PathLike, out_dir: str | os.PathLike, *,
           dtype: str = "fp16", repo_id: str = DEFAULT_REPO_ID, allow_hash_mismatch: bool = False,
           default_ranking: str | None = None, eval_val: str | os.PathLike | None = None) -> Path:
    """Write the Hub repo content of a trained model folder to `out_dir`.

    Args:
        model_dir: a `save_pretrained` folder of a [`ZseModel`] (plus its processor).
        eval_json: the `zse-sbir eval --out` JSON of that model; the card's metric values
            are read from it.
        out_dir: the folder to fill (created; files of earlier exports are replaced, other
            files such as `.git` are left alone).
        dtype: storage dtype of `model.safetensors`: `"fp16"` (default, half the size),
            `"fp32"`, `"bf16"` or `"source"` (that of `model_dir`). The model computes in fp32:
            `config.json` says `"dtype": "float32"`, so the weights are upcast on load.
        repo_id: the Hub repo id used in the card's code examples.
        allow_hash_mismatch: export even when the eval JSON's `model_hash` is not that of
            `model_dir` (the card then says the numbers are unverified).
        default_ranking: the exported config's `default_ranking` (`"ret"` or `"rn@K"`, the
            ranking search follows when none is asked for); None keeps `model_dir`'s.
        eval_val: optionally, a `zse-sbir eval --split val` JSON of the same weights: its cut-out,
            crisp and natural-photo rows join the card's table of what users bring (never the
            `model-index`), and it is written as `eval_results_val.json`.

    Writes `config.json` (`auto_map` for AutoConfig, AutoModel, AutoImageProcessor,
    AutoProcessor; `custom_pipelines` for the `"sketch-based-image-retrieval"` pipeline),
    `model.safetensors`, `processor_config.json`, `preprocessor_config.json`, the remote-code files
    (`REMOTE_CODE_FILES`: model, processors and pipeline), `LICENSE.md` and `README.md` (the model card).

    Returns:
        `out_dir` as a `Path`.

    Raises:
        HubError: bad inputs, weights that do not fit, or a model-hash mismatch.
    """
    from huggingface_hub.utils import validate_repo_id

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    try:
        validate_repo_id(repo_id)
    except Exception as err:  # HFValidationError
        raise HubError(f"bad repo id {repo_id!r}: {err}") from None
    if dtype not in (*_DTYPES, "source"):
        raise HubError(f"dtype must be one of {[*_DTYPES, 'source']}, got {dtype!r}")
    if default_ranking is not None:
        try:
            check_default_ranking(default_ranking)
        except ValueError as err:
            raise HubError(str(err)) from None
    evals = [(load_eval_results(eval_json), eval_json)]  # the card's headline eval, then the validation one
    if eval_val is not None:
        evals.append((load_eval_results(eval_val), eval_val))
        if evals[1][0].get("split") != "val":
            raise HubError(f"{eval_val} is an eval of split {evals[1][0].get('split')!r}; --eval-val takes a "
                           "`zse-sbir eval --split val` JSON")
    storage = _source_dtype(model_dir) if dtype == "source" else _DTYPES[dtype]
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no per-step loading/saving bars
    try:
        return _export(model_dir, evals, out_dir, storage, repo_id, allow_hash_mismatch, default_ranking)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _export(model_dir: Path, evals: list[tuple[dict, str | os.PathLike]], out_dir: Path, storage: torch.dtype,
            repo_id: str, allow_hash_mismatch: bool, default_ranking: str | None = None) -> Path:
    """`export` of loaded eval payloads: `evals` is `[(payload, path)]`, the test eval first."""
    (payload, eval_json), *extra = evals
    model, processor = _load_source(model_dir)
    if default_ranking is not None:
        model.config.default_ranking = default_ranking

    digest = weights_fingerprint(model, short=True)
    verified = all(data.get("model_hash") == digest for data, _ in evals)
    for data, path in evals:
        claimed = data.get("model_hash")
        if claimed != digest and not allow_hash_mismatch:
            raise HubError(f"{path} was computed for model_hash {claimed!r}, but {model_dir} has {digest!r}: "
                           "re-run `zse-sbir eval` on this model (or pass --allow-hash-mismatch)")
        used = data.get("rerank_ret_weight")
        if used is not None and float(used) != model.config.rerank_ret_weight:
            raise HubError(f"{path} scored the re-rank with rerank_ret_weight={used}, but {model_dir}'s config has "
                           f"{model.config.rerank_ret_weight}: its rn numbers would not describe the exported model "
                           "(re-run `zse-sbir eval` without --rerank-ret-weight, or set the config's value)")
    reference = _probe_embeddings(model, processor)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp_name:
        tmp = Path(tmp_name)
        model.to(storage)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        processor.image_processor.save_pretrained(tmp)
        for name in REMOTE_CODE_FILES:
            shutil.copyfile(PACKAGE_DIR / name, tmp / name)
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = "float32"  # compute dtype: fp16 files are upcast on load
        config["auto_map"] = {**config.get("auto_map", {}), **AUTO_MAP}
        config["custom_pipelines"] = {**config.get("custom_pipelines", {}), **CUSTOM_PIPELINES}
        backbone = config.get("backbone_config") or {}
        if os.path.isabs(backbone.get("_name_or_path") or ""):  # a folder of the exporting machine
            backbone["_name_or_path"] = Path(backbone["_name_or_path"]).name
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if not (tmp / "model.safetensors").is_file():
            raise HubError("save_pretrained wrote a sharded checkpoint; expected one model.safetensors")

        # the written files reload to the same weights; record the storage rounding
        from ..modeling_zse import ZseModel

        reloaded = ZseModel.from_pretrained(tmp, dtype=torch.float32).eval()
        stored = model.state_dict()
        for key, value in reloaded.state_dict().items():
            if not torch.equal(value, stored[key].float()):
                raise HubError(f"exported weight {key} does not reload unchanged")
        diff = float((_probe_embeddings(reloaded, processor) - reference).abs().max())
        info = ExportInfo(
            repo_id=repo_id,
            storage_dtype=_DTYPE_NAMES.get(storage, str(storage)),
            n_params=sum(p.numel() for p in reloaded.parameters()),
            probe_max_abs_diff=diff,
            model_hash=digest,
            hash_verified=verified,
            training=find_training_summary([model_dir, model_dir.parent]),
            data_stats=offline_data_stats(),
        )
        (tmp / "LICENSE.md").write_text(render_license())
        text = render_card(reloaded.config, payload, info, [data for data, _ in extra])
        validate_card(text)
        (tmp / "README.md").write_text(text)
        shutil.copyfile(eval_json, tmp / "eval_results.json")  # the card's numbers, for the demo and users
        for _, path in extra:  # the validation eval
            shutil.copyfile(path, tmp / "eval_results_val.json")
        if (model_dir / "training_summary.json").is_file():
            shutil.copyfile(model_dir / "training_summary.json", tmp / "training_summary.json")

        out_dir.mkdir(exist_ok=True)
        for name in (*EXPORTED_FILES, *OPTIONAL_FILES, "__pycache__"):
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for path in sorted(tmp.iterdir()):
            if path.name not in (*EXPORTED_FILES, *OPTIONAL_FILES):
                raise HubError(f"unexpected file written by save_pretrained: {path.name}")
            os.replace(path, out_dir / path.name)
            os.chmod(out_dir / path.name, 0o644)  # safetensors writes 0600
    return out_dir


def export_main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir export`: write the Hub repo content (weights, code, model card) of a model."""
    p = argparse.ArgumentParser(prog="zse-sbir export", description=export_main.__doc__)
    p.add_argument("--model", required=True, help="trained model folder (save_pretrained output)")
    p.add_argument("--eval", required=True, dest="eval_json", help="`zse-sbir eval --out` JSON of that model")
    p.add_argument("--eval-val", default=None, metavar="VAL_JSON",
                   help="a `zse-sbir eval --split val` JSON of that model: its cut-out, crisp and natural-photo "
                        "rows join the card's table (saved as eval_results_val.json)")
    p.add_argument("--out", default="hub_card", help="output folder (default: hub_card)")
    p.add_argument("--dtype", default="fp16", choices=[*_DTYPES, "source"],
                   help="storage dtype of model.safetensors (default fp16; the model computes in fp32)")
    p.add_argument("--repo", default=DEFAULT_REPO_ID, help=f"repo id shown in the card (default {DEFAULT_REPO_ID})")
    p.add_argument("--allow-hash-mismatch", action="store_true",
                   help="export although the eval JSON was computed for other weights")
    p.add_argument("--default-ranking", default=None, metavar="RANKING",
                   help="the ranking search follows by default: 'ret' or 'rn@K' (default: the model config's)")
    args = p.parse_args(argv)
    try:
        out = export(args.model, args.eval_json, args.out, dtype=args.dtype, repo_id=args.repo,
                     allow_hash_mismatch=args.allow_hash_mismatch, default_ranking=args.default_ranking,
                     eval_val=args.eval_val)
    except (HubError, OSError, ValueError) as err:
        print(f"zse-sbir export: error: {one_line(err)}", file=sys.stderr)
        return 1
    for name, size in list_upload_files(out):
        print(f"{human_size(size):>10}  {name}")
    print(f"wrote {out}")
    return 0


__all__ = ["ExportInfo", "export", "export_main", "probe_images"]
