"""Re-rank cost options: gathered token selection, per-image projections (once per query, stored
per photo) and the lossy int8 head; each checked against the reference (masked, per-pair) path."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zse_hf import ZseModel, ZseProcessor, retrieval
from zse_hf.modeling_zse import gather_tokens, kept_token_index, scatter_tokens
from zse_hf.retrieval import ZseIndex
from zse_hf.retrieval import quantization as retrieval_quantization

from conftest import assert_close_to_scale, tiny_config


def _features(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    with torch.no_grad():
        return model.get_image_features(torch.randn(n, 3, size, size, generator=g))


def _reference(model, q, c, qi, ci):
    """The masked per-pair path (output_attentions=True runs the plain layers on the full grid)."""
    with torch.no_grad():
        return model.score_pairs(q.select(qi), c.select(ci), output_attentions=True).relation_logits


def _pairs(q_n, c_n):
    return torch.arange(q_n).repeat_interleave(c_n), torch.arange(c_n).repeat(q_n)


@pytest.mark.parametrize("side", ["self", "other"])
@pytest.mark.parametrize("selected", [None, 3, 9])
def test_fast_pair_path_equals_masked_per_pair_path(selected, side):
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=selected, cross_attention_query_side=side)).eval()
    q, c = _features(model, 3, 1), _features(model, 5, 2)
    if selected:
        assert q.token_mask.sum(1).tolist() == [selected] * 3
    qi, ci = _pairs(3, 5)
    ref = _reference(model, q, c, qi, ci)
    with torch.no_grad():
        fast = model.score_indexed_pairs(q, c, qi, ci, chunk_size=4, return_logits=True)
        paired = model.score_pairs(q.select(qi), c.select(ci)).relation_logits  # gathered, per pair
        pre = model.score_indexed_pairs(model.project_image_features(q, "sketch"),
                                        model.project_image_features(c, "photo"), qi, ci, return_logits=True)
    assert ref.abs().max() > 0
    for got in (fast, paired, pre):
        assert_close_to_scale(got, ref, rel=1e-4)


def test_gathered_path_with_uneven_and_empty_masks():
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    q, c = _features(model, 2, 1), _features(model, 4, 2)
    n = q.local_tokens.shape[1]
    rng = np.random.default_rng(0)
    c.token_mask = torch.from_numpy(rng.random((4, n)) < np.array([[0.2], [0.5], [0.9], [0.3]]))
    c.token_mask[:, 0] = True  # every photo keeps at least one token
    q.token_mask = torch.from_numpy(rng.random((2, n)) < 0.5)
    q.token_mask[:, 3] = True
    qi, ci = _pairs(2, 4)
    with torch.no_grad():
        got = model.score_indexed_pairs(q, c, qi, ci, return_logits=True)
    assert_close_to_scale(got, _reference(model, q, c, qi, ci), rel=1e-4)
    # a photo that keeps nothing falls back to the masked path (same answer as the reference)
    c.token_mask[1] = False
    assert kept_token_index(c.token_mask) is None
    with torch.no_grad():
        got = model.score_indexed_pairs(q, c, qi, ci, return_logits=True)
    assert_close_to_scale(got, _reference(model, q, c, qi, ci), rel=1e-4)


def test_gather_and_scatter_helpers():
    mask = torch.tensor([[True, False, True, False], [False, False, False, True], [True] * 4])
    index, valid = kept_token_index(mask)
    assert index.shape == (3, 4)
    assert index[0, :2].tolist() == [0, 2] and index[1, :1].tolist() == [3]
    assert valid.sum(1).tolist() == [2, 1, 4]
    x = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    back = scatter_tokens(gather_tokens(x, index), index, valid, 4)
    assert torch.equal(back, x * mask[..., None])
    assert kept_token_index(torch.ones(2, 4, dtype=torch.bool)) is None and kept_token_index(None) is None


def test_projections_follow_select_and_to_model_and_wrong_side_is_recomputed():
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=5)).eval()
    c = _features(model, 4)
    with torch.no_grad():
        p = model.project_image_features(c, "photo")
        assert model.project_image_features(p, "photo") is p
        s = model.project_image_features(p, "sketch")
    n, d = c.local_tokens.shape[1:]
    assert p.cross_projections.shape == (4, 3, n, d) and p.cross_projection_side == "photo"
    # dropped tokens are not projected
    assert torch.all(p.cross_projections.permute(0, 2, 1, 3)[~c.token_mask] == 0)
    assert not torch.equal(s.cross_projections, p.cross_projections)
    sel = p.select(torch.tensor([2, 0])).to_model(model)
    assert torch.equal(sel.cross_projections, p.cross_projections[[2, 0]]) and sel.cross_projection_side == "photo"
    with pytest.raises(ValueError, match="side"):
        model.cross_attention.project(c, "query")


def _index(model, n=12, seed=0):
    feats = _features(model, n, seed)
    return ZseIndex.from_features(feats.ret_embeds.numpy(), local_tokens=feats.local_tokens.numpy(),
                                  token_mask=feats.token_mask.numpy(), grid_size=feats.grid_size, model=model,
                                  token_codec="fp16")


@pytest.mark.parametrize("selected", [None, 6])
def test_index_rerank_exact_options_equal_the_reference(selected):
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=selected)).eval()
    index = _index(model)
    q = _features(model, 2, 7)
    rows = np.array([[3, 1, 11, 0], [5, 5, -1, 2]])
    base = index.rerank_rows(q, rows)
    assert torch.isnan(base[1, 2]) and not torch.isnan(base[0]).any()
    stored = index.local_tokens(index.ids)
    ok = rows >= 0
    qi = torch.from_numpy(np.nonzero(ok)[0])
    ci = torch.from_numpy(rows[ok])
    ref = torch.sigmoid(_reference(model, q, stored.to_model(model), qi, ci))
    assert_close_to_scale(base[torch.from_numpy(ok)], ref, rel=1e-4)
    size = index.precompute_projections(progress=False)
    n_tok, d = index.token_shape
    assert size >= 12 * 3 * n_tok * d * 2
    pre = index.rerank_rows(q, rows)
    assert_close_to_scale(pre[torch.from_numpy(ok)], ref, rel=3e-3)  # projections stored in fp16
    # they belong to the weights the index is bound to: a copy of the model reads them, other weights are refused
    other = ZseModel(tiny_config(num_selected_tokens=selected)).eval()
    with pytest.raises(ValueError, match="model mismatch"):
        index.attach_model(other)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(index.attach_model(other).rerank_rows(q, rows), pre, equal_nan=True)
    index.close()


def _photos(n, seed):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_stored_projections_are_saved_grown_and_merged(tmp_path):
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    processor = ZseProcessor.from_config(model.config)
    photos, q = _photos(10, 0), _features(model, 2, 3)
    rows = np.array([[0, 9, 4, 7], [8, 1, 5, 6]])
    plain = ZseIndex.build(model, processor, photos[:6], progress=False, token_codec="fp16")
    plain.add(photos[6:], ids=range(6, 10), progress=False)
    ref = plain.rerank_rows(q, rows)
    with pytest.raises(ValueError, match="store_local_tokens"):
        ZseIndex(model, store_local_tokens=False, store_projections=True)
    # made while encoding (build, then add: one file per segment), or afterwards for what is there
    index = ZseIndex.build(model, processor, photos[:6], store_projections=True, progress=False)
    index.add(photos[6:], ids=range(6, 10), progress=False)
    assert [seg.array("projections").shape[0] for seg in index._segments] == [6, 4]
    assert plain.precompute_projections(progress=False) == index.precompute_projections(progress=False)
    for got in (index.rerank_rows(q, rows), plain.rerank_rows(q, rows)):
        assert_close_to_scale(got, ref, rel=3e-3)
    torch.testing.assert_close(plain.rerank_rows(q, rows), index.rerank_rows(q, rows))
    # saved as format 2, loaded back (with the model, or attached later) with the same scores
    saved = index.save(tmp_path / "idx")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["tokens"]["projections"] is True
    assert [seg["projections"] for seg in manifest["segments"]] == ["projections-0000.npy", "projections-0001.npy"]
    n_tok, d = index.token_shape
    assert np.load(saved / "projections-0001.npy", mmap_mode="r").shape == (4, 3, n_tok, d)
    for loaded in (ZseIndex.load(saved, model=model), ZseIndex.load(saved).attach_model(model)):
        assert loaded.store_projections
        torch.testing.assert_close(loaded.rerank_rows(q, rows), index.rerank_rows(q, rows), rtol=0, atol=0)
    # an index without them stays format 1, readable by older versions; so does one whose precompute was
    # interrupted after its first segment
    part = ZseIndex.build(model, processor, photos[:3], progress=False, token_codec="fp16")
    part.add(photos[3:5], ids=["x", "y"], progress=False)
    calls = []

    def fail_second(*args):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return ZseIndex._project(part, *args)

    part._project = fail_second
    with pytest.raises(KeyboardInterrupt):
        part.precompute_projections(batch_size=8, progress=False)
    assert part._segments[0].arrays["projections"] is not None and not part.store_projections
    plain_saved = ZseIndex.build(model, processor, photos[:3], progress=False,
                                 token_codec="fp16").save(tmp_path / "plain")
    part_saved = part.save(tmp_path / "part")
    for folder in (plain_saved, part_saved):
        assert json.loads((folder / "manifest.json").read_text())["format_version"] == 1
        assert not list(folder.glob("projections-*"))
    assert len(ZseIndex.load(part_saved)) == 5
    # checked like every other file
    data = bytearray((saved / "projections-0000.npy").read_bytes())
    data[-1] ^= 0xFF
    (saved / "projections-0000.npy").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="projections-0000.npy is corrupt"):
        ZseIndex.load(saved)
    # shards keep them when every shard has them
    dirs = [ZseIndex.build(model, processor, photos, ids=range(10), shard=(i, 2), store_projections=True,
                           progress=False).save(tmp_path / f"s{i}") for i in range(2)]
    merged = ZseIndex.merge(dirs, model=model)
    assert merged.store_projections
    torch.testing.assert_close(merged.rerank_rows(q, rows), index.rerank_rows(q, rows), rtol=0, atol=1e-6)
    ZseIndex.build(model, processor, photos, ids=range(10), shard=(1, 2), progress=False).save(dirs[1])  # fp16
    assert not ZseIndex.merge(dirs, model=model).store_projections


def test_cli_index_stores_projections(tmp_path):
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "model")
    ZseProcessor.from_config(model.config).save_pretrained(tmp_path / "model")
    (tmp_path / "photos").mkdir()
    for i, img in enumerate(_photos(3, 1)):
        img.save(tmp_path / "photos" / f"p{i}.png")
    assert retrieval.index_main([str(tmp_path / "photos"), "--model", str(tmp_path / "model"), "--out",
                                 str(tmp_path / "idx"), "--store-projections", "--quiet"]) == 0
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["tokens"]["projections"] is True


def test_int8_rerank_is_close_and_labelled_lossy():
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    index = _index(model, n=16)
    q = _features(model, 3, 9)
    rows = np.tile(np.arange(16), (3, 1))
    fp32 = index.rerank_rows(q, rows)
    int8 = index.rerank_rows(q, rows, int8=True)
    assert not torch.equal(int8, fp32)  # it really runs the quantised head
    assert np.corrcoef(int8.ravel().numpy(), fp32.ravel().numpy())[0, 1] > 0.9
    quantised = index._int8_model()
    assert quantised is not model and type(quantised.cross_attention.sketch_layer.q_proj).__name__ == "Linear"
    assert "quantized" in type(quantised.cross_attention.sketch_layer.q_proj).__module__
    assert type(model.cross_attention.sketch_layer.q_proj) is torch.nn.Linear  # the model itself is untouched
    hits = index.search(q, k=4, rerank_k=8, int8=True)
    assert len(hits) == 3 and all(len(h) == 4 for h in hits)
    with pytest.raises(ValueError, match="fp32 model on the CPU"):
        retrieval_quantization.int8_pair_model(ZseModel(tiny_config()).double())
    index.close()


def test_default_pair_chunks_are_cache_sized_on_the_cpu():
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    assert model.pair_chunk_size(64) == 64 and model.pair_chunk_size(256) == 16 and model.pair_chunk_size(10**5) == 1
    q, c = _features(model, 3, 1), _features(model, 100, 2)
    qi, ci = _pairs(3, 100)
    assert model.pair_chunk_size(q.local_tokens.shape[1]) < len(qi)  # the default really splits these 300 pairs
    with torch.no_grad():
        default = model.score_indexed_pairs(q, c, qi, ci)
        one_call = model.score_indexed_pairs(q, c, qi, ci, chunk_size=len(qi))
    assert_close_to_scale(default, one_call, rel=1e-5)


def _backbone(kind):
    from transformers import CLIPVisionConfig, ViTConfig

    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64)
    if kind == "vit":
        return ViTConfig(patch_size=16, **shape)
    if kind == "clip":
        return CLIPVisionConfig(patch_size=16, **shape)
    return None  # tiny_config's DINOv2


@pytest.mark.parametrize("kind", ["dinov2", "vit", "clip"])
def test_encoder_side_selection_is_exact_and_skips_the_dropped_rows(kind):
    """With `num_selected_tokens`, the last backbone block runs for [Ret] and the kept tokens only:
    the same [Ret], attention, mask and kept tokens as the full path, and fewer FLOPs than no selection."""
    from torch.utils.flop_counter import FlopCounterMode

    backbone = _backbone(kind)
    extra = {} if backbone is None else {"backbone_config": backbone, "image_size": 64}
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=4, **extra)).eval()
    size = model.config.image_size
    with torch.no_grad():
        model.encoder.tokenizer.gate.fill_(0.3)
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
        fast = model.get_image_features(x)
        full = model.get_image_features(x, output_hidden_states=True)  # the full backbone, then masked
    assert fast.local_tokens.shape == full.local_tokens.shape == (3, 16, 32)
    assert torch.equal(fast.token_mask, full.token_mask) and fast.token_mask.sum(1).tolist() == [4, 4, 4]
    torch.testing.assert_close(fast.ret_attention, full.ret_attention, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.ret_embeds, full.ret_embeds, rtol=1e-5, atol=1e-6)
    kept = fast.token_mask
    torch.testing.assert_close(fast.local_tokens[kept], full.local_tokens[kept], rtol=1e-5, atol=1e-5)
    assert torch.all(fast.local_tokens[~kept] == 0)
    with torch.no_grad():
        torch.testing.assert_close(
            model.score_all_pairs(fast, fast), model.score_all_pairs(full, full), rtol=1e-4, atol=1e-5
        )

    def flops(m):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m.get_image_features(x)
        return counter.get_total_flops()

    everything = ZseModel(tiny_config(**extra)).eval()
    assert flops(model) < flops(everything)
    model.train()  # and it trains: gradients reach the first block
    model.get_image_features(x).local_tokens.sum().backward()
    first = next(backbone_param for backbone_param in model.encoder.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
