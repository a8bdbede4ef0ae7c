"""`zse-sbir compare`: the mAP@all difference of two rankings, with a paired class-bootstrap interval.

Two rankings of the same queries and gallery (two modes of one `zse-sbir eval` JSON, e.g. `ret`
against `rn@10`, or one mode of two models' JSONs with the same `data_hash`) are compared class by
class: the per-class AP differences are resampled by class, so the interval is that of the
difference itself, far narrower than two separate intervals when the rankings agree on which
classes are hard. It answers "is this validation gain larger than the split can resolve?".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from ..cli_args import at_least
from ..hub.errors import HubError
from ..hub.eval_json import load_eval_results
from .metrics import bootstrap_ci

GALLERIES = {"standard": "results", "all": "results_gallery_all", "natural": "results_natural",
             "crisp": "results_crisp", "instance": "instance_level.split", "instance-all": "instance_level.all"}
_EVAL_FLAG = {"standard": "", "all": " with --gallery all", "natural": " with --natural (--split val or train_fit)",
              "crisp": " with --crisp", "instance": " with --instance",
              "instance-all": " with --instance --gallery all"}
# the unit resampled and the value compared: classes' AP (category level), or photos' acc@1 (the
# instance level: pseudo-sketches of each photo, that photo found first)
_UNIT = {"instance": ("photos", "acc@1", "per_photo_acc@1", "per_photo_queries"),
         "instance-all": ("photos", "acc@1", "per_photo_acc@1", "per_photo_queries")}
_CLASSES = ("classes", "mAP@all", "per_class_AP", "per_class_queries")


def _unit(gallery: str) -> tuple[str, str, str, str]:
    """`(unit, metric, values key, counts key)` of a gallery's rows."""
    return _UNIT.get(gallery, _CLASSES)


def _rows(payload: dict, gallery: str):
    results = payload
    for key in GALLERIES[gallery].split("."):
        results = results.get(key) if isinstance(results, dict) else None
    return results


class CompareError(ValueError):
    """Two eval results that cannot be compared (other data, missing mode or per-class APs)."""


def _mode_results(payload: dict, mode: str, gallery: str, where: str) -> dict:
    """`{"values": {unit: value}, "counts": {unit: queries} | None}` of one mode's rows."""
    results = _rows(payload, gallery)
    if not isinstance(results, dict):
        raise CompareError(f"{where}: no {GALLERIES[gallery]!r} (run `zse-sbir eval`{_EVAL_FLAG[gallery]})")
    unit, _, values, counts = _unit(gallery)
    r = results.get(mode)
    if not isinstance(r, dict) or not isinstance(r.get(values), dict):
        have = ", ".join(k for k, v in results.items() if isinstance(v, dict) and values in v)
        what = "per-class APs" if unit == "classes" else "per-photo acc@1"
        raise CompareError(f"{where}: no {what} for mode {mode!r} (has: {have or 'none'})")
    return {"values": r[values], "counts": r.get(counts)}


def compare_results(a: dict, b: dict, mode_a: str, mode_b: str, gallery: str = "standard", n_bootstrap: int = 10000,
                    seed: int = 0, alpha: float = 0.05, gallery_b: str | None = None) -> dict:
    """mAP@all of ranking B minus ranking A on the same queries, with a paired class bootstrap.

    Args:
        a, b: eval payloads (may be the same dict, for two modes of one run).
        mode_a, mode_b: result keys (`"ret"`, `"rn@10"`, a baseline name).
        gallery: `"standard"`, `"all"` (`--gallery all` results), `"natural"` (the natural
            photos with backgrounds, `zse-sbir eval --natural`) or `"crisp"` (crisp-stroke sketches).
        n_bootstrap, seed, alpha: the class bootstrap (see `metrics.bootstrap_ci`).
        gallery_b: B's rows from another of these (default `gallery`), e.g. `"crisp"` against
            `"standard"`: the same drawings, crisp against bitmap, class by class (the two rows
            must score the same classes).

    Returns:
        `{"a", "b", "difference", "difference_CI", "n_classes", "classes_b_better",
        "classes_a_better", "weights"}`; `a` / `b` are the query-weighted mAP@all over the shared
        classes, `weights` says whether per-class query counts were recorded (else classes weigh
        equally, exact for splits with the same queries per class).
    """
    gallery_b = gallery if gallery_b is None else gallery_b
    for g in (gallery, gallery_b):
        if g not in GALLERIES:
            raise CompareError(f"gallery must be one of {sorted(GALLERIES)}, got {g!r}")
    if _unit(gallery) != _unit(gallery_b):
        raise CompareError(f"rows of {gallery!r} and {gallery_b!r} compare different things")
    meta = {"all": "gallery_all", "natural": "natural", "crisp": "crisp", "instance": "instance_level",
            "instance-all": "instance_level"}

    def extra_hash(payload: dict, g: str):
        if g.startswith("instance"):  # the same pseudo-sketches: their count, warps per photo and seed
            inst = payload.get("instance_level") or {}
            return str([inst.get(k) for k in ("n_queries", "variants", "seed")])
        return (payload.get(meta[g]) or {}).get("data_hash") if g in meta else None

    for ha, hb, what in ((a.get("data_hash"), b.get("data_hash"), "data_hash"),
                         (extra_hash(a, gallery), extra_hash(b, gallery), f"{meta.get(gallery)}.data_hash")):
        if ha != hb and (what == "data_hash" or gallery_b == gallery):
            raise CompareError(f"the two results are on different data ({what} {ha} vs {hb}): a paired "
                               "comparison needs the same queries and gallery")
    ra, rb = _mode_results(a, mode_a, gallery, "A"), _mode_results(b, mode_b, gallery_b, "B")
    ap_a, ap_b = ra["values"], rb["values"]
    unit, metric = _unit(gallery)[:2]
    if set(ap_a) != set(ap_b):
        raise CompareError(f"the rankings score different {unit} ({len(ap_a)} vs {len(ap_b)})")
    classes = sorted(ap_a, key=str)
    counts = ra["counts"]
    weights = np.array([counts[c] for c in classes], dtype=np.float64) if isinstance(counts, dict) else \
        np.ones(len(classes))
    va = np.array([ap_a[c] for c in classes], dtype=np.float64)
    vb = np.array([ap_b[c] for c in classes], dtype=np.float64)
    return {**_paired(va, vb, weights, isinstance(counts, dict), n_bootstrap, seed, alpha), "unit": unit,
            "metric": metric}


