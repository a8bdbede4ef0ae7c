"""`zse-sbir protocol`: the ranking protocol's decision from its K folds' result files.

The rule was written down (docs/relation_rerank.md) before any fold model was evaluated; this
module applies it as written, so the decision is a function of the files and nothing else:

* each candidate ranking is compared with [Ret] over the classes of all K folds pooled, in one
  paired class bootstrap (:func:`zse_hf.evaluation.compare.pool_comparisons`);
* ``rn@10`` passes if its interval (95%) lies above 0 and its difference is >= +0.01 on the
  standard gallery;
* each training-free variant (``rn@10-hub*1``, ``rn@10+cos*calibrated``) passes if its interval
  (97.5%, Bonferroni over the two) lies above 0, its difference is >= +0.01 and its pooled
  ``--gallery all`` difference is not below 0;
* of the passing candidates the largest pooled difference becomes the default ranking; if none
  passes, [Ret] stays the default.

No decision is made before all K folds are in (each fold ``I/K`` exactly once): the table of a
partial set is printed as such, never as a verdict. Nor from files that score a run's last
checkpoint instead of its selected best (the sensitivity analysis of the selection).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..data.split import parse_fold
from ..hub.errors import HubError
from ..hub.eval_json import load_eval_results
from .compare import CompareError, pool_comparisons

BASELINE = "ret"
MIN_DIFFERENCE = 0.01


@dataclass(frozen=True)
class Candidate:
    """A ranking the protocol may make the default: its mode key in the fold files, the level of its
    pooled interval, and whether its `--gallery all` difference must not be below 0."""

    mode: str
    level: float
    check_gallery_all: bool


CANDIDATES = (
    Candidate("rn@10", 0.95, False),
    Candidate("rn@10-hub*1", 0.975, True),
    Candidate("rn@10+cos*calibrated", 0.975, True),
)


def order_folds(payloads: Sequence[dict], k: int) -> tuple[dict[int, dict], list[int]]:
    """`{I: payload}` in fold order (by each payload's `val_fold` `"I/K"`), and the folds still missing.

    Raises:
        CompareError: a payload without a fold of `k`, or a fold given twice.
    """
    by_fold: dict[int, dict] = {}
    for n, payload in enumerate(payloads):
        try:
            fold = parse_fold(payload.get("val_fold"))
        except ValueError as err:
            raise CompareError(f"file {n + 1}: {err}") from None
        if fold is None or fold[1] != k:
            raise CompareError(f"file {n + 1} is not a fold of {k} (val_fold {payload.get('val_fold')!r})")
        if fold[0] in by_fold:
            raise CompareError(f"fold {fold[0]}/{k} is given twice")
        by_fold[fold[0]] = payload
    return dict(sorted(by_fold.items())), [i for i in range(k) if i not in by_fold]


def decide(payloads: Sequence[dict], k: int = 5, candidates: Sequence[Candidate] = CANDIDATES,
           n_bootstrap: int = 10000, seed: int = 0) -> dict:
    """Apply the protocol's rule to the fold results.

    Args:
        payloads: one eval JSON payload per fold (`bench_rerank_variants.py --out`: `results` and
            `results_gallery_all` with per-class APs of `ret` and every candidate's mode).
        k: the number of folds the decision needs.

    Returns:
        `{"k", "folds": [I, ...], "missing": [I, ...], "unselected": [I, ...], "rows": [{"mode", "level",
        "standard", "all", "passes"}], "default_ranking": str | None}`; `standard` / `all` are
        :func:`~zse_hf.evaluation.compare.pool_comparisons` results, and `default_ranking` is None until all
        `k` folds are in, and for files that score a run's unselected checkpoint
        (`model_training.selected` false: the sensitivity analysis, which never decides).
    """
    by_fold, missing = order_folds(payloads, k)
    if not by_fold:
        raise CompareError("no fold results")
    pairs = [(p, p) for p in by_fold.values()]
    rows = []
    for cand in candidates:
        std, gal_all = (pool_comparisons(pairs, BASELINE, cand.mode, gallery, n_bootstrap, seed, 1 - cand.level)
                        for gallery in ("standard", "all"))
        passes = (std["difference_CI"][0] > 0 and std["difference"] >= MIN_DIFFERENCE
                  and (not cand.check_gallery_all or gal_all["difference"] >= 0))
        rows.append({"mode": cand.mode, "level": cand.level, "standard": std, "all": gal_all, "passes": passes})
    passing = [r for r in rows if r["passes"]]
    unselected = [i for i, p in by_fold.items() if not (p.get("model_training") or {}).get("selected", True)]
    default = None
    if not missing and not unselected:
        default = max(passing, key=lambda r: r["standard"]["difference"])["mode"] if passing else BASELINE
    return {"k": k, "folds": list(by_fold), "missing": missing, "unselected": unselected, "rows": rows,
            "default_ranking": default}


def format_decision(d: dict) -> str:
    """A markdown table of the pooled comparisons and the decision (or why there is none yet)."""
    n_classes = d["rows"][0]["standard"]["n_classes"] if d["rows"] else 0
    lines = [f"folds {', '.join(map(str, d['folds']))} of {d['k']}, "
             f"{n_classes} classes pooled; each row minus {BASELINE}",
             "", "| ranking | level | standard gallery [interval] | better / worse | gallery all [interval] | "
             "passes |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        s, a = r["standard"], r["all"]
        lines.append(f"| {r['mode']} | {100 * r['level']:g}% | {s['difference']:+.4f} [{s['difference_CI'][0]:+.4f}, "
                     f"{s['difference_CI'][1]:+.4f}] | {s['classes_b_better']} / {s['classes_a_better']} | "
                     f"{a['difference']:+.4f} [{a['difference_CI'][0]:+.4f}, {a['difference_CI'][1]:+.4f}] | "
                     f"{'yes' if r['passes'] else 'no'} |")
    lines.append("")
    if d["unselected"]:
        lines.append(f"no decision: fold(s) {', '.join(map(str, d['unselected']))} score an unselected checkpoint "
                     "(a sensitivity analysis; the decision reads each fold's best)")
    elif d["default_ranking"] is None:
        lines.append(f"no decision: fold(s) {', '.join(map(str, d['missing']))} missing (the rule is applied once "
                     "all folds are in)")
    else:
        lines.append(f"default_ranking: {d['default_ranking']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir protocol FOLD.json ...`: the default ranking the protocol's rule gives."""
    p = argparse.ArgumentParser(prog="zse-sbir protocol", description=main.__doc__)
    p.add_argument("files", nargs="+", help="one `bench_rerank_variants.py --val-fold I/K --out` JSON per fold")
    p.add_argument("--folds", type=int, default=5, help="K, the folds the decision needs (default 5)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="also save a forest plot: pooled differences with intervals, and each fold's")
    args = p.parse_args(argv)
    try:
        d = decide([load_eval_results(f) for f in args.files], args.folds)
    except (CompareError, HubError, ValueError) as e:
        print(f"zse-sbir protocol: {e}", file=sys.stderr)
        return 2
    print(json.dumps(d, indent=1) if args.json else format_decision(d))
    if args.plot:
        from .plots import plot_protocol

        print(f"wrote {plot_protocol(d, args.plot, MIN_DIFFERENCE)}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
