"""What an eval JSON and a training summary say about a model, in one wording: the labels of
ranking modes and baselines, how numbers are printed, and the Markdown the demo page shows.
The model card (`zse_hf.hub`), the demo and `zse-sbir report` all use this module.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
EVAL_FILES = ("eval_results.json", "results.json", "eval.json")  # looked for next to a model, in this order
TRAINING_FILES = ("training_summary.json", "train_config.json")

# baseline key of an eval / report JSON -> its name
BASELINE_NAMES = {
    "chance": "chance (uniform random scores)",
    "raw_pixels_32": "inverted 32x32 raw pixels, cosine",
    "untrained_ret": "untrained model [Ret] (= plain backbone CLS)",
    "head_only": "head-only ablation (frozen backbone + MLP, InfoNCE)",
}


# ----------------------------------------------------------------------------- numbers


def is_finite(x) -> bool:
    """True for a finite int or float (not a bool, None or a string)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def format_metric(x, digits: int = 3) -> str:
    """`x` with `digits` decimals, or `"n/a"` when it is missing or not finite."""
    return f"{x:.{digits}f}" if is_finite(x) else "n/a"


def format_interval(ci, dash: bool = False) -> str:
    """A `[low, high]` interval as `"[0.310, 0.550]"` (`dash`: `"0.310–0.550"`); `""` when malformed."""
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(map(is_finite, ci))):
        return ""
    lo, hi = format_metric(ci[0]), format_metric(ci[1])
    return f"{lo}–{hi}" if dash else f"[{lo}, {hi}]"


def human_size(n: float) -> str:
    """A byte count as `"812 B"`, `"3.4 KB"`, `"47.3 MB"` or `"1.2 GB"`."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------- labels


def model_modes(results: dict) -> list[str]:
    """The model's ranking modes in an eval `results` dict (`"ret"`, `"rn@K"`), in file order."""
    return [k for k in results if k == "ret" or k.startswith("rn@")]


def _rerank_k(mode: str) -> str | None:
    """`"10"` / `"all"` for `"rn@10"` / `"rn@all"` (`"rn"` alone: `"all"`), None for other keys."""
    if mode == "rn":
        return "all"
    return mode[3:] if mode.startswith("rn@") else None


def mode_name(mode: str) -> str:
    """Short row name of a ranking mode or baseline, as in the report table
    (`"ZSE trained, ret"`, `"ZSE trained, rn (K=10)"`, `"chance (uniform random scores)"`)."""
    if mode == "ret":
        return "ZSE trained, ret"
    k = _rerank_k(mode)
    if k is not None:
        return f"ZSE trained, rn (K={k})"
    return BASELINE_NAMES.get(mode, mode)


def mode_description(mode: str, ret_weight: float = 0.0) -> str:
    """How a ranking mode ranks, in words (`"[Ret] + relation re-rank of the top 10"`); for a
    baseline, `"baseline: <its name>"`. `ret_weight`: the re-rank's `rerank_ret_weight` (> 0: the
    order is relation score + that weight x cosine)."""
    if mode == "ret":
        return "[Ret] cosine only"
    k = _rerank_k(mode)
    if k is not None:
        how = f" by relation score + {ret_weight:g} x cosine" if ret_weight else ""
        if k == "all":
            return f"relation network on every photo{how}"
        return f"[Ret] + relation re-rank of the top {k}{how}"
    return f"baseline: {BASELINE_NAMES.get(mode, f'`{mode}`')}"


