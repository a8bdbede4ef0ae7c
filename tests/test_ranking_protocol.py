"""`zse-sbir protocol`: the pre-written rule applied to K folds' results, and only to all K."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zse_hf import ZseConfig
from zse_hf.cli import main as cli_main
from zse_hf.evaluation import metrics as M
from zse_hf.evaluation.compare import CompareError
from zse_hf.evaluation.ranking_protocol import decide
from zse_hf.hub.eval_json import load_eval_results

K = 5


def _fold(i: int, strength: dict, strength_all: dict | None = None, k: int = K) -> dict:
    """Fold `i`'s variants JSON: real `compute_metrics` of rankings whose true-class bonus is `strength`
    (per mode) on a gallery of its own 8 classes, and `strength_all` on a larger one."""
    rng = np.random.default_rng(i)
    ql = np.repeat(np.arange(8) + 100 * i, 6)  # classes disjoint across folds
    payload = {"val_fold": f"{i}/{k}", "data_hash": f"h{i}"}
    for key, gallery_extra, s in (("results", 0, strength), ("results_gallery_all", 40, strength_all or strength)):
        gl = np.concatenate([np.repeat(np.arange(8) + 100 * i, 2), -1 - np.arange(gallery_extra)])
        noise = rng.normal(size=(len(ql), len(gl)))
        match = (ql[:, None] == gl[None, :]).astype(float)
        payload[key] = {mode: M.compute_metrics(noise + bonus * match, ql, gl, n_bootstrap=0)
                        for mode, bonus in s.items()}
    return json.loads(json.dumps(payload))  # as read back from disk


STANDARD = {"ret": 1.0, "rn@10": 0.9, "rn@10-hub*1": 2.5, "rn@10+cos*calibrated": 3.0}
GALLERY_ALL = {"ret": 1.0, "rn@10": 0.9, "rn@10-hub*1": 2.5, "rn@10+cos*calibrated": 0.3}


def test_the_passing_variant_with_the_largest_difference_wins_only_if_gallery_all_agrees():
    folds = [_fold(i, STANDARD, GALLERY_ALL) for i in range(K)]
    d = decide(folds[::-1], K, n_bootstrap=2000)  # order of the files does not matter
    rows = {r["mode"]: r for r in d["rows"]}
    assert d["folds"] == list(range(K)) and d["missing"] == []
    assert rows["rn@10+cos*calibrated"]["standard"]["difference"] > rows["rn@10-hub*1"]["standard"]["difference"]
    assert rows["rn@10+cos*calibrated"]["all"]["difference"] < 0 and not rows["rn@10+cos*calibrated"]["passes"]
    assert rows["rn@10-hub*1"]["passes"] and rows["rn@10-hub*1"]["level"] == 0.975
    assert not rows["rn@10"]["passes"] and rows["rn@10"]["level"] == 0.95
    assert rows["rn@10"]["standard"]["n_classes"] == 8 * K
    assert d["default_ranking"] == "rn@10-hub*1"


def test_ret_stays_the_default_when_nothing_passes_and_no_decision_before_all_folds():
    worse = {"ret": 1.0, "rn@10": 0.8, "rn@10-hub*1": 0.9, "rn@10+cos*calibrated": 1.0}
    folds = [_fold(i, worse) for i in range(K)]
    d = decide(folds, K, n_bootstrap=500)
    assert not any(r["passes"] for r in d["rows"]) and d["default_ranking"] == "ret"

    unselected = [{**f, "model_training": {"checkpoint": "checkpoint-2000", "selected": False}} for f in folds]
    d = decide(unselected, K, n_bootstrap=500)
    assert d["unselected"] == list(range(K)) and d["default_ranking"] is None  # the sensitivity files never decide

    partial = decide([_fold(i, STANDARD, GALLERY_ALL) for i in (0, 2, 3)], K, n_bootstrap=500)
    assert partial["missing"] == [1, 4] and partial["default_ranking"] is None
    assert any(r["passes"] for r in partial["rows"])  # a passing row on part of the folds decides nothing


def test_bad_fold_sets_are_refused():
    f0 = _fold(0, STANDARD)
    with pytest.raises(CompareError, match="twice"):
        decide([f0, f0], K)
    with pytest.raises(CompareError, match="not a fold of 5"):
        decide([_fold(1, STANDARD, k=4)], K)
    with pytest.raises(CompareError, match="not a fold"):
        decide([{k: v for k, v in f0.items() if k != "val_fold"}], K)
    no_variant = _fold(2, {"ret": 1.0, "rn@10": 1.0})
    with pytest.raises(CompareError, match="rn@10-hub"):
        decide([no_variant], K)


def test_cli_prints_the_table_and_the_decision(tmp_path, capsys):
    paths = []
    for i in range(K):
        paths.append(tmp_path / f"fold{i}-variants.json")
        paths[-1].write_text(json.dumps(_fold(i, STANDARD, GALLERY_ALL)))
    assert cli_main(["protocol", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    assert "| rn@10-hub*1 | 97.5% |" in out and out.rstrip().endswith("default_ranking: rn@10-hub*1")

    png = tmp_path / "protocol.png"
    assert cli_main(["protocol", *map(str, paths), "--plot", str(png)]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (900, 300)  # 9 in x (1.2 + 0.6 x 3 rows) in at 100 dpi
    capsys.readouterr()

    assert cli_main(["protocol", *map(str, paths[:2])]) == 0
    assert "no decision: fold(s) 2, 3, 4 missing" in capsys.readouterr().out

    assert cli_main(["protocol", str(paths[0]), str(paths[0])]) == 2
    assert "given twice" in capsys.readouterr().err


def test_the_shipped_default_ranking_is_the_protocols_decision():
    """The committed fold results decide `default_ranking`; the shipped config must carry that decision."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "docs" / "protocol").glob("fold?-variants.json"))
    d = decide([load_eval_results(f) for f in files], K)  # read as `zse-sbir protocol` reads them
    assert d["missing"] == [] and d["unselected"] == []
    assert ZseConfig.from_pretrained(root / "hub_card").default_ranking == d["default_ranking"]
