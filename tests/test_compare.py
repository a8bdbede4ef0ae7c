"""`zse-sbir compare`: paired class-bootstrap difference of two rankings' mAP@all."""

import json
from pathlib import Path

import numpy as np
import pytest

from zse_hf.cli import main as cli_main
from zse_hf.evaluation import metrics as M
from zse_hf.evaluation.compare import CompareError, compare_results, main, pool_comparisons


def _payload(rankings: dict, ql, gl, data_hash="d1", gallery_all=None):
    """An eval-JSON-shaped payload of real `compute_metrics` results, one per ranking."""
    results = {name: M.compute_metrics(scores, ql, gl, n_bootstrap=0) for name, scores in rankings.items()}
    payload = {"results": results, "data_hash": data_hash}
    if gallery_all is not None:
        payload["results_gallery_all"] = gallery_all
    return json.loads(json.dumps(payload))  # as read back from disk: class keys become strings


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    ql = np.repeat(np.arange(12), rng.integers(3, 9, size=12))  # unequal queries per class
    gl = np.repeat(np.arange(12), 2)
    noise = rng.normal(size=(len(ql), len(gl)))
    match = (ql[:, None] == gl[None, :]).astype(float)
    rankings = {"ret": noise + 0.5 * match, "rn@10": noise + 0.8 * match, "ideal": match}
    return ql, gl, {**rankings, "same": rankings["ret"].copy()}


def test_values_are_the_rankings_own_map_and_the_interval_is_paired(case):
    ql, gl, rankings = case
    p = _payload(rankings, ql, gl)
    c = compare_results(p, p, "ret", "rn@10", n_bootstrap=2000)
    assert c["weights"] == "queries" and c["n_classes"] == 12
    assert c["a"] == pytest.approx(p["results"]["ret"]["mAP@all"], abs=1e-12)
    assert c["b"] == pytest.approx(p["results"]["rn@10"]["mAP@all"], abs=1e-12)
    assert c["difference"] == pytest.approx(c["b"] - c["a"], abs=1e-12)
    lo, hi = c["difference_CI"]
    assert lo <= c["difference"] <= hi and c["classes_b_better"] + c["classes_a_better"] <= 12

    same = compare_results(p, p, "ret", "same")
    assert same["difference"] == 0 and same["difference_CI"] == [0, 0] and same["classes_b_better"] == 0

    ideal = compare_results(p, p, "ret", "ideal")
    assert ideal["b"] == pytest.approx(1.0) and ideal["difference_CI"][0] > 0  # better in every class


def test_old_json_without_query_counts_weighs_classes_equally(case):
    ql, gl, rankings = case
    p = _payload(rankings, ql, gl)
    for r in p["results"].values():
        del r["per_class_queries"]
    c = compare_results(p, p, "ret", "rn@10")
    assert c["weights"] == "equal"
    assert c["a"] == pytest.approx(p["results"]["ret"]["mAP@all_class_mean"], abs=1e-12)


def test_refuses_what_cannot_be_paired(case):
    ql, gl, rankings = case
    p = _payload(rankings, ql, gl)
    with pytest.raises(CompareError, match="different data"):
        compare_results(p, _payload(rankings, ql, gl, data_hash="d2"), "ret", "ret")
    with pytest.raises(CompareError, match=r"no per-class APs for mode 'rn@50' \(has: ret, rn@10"):
        compare_results(p, p, "ret", "rn@50")
    with pytest.raises(CompareError, match="--gallery all"):
        compare_results(p, p, "ret", "rn@10", gallery="all")
    fewer = _payload({"ret": rankings["ret"][ql < 11]}, ql[ql < 11], gl)
    with pytest.raises(CompareError, match="different classes"):
        compare_results(p, fewer, "ret", "ret")