def results_table(results: dict, *, bold_models: bool = False) -> str:
    """Markdown table `method | mAP@all | 95% CI (class bootstrap) | mAP@200 | P@100 | P@200`
    (and `acc@1` / `acc@5` when any row has them) of a `{mode or baseline: metrics}` dict, in
    dict order; `bold_models` puts the model modes' mAP@all in bold."""
    rows = [r for r in results.values() if isinstance(r, dict)]
    keys = ["mAP@200", "P@100", "P@200"] + [k for k in ("acc@1", "acc@5") if any(is_finite(r.get(k)) for r in rows)]
    head = ["method", "mAP@all", "95% CI (class bootstrap)", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    modes = model_modes(results)
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        main = format_metric(r.get("mAP@all"))
        if bold_models and name in modes:
            main = f"**{main}**"
        cells = [mode_name(name), main, format_interval(r.get("mAP@all_CI")) or "n/a",
                 *(format_metric(r.get(k)) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- files next to a model


def find_eval_json(model: str | os.PathLike) -> Path | None:
    """The eval JSON of a model: `eval_results.json`, `results.json` or `eval.json` in a local
    folder, or `eval_results.json` of a Hub repo (from the network or the local HF cache)."""
    folder = Path(model)
    if folder.is_dir():
        return next((folder / n for n in EVAL_FILES if (folder / n).is_file()), None)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(model), EVAL_FILES[0]))
    except Exception:  # noqa: BLE001 - offline, no such file, not a repo id: not evaluated
        return None


@dataclass
class TrainingSummary:
    """What `zse-sbir train` recorded next to a model: `training_summary.json`, else `train_config.json`."""

    config: dict
    path: Path
    steps: int | None = None
    best_val_map: float | None = None
    extra: dict = field(default_factory=dict)


def find_training_summary(folders: Sequence[str | os.PathLike]) -> TrainingSummary | None:
    """The first `training_summary.json` / `train_config.json` in `folders` (each folder checked
    for both names in that order); None when there is none or it is not JSON."""
    for folder in folders:
        for name in TRAINING_FILES:
            path = Path(folder) / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            if name == "train_config.json":
                return TrainingSummary(config=data, path=path)
            return TrainingSummary(config=data.get("config") or {}, path=path, steps=data.get("global_step"),
                                   best_val_map=data.get("best_val_mAP@all"), extra=data)
    return None


def offline_data_stats() -> dict:
    """Class and photo counts of the bundled offline split (`zse_hf/data`): `train_classes`,
    `train_photos`, `test_classes`, `test_photos`, `unseen_all`; `{}` if unreadable."""
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


# ----------------------------------------------------------------------------- Markdown for the demo


def describe_eval(payload: dict, source: str, fingerprint: str | None = None, card_text: str = "") -> str:
    """Markdown in a visitor's words: how well the model ranks, from an eval JSON (`zse-sbir eval`
    output): each ranking mode's mAP@all with its interval, then the baselines for comparison.

    Args:
        source: the JSON's path; only its file name is shown.
        fingerprint: `zse_hf.loading.weights_fingerprint` of the running model, to say whether
            the JSON's `model_hash` is theirs (or, per `card_text`, that of the checkpoint the
            exported weights came from).
        card_text: the model card next to the model, if any.
    """
    name = Path(source).name
    results = payload.get("results") or {}
    modes = [k for k, v in results.items() if isinstance(v, dict) and "mAP@all" in v]
    if not modes:
        return f"**How well it does:** not measured (`{name}` holds no mAP@all)."
    modes.sort(key=lambda m: (m != "ret", not m.startswith("rn"), m))
    ret_weight = payload.get("rerank_ret_weight") or 0.0
    lines = []
    for mode in modes:
        r = results[mode]
        ci = format_interval(r.get("mAP@all_CI"), dash=True)
        how = mode_description(mode, ret_weight)
        how = f"for comparison, {how[len('baseline: '):]}" if how.startswith("baseline: ") else how
        lines.append(f"- {how}: **{format_metric(r['mAP@all'])}**" + (f" (95% interval {ci})" if ci else ""))
    where = (f"Each of {payload.get('n_queries', '?')} test sketches searched {payload.get('n_gallery', '?')} "
             f"photos (split `{payload.get('split', '?')}` of the `{payload.get('data', '?')}` data, "
             f"{payload.get('image_size', '?')} px).")
    check = ""
    claimed = payload.get("model_hash")
    if claimed and fingerprint:
        if fingerprint.startswith(str(claimed)):
            check = "These numbers were measured on exactly these weights (model hash matches)."
        elif f"`{claimed}`" in card_text and "checked by `zse-sbir export`" in card_text:
            check = ("These numbers were measured on the fp32 checkpoint these weights were exported from "
                     "(checked by `zse-sbir export`).")
        else:
            check = (f"⚠️ The eval was recorded for weights with hash `{claimed}`; these weights differ, so the "
                     "numbers may belong to another checkpoint.")
    return (f"**How well it does** (from `{name}`). {where} The score is the mean average precision: 1 puts "
            "every photo of the sketch's class first.\n" + "\n".join(lines) + "\n\n" + check).strip()


def describe_training(model: str | os.PathLike, payload: dict | None, roots: Sequence[str | os.PathLike] = ()) -> str:
    """Markdown line: what the model was trained on, from the training summary next to the model
    (or next to the model the eval `payload` names, relative to `roots` and the working folder)."""
    folder = Path(model)
    candidates = [folder, folder.parent] if folder.is_dir() else []
    if payload and payload.get("model"):
        evaluated = Path(str(payload["model"]))
        for base in ([evaluated] if evaluated.is_absolute() else [Path(r) / evaluated for r in (*roots, Path.cwd())]):
            candidates += [base, base.parent]
    info = find_training_summary([c for c in candidates if c.is_dir()])
    if info is None:
        if not folder.exists():
            return f"**Trained on:** see the model card of `{model}` on the Hub."
        if (folder / "README.md").is_file():
            return "**Trained on:** see the model card (`README.md` in the model folder)."
        return "**Trained on:** unknown (no `training_summary.json` or `train_config.json` found next to the model)."
    data = str(info.config.get("data", "?"))
    steps = info.steps or info.config.get("max_steps")
    if data == "offline":
        stats = offline_data_stats()
        what = (f"the bundled offline data: Quick, Draw! sketches and hand-reviewed Tux Paint photos of "
                f"{stats.get('train_classes', '?')} training classes; the {stats.get('test_classes', '?')} test "
                "classes (the example sketches) were held out")
    else:
        what = f"`{data}`"
    stage = info.extra.get("relation_stage")
    if isinstance(stage, dict) and stage.get("step"):
        steps = f"{steps or '?'} steps, then {stage['step']} of the relation-head stage, `zse-sbir train-relation`"
    elif steps:
        steps = f"{steps} steps"
    return f"**Trained on:** {what}" + (f" ({steps}" if steps else " (") + f"; from `{Path(info.path).name}`)."


def display_name(model_path: str | os.PathLike) -> str:
    """How a model is named to people, never by a local path: the Hub id it was loaded from, else
    the name in its model card (`model-index` name, else the first `# ` heading), else its folder's
    name."""
    folder = Path(model_path)
    if not folder.exists():
        return str(model_path)  # a Hub id
    card = folder / "README.md"
    text = card.read_text(errors="replace") if card.is_file() else ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("- name:") and stripped[len("- name:"):].strip():
            return stripped[len("- name:"):].strip().strip("'\"")
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return folder.resolve().name


def model_note(model_path: str | os.PathLike, fingerprint: str, trained: bool,
               roots: Sequence[str | os.PathLike] = ()) -> str:
    """The note shown above a demo: which model, what it was trained on, its measured accuracy.

    Args:
        model_path: the folder or Hub id it was loaded from.
        fingerprint: its `zse_hf.loading.weights_fingerprint`.
        trained: False for a backbone wrapped with an untrained head (the note says so).
        roots: folders that relative model paths in the eval JSON are relative to.
    """
    eval_file = find_eval_json(model_path)
    payload = None
    if eval_file is not None:
        try:
            payload = json.loads(eval_file.read_text())
        except (OSError, ValueError):
            payload = None
    card = Path(model_path) / "README.md"
    card_text = card.read_text(errors="replace") if card.is_file() else ""
    head = f"### About the model: {display_name(model_path)}\n"
    if not trained:
        head += ("⚠️ This is a plain backbone wrapped in a **freshly initialised, untrained** ZSE head; relation "
                 "scores are noise and explanations use encoder tokens.\n\n")
    if not isinstance(payload, dict):
        payload = None
    accuracy = (describe_eval(payload, str(eval_file), fingerprint, card_text) if payload is not None else
                "**How well it does:** not measured (no `eval_results.json` or `results.json` next to the model).")
    return head + describe_training(model_path, payload, roots) + "\n\n" + accuracy


__all__ = [
    "BASELINE_NAMES", "EVAL_FILES", "TrainingSummary", "describe_eval", "describe_training", "display_name",
    "find_eval_json", "find_training_summary", "format_interval", "format_metric", "human_size", "is_finite",
    "mode_description", "mode_name", "model_modes", "model_note", "offline_data_stats", "results_table",
]