def _paired(va: np.ndarray, vb: np.ndarray, weights: np.ndarray, by_queries: bool, n_bootstrap: int, seed: int,
            alpha: float) -> dict:
    """The comparison dict of per-class APs `va`, `vb` `[C]` with class weights `[C]`."""
    diff = vb - va
    lo, hi = bootstrap_ci(diff, n=n_bootstrap, seed=seed, alpha=alpha, weights=weights)

    def mean(v: np.ndarray) -> float:
        return float((v * weights).sum() / weights.sum())

    return {"a": mean(va), "b": mean(vb), "difference": mean(diff), "difference_CI": [lo, hi],
            "n_classes": len(diff), "classes_b_better": int((diff > 0).sum()),
            "classes_a_better": int((diff < 0).sum()), "weights": "queries" if by_queries else "equal",
            "level": 1 - alpha, "n_bootstrap": n_bootstrap}


def pool_comparisons(pairs: Sequence[tuple[dict, dict]], mode_a: str, mode_b: str, gallery: str = "standard",
                     n_bootstrap: int = 10000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Ranking B minus ranking A pooled over several evaluations on disjoint classes (the K folds
    of the ranking protocol: each fold's model validated on classes its encoder never saw), with
    one paired class bootstrap over all their classes.

    Args:
        pairs: `[(a, b), ...]`, one pair of eval payloads per fold (a pair may be one payload twice,
            for two modes of one run); within a pair the data must be the same (`data_hash`).
        mode_a, mode_b, gallery, n_bootstrap, seed, alpha: as in :func:`compare_results`.

    Returns:
        :func:`compare_results`' keys over the pooled classes, plus `"n_folds"` and `"folds"`
        (each fold's own comparison, without a bootstrap).

    Raises:
        CompareError: a class in two folds (not a partition), or a pair :func:`compare_results` refuses.
    """
    if not pairs:
        raise CompareError("nothing to pool: give one or more evaluations")
    va, vb, weights, folds, seen = [], [], [], [], {}
    equal_weights = False
    for n, (a, b) in enumerate(pairs):
        c = compare_results(a, b, mode_a, mode_b, gallery, n_bootstrap=1, seed=seed, alpha=alpha)
        folds.append({k: c[k] for k in ("a", "b", "difference", "n_classes", "classes_b_better", "classes_a_better")})
        ra, rb = _mode_results(a, mode_a, gallery, "A"), _mode_results(b, mode_b, gallery, "B")
        counts = ra["counts"]
        equal_weights |= not isinstance(counts, dict)
        fold = a.get("val_fold")  # labels are per-fold indices: a fold's classes are (fold, label)
        for cls in sorted(ra["values"], key=str):
            key = (fold, cls) if fold is not None else cls
            if key in seen:
                raise CompareError(f"{cls!r} is in evaluations {seen[key] + 1} and {n + 1}: pooling needs "
                                   "disjoint classes (one evaluation per fold)")
            seen[key] = n
            va.append(ra["values"][cls])
            vb.append(rb["values"][cls])
            weights.append(counts[cls] if isinstance(counts, dict) else 1.0)
    w = np.ones(len(va)) if equal_weights else np.array(weights, dtype=np.float64)
    pooled = _paired(np.array(va, dtype=np.float64), np.array(vb, dtype=np.float64), w, not equal_weights,
                     n_bootstrap, seed, alpha)
    unit, metric = _unit(gallery)[:2]
    return {**pooled, "unit": unit, "metric": metric, "n_folds": len(pairs), "folds": folds}


def format_comparison(c: dict, name_a: str, name_b: str) -> str:
    """One paragraph: both values, B - A with its interval, and the per-class tally."""
    lo, hi = c["difference_CI"]
    verdict = ("B is better" if lo > 0 else "A is better" if hi < 0 else
               "the interval holds 0: this data cannot tell them apart")
    unit, metric = c.get("unit", "classes"), c.get("metric", "mAP@all")
    resampled = "photo" if unit == "photos" else "class"
    return (f"A {name_a}: {metric} {c['a']:.4f}\nB {name_b}: {metric} {c['b']:.4f}\n"
            f"B - A: {c['difference']:+.4f}, {100 * c['level']:g}% paired {resampled}-bootstrap interval "
            f"[{lo:+.4f}, {hi:+.4f}] over {c['n_classes']} {unit} ({c['weights']} weights; B better in "
            f"{c['classes_b_better']}, A in {c['classes_a_better']}): {verdict}")


def _level(value: str) -> float:
    """argparse type: an interval level strictly between 0 and 1."""
    try:
        level = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < level < 1:
        raise argparse.ArgumentTypeError(f"an interval level is between 0 and 1 (e.g. 0.95), got {value}")
    return level


def main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir compare A.json [B.json]`: B's ranking minus A's, paired by class."""
    p = argparse.ArgumentParser(prog="zse-sbir compare", description=main.__doc__)
    p.add_argument("a", help="`zse-sbir eval --out` JSON of ranking A")
    p.add_argument("b", nargs="?", help="JSON of ranking B (default: A's file, for two modes of one run)")
    p.add_argument("--pool", nargs="+", metavar="JSON", default=None,
                   help="pool more evaluations on disjoint classes (the K folds of the ranking protocol) into one "
                        "paired class bootstrap: A, B and these are one eval JSON per fold, each compared "
                        "mode-a vs mode-b; with --paired, the files are A/B pairs, fold by fold")
    p.add_argument("--paired", action="store_true",
                   help="with --pool: the files (A B and the --pool ones) are A1 B1 A2 B2 ... (two models per fold)")
    p.add_argument("--mode-a", default="ret", help="result of A (default ret)")
    p.add_argument("--mode-b", default="rn@10", help="result of B (default rn@10)")
    p.add_argument("--gallery", choices=sorted(GALLERIES), default="standard")
    p.add_argument("--gallery-b", choices=sorted(GALLERIES), default=None,
                   help="B's rows from another gallery of the same classes (e.g. --gallery standard --gallery-b "
                        "crisp: the crisp re-drawings against the bitmaps); default --gallery")
    p.add_argument("--n-bootstrap", type=at_least(1), default=10000, help="bootstrap draws (default 10000)")
    p.add_argument("--level", type=_level, default=0.95,
                   help="interval level (default 0.95; e.g. 0.975 for each of two variants, Bonferroni)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = p.parse_args(argv)
    if args.paired and args.pool is None:
        p.error("--paired needs --pool")
    if args.gallery_b and args.pool is not None:
        p.error("--gallery-b compares two rows of single evaluations, not pooled folds")
    try:
        if args.pool is not None:
            files = [args.a, *([args.b] if args.b else []), *args.pool]
            payloads = [load_eval_results(f) for f in files]
            if args.paired and len(payloads) % 2:
                raise CompareError(f"--paired needs A/B pairs: got {len(payloads)} files")
            pairs = (list(zip(payloads[::2], payloads[1::2])) if args.paired else [(x, x) for x in payloads])
            c = pool_comparisons(pairs, args.mode_a, args.mode_b, args.gallery, args.n_bootstrap, args.seed,
                                 alpha=1 - args.level)
            names = (f"{args.mode_a} of {' '.join(files[::2])}", f"{args.mode_b} of {' '.join(files[1::2])}") \
                if args.paired else (f"{args.mode_a}, pooled over {len(files)} evaluations",
                                     f"{args.mode_b}, pooled over {len(files)} evaluations")
        else:
            a = load_eval_results(args.a)
            b = load_eval_results(args.b) if args.b else a
            c = compare_results(a, b, args.mode_a, args.mode_b, args.gallery, args.n_bootstrap, args.seed,
                                alpha=1 - args.level, gallery_b=args.gallery_b)
            rows_b = f" ({args.gallery_b})" if args.gallery_b and args.gallery_b != args.gallery else ""
            names = (f"{args.mode_a} of {args.a}", f"{args.mode_b} of {args.b or args.a}{rows_b}")
    except (CompareError, HubError, ValueError) as e:
        print(f"zse-sbir compare: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(c, indent=1))
    else:
        print(format_comparison(c, *names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