def test_cli(case, tmp_path, capsys):
    ql, gl, rankings = case
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_payload(rankings, ql, gl, gallery_all=_payload(rankings, ql, gl)["results"])))
    assert cli_main(["compare", str(a), "--mode-b", "ideal", "--gallery", "all"]) == 0
    out = capsys.readouterr().out
    assert "B - A: +" in out and "B is better" in out and "over 12 classes (queries weights" in out
    assert main([str(a), str(a), "--mode-a", "ret", "--mode-b", "same", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["difference"] == 0 and got["level"] == pytest.approx(0.95)
    assert main([str(a), "--json"]) == 0
    at95 = json.loads(capsys.readouterr().out)["difference_CI"]
    assert main([str(a), "--json", "--level", "0.99"]) == 0
    at99 = json.loads(capsys.readouterr().out)
    assert at99["level"] == pytest.approx(0.99)
    assert at99["difference_CI"][0] <= at95[0] and at99["difference_CI"][1] >= at95[1]  # wider
    with pytest.raises(SystemExit):
        main([str(a), "--level", "95"])
    assert "between 0 and 1" in capsys.readouterr().err
    assert main([str(a), "--mode-b", "nope"]) == 2
    assert "no per-class APs for mode 'nope'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main([str(tmp_path / "bad.json")]) == 2
    assert "bad.json has no 'results'" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main([str(tmp_path / "broken.json")]) == 2
    assert "broken.json is not a JSON file" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "evaluation file not found" in capsys.readouterr().err


def _fold(rankings, ql, gl, classes, data_hash):
    """The case's payload restricted to `classes` (one fold's validation classes)."""
    q, g = np.isin(ql, classes), np.isin(gl, classes)
    return _payload({k: v[q][:, g] for k, v in rankings.items()}, ql[q], gl[g], data_hash=data_hash)


def test_pooling_folds_equals_one_comparison_over_all_classes(case, tmp_path, capsys):
    """Folds on disjoint classes pool into one comparison over all their classes (each class's AP from
    its own fold's gallery)."""
    ql, gl, rankings = case
    folds = [_fold(rankings, ql, gl, c, f"f{i}") for i, c in enumerate((range(0, 5), range(5, 9), range(9, 12)))]
    pooled = pool_comparisons([(f, f) for f in folds], "ret", "rn@10", n_bootstrap=2000)
    assert pooled["n_classes"] == 12 and pooled["n_folds"] == 3 and pooled["weights"] == "queries"

    def weighted(mode):  # query-weighted mean of every fold's per-class APs
        pairs = [(f["results"][mode]["per_class_AP"][c], f["results"][mode]["per_class_queries"][c])
                 for f in folds for c in f["results"][mode]["per_class_AP"]]
        return sum(ap * n for ap, n in pairs) / sum(n for _, n in pairs)

    whole = {"a": weighted("ret"), "b": weighted("rn@10")}
    whole["difference"] = whole["b"] - whole["a"]
    for key in ("a", "b", "difference"):
        assert pooled[key] == pytest.approx(whole[key], abs=1e-12)
    assert [f["n_classes"] for f in pooled["folds"]] == [5, 4, 3]
    lo, hi = pooled["difference_CI"]
    assert lo <= pooled["difference"] <= hi
    with pytest.raises(CompareError, match="disjoint"):
        pool_comparisons([(folds[0], folds[0]), (folds[0], folds[0])], "ret", "rn@10")
    with pytest.raises(CompareError, match="nothing to pool"):
        pool_comparisons([], "ret", "rn@10")
    files = []
    for i, f in enumerate(folds):
        files.append(tmp_path / f"fold{i}.json")
        files[-1].write_text(json.dumps(f))
    assert main([str(files[0]), "--pool", *map(str, files[1:]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["difference"] == pytest.approx(whole["difference"], abs=1e-12) and got["n_folds"] == 3
    # --paired: A/B files per fold (here the same file twice, mode ret vs rn@10)
    assert main([str(files[0]), str(files[0]), "--pool", str(files[1]), str(files[1]), "--paired"]) == 0
    assert "pooled" not in capsys.readouterr().out
    assert main([str(files[0]), "--pool", str(files[1]), str(files[2]), "--paired"]) == 2
    assert "A/B pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(files[0]), "--paired"])


def test_pool_folds_with_per_fold_labels():
    """Fold payloads label their classes 0..C-1 each; pooling keys them by fold, and refuses a fold twice."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "protocol"
    f0, f1 = (json.loads((docs / f"fold{i}-variants.json").read_text()) for i in (0, 1))
    pooled = pool_comparisons([(f0, f0), (f1, f1)], "ret", "rn@10", n_bootstrap=200)
    assert pooled["n_classes"] == sum(len(f["results"]["ret"]["per_class_AP"]) for f in (f0, f1))
    with pytest.raises(CompareError, match="disjoint"):
        pool_comparisons([(f0, f0), (f0, f0)], "ret", "rn@10", n_bootstrap=200)


def _instance_payload(rankings: dict, targets, photo_ids, seed=0):
    """An eval JSON with `instance_level` rows: real `compute_metrics` plus `per_photo_hits`."""
    from zse_hf.evaluation.runner import per_photo_hits

    gl = np.arange(rankings["ret"].shape[1])
    rows = {name: {**M.compute_metrics(s, np.asarray(targets), gl, true_index=np.asarray(targets), n_bootstrap=0),
                   **per_photo_hits(s, targets, photo_ids)} for name, s in rankings.items()}
    inst = {"split": rows, "n_queries": len(targets), "variants": 4, "seed": seed}
    return json.loads(json.dumps({"results": rows, "data_hash": "d1", "instance_level": inst}))


def test_instance_level_compares_photos_acc1(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n_photos, variants = 10, 4
    targets = np.repeat(np.arange(n_photos), variants)
    photo_ids = [f"p{t}.png" for t in targets]
    noise = rng.normal(size=(len(targets), n_photos))
    own = np.eye(n_photos)[targets]
    p = _instance_payload({"ret": noise + 1.0 * own, "rn@10": noise + 3.0 * own}, targets, photo_ids)
    c = compare_results(p, p, "ret", "rn@10", gallery="instance", n_bootstrap=2000)
    acc = {m: float((np.argmax(s, 1) == targets).mean()) for m, s in (("ret", noise + own), ("rn@10", noise + 3 * own))}
    assert c["unit"] == "photos" and c["metric"] == "acc@1" and c["n_classes"] == n_photos
    assert c["a"] == pytest.approx(acc["ret"]) and c["b"] == pytest.approx(acc["rn@10"])
    assert c["a"] == pytest.approx(p["instance_level"]["split"]["ret"]["acc@1"])
    lo, hi = c["difference_CI"]
    assert lo <= c["difference"] <= hi and c["difference"] > 0
    with pytest.raises(CompareError, match="different things"):
        compare_results(p, p, "ret", "rn@10", gallery="standard", gallery_b="instance")
    other = _instance_payload({"ret": noise, "rn@10": noise}, targets, photo_ids, seed=1)
    with pytest.raises(CompareError, match="different data"):
        compare_results(p, other, "ret", "ret", gallery="instance")
    with pytest.raises(CompareError, match="instance_level.all"):
        compare_results(p, p, "ret", "rn@10", gallery="instance-all")
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(p))
    assert main([str(path), "--gallery", "instance"]) == 0
    assert "paired photo-bootstrap" in capsys.readouterr().out
    assert main([str(path)]) == 0  # category level: classes
    assert "paired class-bootstrap interval" in capsys.readouterr().out
    assert main([str(path), "--gallery", "instance"]) == 0
    out = capsys.readouterr().out
    assert "acc@1" in out and "over 10 photos" in out and "photo-bootstrap" in out
