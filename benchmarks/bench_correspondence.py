"""Can the correspondence term make a model's relation kernel local? A quick probe (validation only).

The encoder (and so [Ret]) stays fixed; the cross-attention and the relation network's pooling
conv are trained with the correspondence term alone (`zse_hf.modeling_zse.correspondence_loss`)
on cached features of warped pseudo-sketch pairs of the *train_fit* photos (the training classes
minus the validation classes). Kernel locality (`zse_hf.evaluation.evaluate_locality`) and
val ret / rn@10 mAP@all are printed before and after, as a table. Nothing is saved: it says what
the term can buy and what it costs the relation MLP (which is not trained here), not a model.

    python benchmarks/bench_correspondence.py --model hub_card --steps 300
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from zse_hf.data import OfflinePhotoDataset, evaluation_set, train_val_split
from zse_hf.evaluation import evaluate, evaluate_locality, warped_pairs
from zse_hf.loading import load_model
from zse_hf.modeling_zse import ZseImageFeatures, correspondence_loss


def _row(name: str, loc: dict, res: dict) -> str:
    lo, hi = loc.get("locality_CI", [float("nan")] * 2)
    return (f"| {name} | {loc['locality']:.3f} [{lo:.3f}, {hi:.3f}] | {loc['identity_baseline']:.3f} | "
            f"{loc['exact']:.3f} | {loc['distinct_best_cells']:.2f} | {res['ret']['mAP@all']:.3f} | "
            f"{res['rn@10']['mAP@all']:.3f} |")


def _cached(feats: ZseImageFeatures) -> ZseImageFeatures:
    """Features made under inference mode, copied into ordinary tensors (usable with autograd)."""
    return ZseImageFeatures(ret_embeds=feats.ret_embeds.clone(), local_tokens=feats.local_tokens.clone(),
                            token_mask=feats.token_mask.clone(), grid_size=feats.grid_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hub_card")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warps", type=int, default=6, help="warped pairs per train_fit photo")
    p.add_argument("--val-sketches", type=int, default=30, help="validation sketches per class")
    args = p.parse_args()

    torch.manual_seed(0)
    model, proc, _ = load_model(args.model)
    ip = getattr(proc, "image_processor", proc)
    fit, _ = train_val_split(seed=0, num_val_classes=10)
    val_q, val_g = evaluation_set("val", max_per_class=args.val_sketches)
    rows = [_row("before", evaluate_locality(model, proc, val_g, n_bootstrap=200),
                 evaluate(model, proc, val_q, val_g, modes=("ret", "rn"), n_bootstrap=0))]

    pairs = warped_pairs(OfflinePhotoDataset(fit), ip.side, model.config.relation_grid, args.warps, seed=123)
    with torch.inference_mode():
        sk = _cached(model.get_image_features(ip.normalize_prepared([q["sketch"] for q in pairs])["pixel_values"]))
        ph = _cached(model.get_image_features(ip.normalize_prepared([q["photo"] for q in pairs])["pixel_values"]))
    targets = torch.as_tensor(np.stack([q["targets"] for q in pairs]))
    params = [*model.cross_attention.parameters(), *model.relation_network.pool_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr)
    rng = np.random.default_rng(0)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.as_tensor(rng.choice(len(pairs), min(args.batch, len(pairs)), replace=False))
        kernel = model.score_pairs(sk.select(idx), ph.select(idx), output_kernel=True).kernel
        loss = correspondence_loss(kernel, targets[idx], getattr(model.config, "correspondence_temperature", 0.1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: correspondence loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    rows.append(_row(f"after {args.steps} steps", evaluate_locality(model, proc, val_g, n_bootstrap=200),
                     evaluate(model, proc, val_q, val_g, modes=("ret", "rn"), n_bootstrap=0)))
    print(f"\n{args.model}: {len(pairs)} warped train_fit pairs; val: {len(val_g)} photos, {len(val_q)} sketches\n")
    print("| kernel | within one cell [95% CI] | same position | exact cell | distinct best cells "
          "| val ret mAP@all | val rn@10 mAP@all |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
