"""Relation-head stage: candidate mining, the listwise objective, and a tiny end-to-end run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Dinov2Config, Dinov2Model

from zse_hf import ZseModel
from zse_hf.modeling_zse import ZseImageFeatures
from zse_hf.training.relation import (
    RelationHeadObjective,
    RelationStageConfig,
    concat_features,
    mine_candidates,
    mine_stage_candidates,
    mirror_token_grid,
    stage_stamps,
    stamp_lookalike_mask,
    train_relation_head,
)

from conftest import tiny_config


def test_mine_candidates_orders_by_cosine_and_guarantees_a_positive():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    p = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    cand, pos = mine_candidates(s, p, [0, 1, 2], [0, 1, 1, 2], k=2)
    assert cand[0].tolist() == [0, 1] and pos[0].tolist() == [True, False]
    assert cand[1].tolist() == [2, 1] and pos[1].tolist() == [True, True]
    # sketch 2 (class 2): its only photo (3) is the least similar, so it replaces the last slot
    assert cand[2].tolist() == [1, 3] and pos[2].tolist() == [False, True]
    with pytest.raises(ValueError, match="without photos"):
        mine_candidates(s, p, [0, 1, 5], [0, 1, 1, 2], k=2)
    with pytest.raises(ValueError, match="exceeds"):
        mine_candidates(s, p, [0, 1, 2], [0, 1, 1, 2], k=5)


def test_stage_candidates_keep_class_sketches_off_the_stamps():
    # photos 0-2: classes 0, 1, 1; photos 3-4: stamps (labels 10, 11); sketches 0-1 class, 2-3 stamp queries
    p = ZseImageFeatures(ret_embeds=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.99, 0.1], [0.1, 0.99]]))
    s = ZseImageFeatures(ret_embeds=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.4], [0.0, 1.0]]))
    cand, pos = mine_stage_candidates(s, p, [0, 1, 10, 11], [0, 1, 1, 10, 11], n_class_sketches=2,
                                      n_class_photos=3, k=2)
    # the stamps (3, 4) are nearest by cosine, yet never candidates of the class sketches
    assert cand[:2].tolist() == [[0, 2], [1, 2]] and pos[:2].tolist() == [[True, False], [True, True]]
    # stamp queries: mined among all photos, positive only on their own stamp
    assert cand[2].tolist() == [3, 2] and pos[2].tolist() == [True, False]
    assert cand[3].tolist() == [1, 4] and pos[3].tolist() == [False, True]
    only = mine_stage_candidates(s, p, [0, 1, 10, 11], [0, 1, 1, 10, 11], 4, 5, 2)
    torch.testing.assert_close(only[0], mine_candidates(s.ret_embeds, p.ret_embeds, [0, 1, 10, 11],
                                                        [0, 1, 1, 10, 11], 2)[0])


def test_stage_candidates_with_stamp_distractors_skip_the_lookalikes():
    # same layout as above; stamp 3 resembles class 0 ("apple"), stamp 4 resembles nothing
    p = ZseImageFeatures(ret_embeds=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.99, 0.1], [0.1, 0.99]]))
    s = ZseImageFeatures(ret_embeds=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.4], [0.0, 1.0]]))
    mask = stamp_lookalike_mask(["apple", "pear"], [frozenset({"apple"}), frozenset()])
    assert mask.tolist() == [[True, False], [False, False]]
    cand, pos = mine_stage_candidates(s, p, [0, 1, 10, 11], [0, 1, 1, 10, 11], 2, 3, k=2, stamp_exclusion=mask)
    # sketch 0: stamp 3 is nearest but resembles its class, so the next photo comes; sketch 1 gets stamp 4
    assert cand[:2].tolist() == [[0, 2], [1, 4]] and pos[:2].tolist() == [[True, False], [True, False]]
    assert cand[2:].tolist() == [[3, 2], [1, 4]]  # stamp queries as before
    assert stamp_lookalike_mask([], [frozenset()]).shape == (0, 1)


def test_mine_candidates_refuses_bad_exclusions():
    s, p = torch.eye(2), torch.eye(2)
    with pytest.raises(ValueError, match="own class"):
        mine_candidates(s, p, [0, 1], [0, 1], k=1, exclude=torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match=r"\[S, P\]"):
        mine_candidates(s, p, [0, 1], [0, 1], k=1, exclude=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="fewer than top_k"):
        mine_candidates(s, p, [0, 1], [0, 1], k=2, exclude=torch.tensor([[False, True], [False, False]]))


def test_concat_features_stacks_one_grid():
    a = ZseImageFeatures(ret_embeds=torch.zeros(2, 4), local_tokens=torch.zeros(2, 3, 4),
                         token_mask=torch.ones(2, 3, dtype=torch.bool), grid_size=(1, 3))
    b = ZseImageFeatures(ret_embeds=torch.ones(1, 4), local_tokens=torch.ones(1, 3, 4),
                         token_mask=torch.zeros(1, 3, dtype=torch.bool), grid_size=(1, 3))
    c = concat_features([a, b])
    assert c.ret_embeds.shape == (3, 4) and c.local_tokens.shape == (3, 3, 4) and c.grid_size == (1, 3)
    assert c.token_mask[:, 0].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="grids"):
        concat_features([a, ZseImageFeatures(ret_embeds=torch.ones(1, 4), local_tokens=torch.ones(1, 4, 4),
                                             token_mask=torch.ones(1, 4, dtype=torch.bool), grid_size=(2, 2))])


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"batch_size": 0}, {"stamp_query_variants": -1}, {"lr": 0.0},
                                 {"lr": float("nan")}, {"weight_decay": -1.0},
                                 {"grid_flip_p": 1.5}])
def test_stage_config_refuses_bad_values(bad, capsys):
    from zse_hf.training.relation import main

    with pytest.raises(ValueError, match=next(iter(bad))):
        RelationStageConfig(**bad)
    flag = "--" + next(iter(bad)).replace("_", "-")
    with pytest.raises(SystemExit) as exit_info:  # the CLI refuses before loading anything
        main(["--model", "nowhere", "--out", "nowhere", flag, str(next(iter(bad.values())))])
    assert exit_info.value.code == 2 and next(iter(bad)) in capsys.readouterr().err


def test_stamp_distractors_need_the_stamps(capsys):
    from zse_hf.training.relation import main

    assert RelationStageConfig(stamp_query_variants=2, stamp_distractors=True).stamp_distractors
    with pytest.raises(ValueError, match="stamp_query_variants"):
        RelationStageConfig(stamp_distractors=True)
    with pytest.raises(SystemExit) as exit_info:  # a bare switch on the command line
        main(["--model", "nowhere", "--out", "nowhere", "--stamp-distractors"])
    assert exit_info.value.code == 2 and "stamp_distractors needs" in capsys.readouterr().err


def _tiny_model_and_features(n_sketches: int, n_photos: int):
    """A seeded tiny model (eval mode) and its features of random sketches and photos."""
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    with torch.no_grad():
        s = model.get_image_features(torch.randn(n_sketches, 3, 56, 56))
        p = model.get_image_features(torch.randn(n_photos, 3, 56, 56))
    return model, s, p


def test_objective_is_listwise_cross_entropy_on_the_head_only():
    model, s, p = _tiny_model_and_features(3, 4)
    cand = torch.tensor([[0, 1, 2], [3, 2, 1], [1, 0, 3]])
    pos = torch.tensor([[True, False, True], [False, True, False], [False, False, True]])
    obj = RelationHeadObjective(model, s, p, cand, pos)
    assert not any(q.requires_grad for q in model.encoder.parameters())
    assert "sketch_tokens" not in obj.state_dict()  # caches are not saved in checkpoints
    out = obj(torch.tensor([0, 2]))
    with torch.no_grad():
        full = torch.logit(model.relation_scores(s, p).double())
    expected = 0.0
    for i in [0, 2]:
        logits = full[i, cand[i]]
        expected += (torch.logsumexp(logits, 0) - torch.logsumexp(logits[pos[i]], 0)) / 2
    torch.testing.assert_close(out["logits"].double(), full[[0, 2]].gather(1, cand[[0, 2]]),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["loss"].double(), expected, rtol=1e-4, atol=1e-4)
    out["loss"].backward()
    assert model.relation_network.mlp[0].weight.grad.abs().sum() > 0
    assert model.cross_attention.sketch_layer.q_proj.weight.grad.abs().sum() > 0


def test_mirror_token_grid_mirrors_the_flagged_rows_only():
    tokens = torch.arange(12.0).view(2, 6, 1).repeat(1, 1, 3)  # two 2x3 grids, row-major
    mask = torch.tensor([[True, True, False, True, False, False], [True, False, True, True, True, True]])
    out, out_mask = mirror_token_grid(tokens, mask, (2, 3), torch.tensor([True, False]))
    assert out[0, :, 0].tolist() == [2.0, 1.0, 0.0, 5.0, 4.0, 3.0] and torch.equal(out[1], tokens[1])
    assert out_mask[0].tolist() == [False, True, True, False, False, True] and torch.equal(out_mask[1], mask[1])
    back, back_mask = mirror_token_grid(out, out_mask, (2, 3), torch.tensor([True, False]))
    assert torch.equal(back, tokens) and torch.equal(back_mask, mask)
    with pytest.raises(ValueError, match="grid"):
        mirror_token_grid(tokens, mask, (2, 2), torch.tensor([True, False]))


def test_objective_mirrors_grids_only_while_training():
    model, s, p = _tiny_model_and_features(2, 3)
    cand, pos = torch.tensor([[0, 1, 2], [2, 1, 0]]), torch.tensor([[True, False, False], [False, True, False]])
    obj = RelationHeadObjective(model, s, p, cand, pos, grid_flip_p=1.0)  # every grid mirrored
    index = torch.tensor([0, 1])

    def mirrored(f: ZseImageFeatures, rows) -> ZseImageFeatures:
        t, m = mirror_token_grid(f.local_tokens[rows], f.token_mask[rows], f.grid_size,
                                 torch.ones(len(rows), dtype=torch.bool))
        return ZseImageFeatures(local_tokens=t, token_mask=m, grid_size=f.grid_size)

    with torch.no_grad():
        plain = model.relation_logits(s.select(index.repeat_interleave(3)), p.select(cand.reshape(-1))).view(2, 3)
        flipped = model.relation_logits(mirrored(s, index.repeat_interleave(3)), mirrored(p, cand.reshape(-1)))
        torch.testing.assert_close(obj.eval()(index)["logits"], plain)
        torch.testing.assert_close(obj.train()(index)["logits"], flipped.view(2, 3))
    assert not torch.allclose(plain, flipped.view(2, 3))


@pytest.mark.slow  # real QuickDraw / Tux Paint data
@pytest.mark.parametrize("distractors", [False, True])
def test_tiny_relation_stage_trains_the_head_and_keeps_the_encoder(tmp_path, distractors):
    torch.manual_seed(0)
    bb = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56,
                      mlp_ratio=2)
    Dinov2Model(bb).save_pretrained(tmp_path / "backbone")
    base = ZseModel.from_backbone(str(tmp_path / "backbone"), image_size=56, relation_grid=2)
    base.save_pretrained(tmp_path / "base")
    from zse_hf import ZseProcessor
    from zse_hf.image_processing_zse import ZseImageProcessor

    ZseProcessor(ZseImageProcessor.from_model_config(base.config)).save_pretrained(tmp_path / "base")
    cfg = RelationStageConfig(top_k=3, batch_size=4, max_steps=2, eval_steps=1, save_steps=1, val_classes=3,
                              val_sketches_per_class=2, sketches_per_class=2, stamp_query_variants=1,
                              stamp_distractors=distractors)
    best = train_relation_head(str(tmp_path / "base"), str(tmp_path / "run"), cfg)
    before, after = load_file(tmp_path / "base" / "model.safetensors"), load_file(best / "model.safetensors")
    assert before.keys() == after.keys()
    enc = [k for k in before if k.startswith("encoder.")]
    head = [k for k in before if k.startswith(("relation_network.", "cross_attention."))]
    assert enc and head
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in head)
    summary = json.loads((best / "training_summary.json").read_text())["relation_stage"]
    assert summary["stopped_at_step"] == 2 and summary["best_val_rn_mAP@all"] is not None
    stamps = stage_stamps(cfg)  # the validation classes' look-alikes withheld
    assert summary["stamp_queries"] == summary["stamp_photos"] == len(stamps) == 170 - len(stamps.withheld)
    assert 0.0 <= summary["stamp_queries_with_their_stamp_from_ret"] <= 1.0
    share = summary["sketch_candidates_that_are_stamps"]
    assert share > 0.0 if distractors else share == 0.0
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_rn_mAP@all" in r] == [1, 2]
