"""The eval JSON behind a model card: reading and checking it, and its `model-index` entries."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..model_summary import is_finite, model_modes
from .errors import HubError

# metric key in the eval JSON -> (model-index metric type, display name)
CARD_METRICS = {
    "mAP@all": ("map_at_all", "mAP@all"),
    "mAP@200": ("map_at_200", "mAP@200"),
    "P@100": ("precision_at_100", "P@100"),
    "P@200": ("precision_at_200", "P@200"),
    "acc@1": ("accuracy_at_1", "acc@1"),
    "acc@5": ("accuracy_at_5", "acc@5"),
}
DATASETS = {  # eval `data` prefix -> (model-index dataset type, readable name)
    "offline": ("zse-sbir-offline", "QuickDraw sketches vs Tux Paint photos"),
    "sketchy": ("sketchy-ext", "Sketchy-Ext (25 unseen classes)"),
    "sketchy21": ("sketchy-ext", "Sketchy-Ext (21 unseen classes)"),
    "tuberlin": ("tu-berlin-ext", "TU-Berlin-Ext"),
    "quickdraw": ("quickdraw-ext", "QuickDraw-Ext"),
}


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
        if not isinstance(results[mode], dict) or not is_finite(results[mode].get("mAP@all")):
            raise HubError(f"{path}: results[{mode!r}] has no finite 'mAP@all'")
    return payload


def dataset_info(payload: dict) -> tuple[str, str, str]:
    """(dataset type, readable name, split) of an eval payload; local paths are left out."""
    data = str(payload.get("data", "offline"))
    prefix = data.split(":", 1)[0]
    dtype, name = DATASETS.get(prefix, (prefix or "unknown", prefix or "unknown"))
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

    dtype, name, split = dataset_info(payload)
    out = []
    for mode in model_modes(payload["results"]):
        metrics = payload["results"][mode]
        for key, (mtype, display) in CARD_METRICS.items():
            value = metrics.get(key)
            if not is_finite(value):
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


__all__ = ["CARD_METRICS", "DATASETS", "dataset_info", "eval_results_from_json", "load_eval_results"]
