"""Core model: zero gate, spatial pooling, relation scoring, loss, save/load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoProcessor, Dinov2Model, ViTConfig

from zse_hf import ZseConfig, ZseImageFeatures, ZseModel, ZseProcessor
from zse_hf.modeling_zse import (
    ZseCrossAttentionOutput,
    ZsePairOutput,
    ZseRelationNetwork,
    ZseRelationOutput,
)

from conftest import assert_close_to_scale, assert_same_state, tiny_config


def test_zero_gate_equals_plain_backbone(tiny_model, pixels):
    assert torch.count_nonzero(tiny_model.encoder.tokenizer.gate) == 0
    feats = tiny_model.get_image_features(pixels)
    plain = tiny_model.encoder.backbone(pixel_values=pixels)
    assert torch.allclose(feats.ret_embeds, F.normalize(plain.pooler_output, dim=-1), atol=1e-6)
    assert torch.allclose(feats.local_tokens, plain.last_hidden_state[:, 1:], atol=1e-6)
    assert feats.grid_size == (4, 4) and feats.local_tokens.shape == (3, 16, 32)
    assert torch.allclose(feats.ret_embeds.norm(dim=-1), torch.ones(3))


def test_open_gate_changes_features(tiny_model, pixels):
    before = tiny_model.get_image_features(pixels).ret_embeds
    with torch.no_grad():
        tiny_model.encoder.tokenizer.gate.fill_(0.5)
    after = tiny_model.get_image_features(pixels).ret_embeds
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.parametrize("grid", [(16, 16), (14, 14), (9, 12)])
def test_relation_pooling_is_spatially_local(grid):
    """Perturbing one token changes exactly the pooled cells whose window covers it."""
    torch.manual_seed(0)
    cfg = tiny_config(relation_grid=7)
    rn = ZseRelationNetwork(cfg).eval()
    h, w = grid
    tokens = torch.randn(1, h * w, cfg.hidden_size)
    r, c = h // 3, w - 2
    bumped = tokens.clone()
    bumped[0, r * w + c] += 5.0
    base, _ = rn.pool(tokens, grid)
    moved, _ = rn.pool(bumped, grid)
    changed = ((moved - base).abs().amax(-1)[0] > 1e-6).nonzero().flatten().tolist()

    def cells(index, size):  # adaptive pooling windows to 2G, then 2x2 stride-2 conv
        out = 2 * cfg.relation_grid
        return {i // 2 for i in range(out) if (i * size) // out <= index < -((-(i + 1) * size) // out)}

    expected = sorted(a * 7 + b for a in cells(r, h) for b in cells(c, w))
    assert changed == expected
    assert len(changed) < 49 // 4


def test_token_selection_mask_and_empty_cells():
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=5)).eval()
    pixels = torch.randn(2, 3, 56, 56)
    feats = model.get_image_features(pixels)
    assert feats.token_mask.shape == (2, 16) and feats.token_mask.sum(1).tolist() == [5, 5]
    top = feats.ret_attention.topk(5, dim=1).indices
    assert torch.equal(feats.token_mask.gather(1, top), torch.ones(2, 5, dtype=torch.bool))
    total = feats.ret_attention.sum(1)  # over patches only: the [Ret] self-weight is left out
    assert torch.all(feats.ret_attention >= 0) and torch.all((total > 0) & (total < 1))
    cells, valid = model.relation_network.pool(feats.local_tokens, feats.grid_size, feats.token_mask)
    assert torch.all(cells[~valid] == 0)


@pytest.mark.parametrize("selected", [None, 6])
def test_relation_scores_equal_pairwise_loop(selected):
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=selected)).eval()
    with torch.no_grad():
        model.encoder.tokenizer.gate.fill_(0.3)
        q = model.get_image_features(torch.randn(3, 3, 56, 56))
        k = model.get_image_features(torch.randn(4, 3, 56, 56))
        grid = model.relation_scores(q, k, chunk_size=5)
        loop = torch.stack(
            [
                torch.cat([model.relation_score(_row(q, i), _row(k, j)) for j in range(4)])
                for i in range(3)
            ]
        )
    assert grid.shape == (3, 4)
    assert torch.allclose(grid, loop, atol=1e-6)
    assert grid.std() > 0


def _row(f: ZseImageFeatures, i: int) -> ZseImageFeatures:
    return ZseImageFeatures(
        ret_embeds=f.ret_embeds[i : i + 1],
        local_tokens=f.local_tokens[i : i + 1],
        token_mask=f.token_mask[i : i + 1],
        grid_size=f.grid_size,
    )


def test_forward_outputs_and_cross_attention(tiny_model, pixels):
    out = tiny_model(pixels, pixels.flip(0), output_attentions=True)
    assert out.loss is None
    assert out.cosine.shape == (3,) and out.relation_scores.shape == (3,)
    assert torch.all((out.relation_scores > 0) & (out.relation_scores < 1))
    assert out.sketch_cross_attentions.shape == (3, 2, 16, 16)
    assert torch.allclose(out.sketch_cross_attentions.sum(-1), torch.ones(3, 2, 16), atol=1e-5)
    plain = tiny_model(pixels, pixels.flip(0))
    assert torch.allclose(plain.relation_logits, out.relation_logits, atol=1e-5)


def test_query_side_other_runs():
    torch.manual_seed(0)
    model = ZseModel(tiny_config(cross_attention_query_side="other")).eval()
    x = torch.randn(2, 3, 56, 56)
    out = model(x, x.flip(0))
    assert out.relation_scores.shape == (2,)


def test_one_step_lowers_loss():
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).train()
    sketches, photos, negatives = torch.randn(3, 4, 3, 56, 56)
    labels = torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss0 = model(sketches, photos, negatives, labels=labels).loss
    loss0.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        loss1 = model(sketches, photos, negatives, labels=labels).loss
    assert loss1 < loss0
    assert model.encoder.tokenizer.gate.abs().sum() > 0  # the gate opened


def test_in_batch_negatives_and_infonce():
    torch.manual_seed(0)
    model = ZseModel(tiny_config(infonce_weight=1.0)).eval()
    x = torch.randn(4, 3, 56, 56)
    out = model(x, x.flip(0), labels=torch.tensor([0, 0, 1, 1]))
    assert out.infonce_loss is not None and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="two classes"):
        model(x, x, labels=torch.zeros(4, dtype=torch.long))


def test_relation_rank_loss_is_listwise_cross_entropy():
    torch.manual_seed(0)
    model = ZseModel(tiny_config(relation_rank_weight=1.0)).eval()
    model.encoder.tokenizer.gate.data.fill_(0.3)
    sketches, photos = torch.randn(2, 4, 3, 56, 56)
    labels = torch.tensor([0, 1, 1, 2])
    out = model(sketches, photos, labels=labels)
    with torch.no_grad():
        logits = torch.logit(model.relation_scores(model.get_image_features(sketches),
                                                   model.get_image_features(photos)).double())
    expected = 0.0
    for i in range(4):  # same-class photos other than the own positive are left out
        keep = [j for j in range(4) if j == i or labels[j] != labels[i]]
        expected += -torch.log_softmax(logits[i, keep], 0)[keep.index(i)] / 4
    torch.testing.assert_close(out.relation_rank_loss.double(), expected, rtol=1e-4, atol=1e-4)
    no_rank = ZseModel(tiny_config()).eval()
    no_rank.load_state_dict(model.state_dict())
    base = no_rank(sketches, photos, labels=labels)
    assert base.relation_rank_loss is None
    torch.testing.assert_close(out.loss, base.loss + out.relation_rank_loss)
    out.loss.backward()
    assert model.relation_network.pool_conv.weight.grad.abs().sum() > 0


def test_bad_tensor_inputs(tiny_model, pixels):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_model.get_image_features(pixels[0])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_model.get_image_features(torch.randn(2, 1, 56, 56))
    with pytest.raises(TypeError, match="floating-point"):
        tiny_model.get_image_features(torch.zeros(2, 3, 56, 56, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_model.get_image_features(pixels.numpy())
    bad = pixels.clone()
    bad[0, 0, 0, 0] = float("nan")
    # values are not inspected (that would stop torch.export and sync the device on every
    # call; the processor rejects NaN images): a NaN stays in its own row
    out = tiny_model.get_image_features(bad)
    assert torch.isnan(out.ret_embeds[0]).all() and torch.isfinite(out.ret_embeds[1:]).all()
    with pytest.raises(ValueError, match="at least 14 px"):
        tiny_model.get_image_features(torch.randn(1, 3, 8, 8))
    a = tiny_model.get_image_features(pixels)
    b = tiny_model.get_image_features(pixels[:2])
    with pytest.raises(ValueError, match="equal batch sizes"):
        tiny_model.relation_score(a, b)
    with pytest.raises(TypeError, match="ZseImageFeatures"):
        tiny_model.relation_score(a, pixels)
    with pytest.raises(ValueError, match="labels"):
        tiny_model(pixels, pixels, labels=torch.tensor([0, 1]))


def test_bad_configs():
    with pytest.raises(ValueError, match="cross_attention_query_side"):
        tiny_config(cross_attention_query_side="both")
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(cross_attention_heads=5)
    with pytest.raises(ValueError, match="unsupported backbone"):
        ZseConfig(backbone_config={"model_type": "bert"})


def test_vit_backbone_and_its_normalisation():
    vit = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    patch_size=16, image_size=64)
    cfg = tiny_config(backbone_config=vit, image_size=64)
    assert cfg.image_mean == [0.5, 0.5, 0.5]
    model = ZseModel(cfg).eval()
    feats = model.get_image_features(torch.randn(2, 3, 64, 64))
    assert feats.grid_size == (4, 4)
    plain = model.encoder.backbone(pixel_values=torch.zeros(1, 3, 64, 64))
    zse = model.get_image_features(torch.zeros(1, 3, 64, 64))
    assert torch.allclose(zse.ret_embeds, F.normalize(plain.last_hidden_state[:, 0], dim=-1), atol=1e-6)


def test_default_config_is_dinov2_small():
    cfg = ZseConfig()
    bb = cfg.backbone_config
    assert (bb.model_type, bb.hidden_size, bb.num_attention_heads, bb.patch_size) == ("dinov2", 384, 6, 14)
    assert (cfg.relation_grid, cfg.relation_dim, cfg.relation_mlp_dims) == (7, 512, [343, 49])
    assert cfg.image_mean == [0.485, 0.456, 0.406]


def test_dinov2_weights_load_into_encoder(tmp_path):
    torch.manual_seed(0)
    bb_cfg = tiny_config().backbone_config
    plain = Dinov2Model(bb_cfg).eval()
    plain.save_pretrained(tmp_path / "dinov2")
    model = ZseModel.from_backbone(str(tmp_path / "dinov2"), **_head_kwargs()).eval()
    for key, value in plain.state_dict().items():
        assert torch.equal(model.encoder.backbone.state_dict()[key], value), key
    x = torch.randn(2, 3, 56, 56)
    ref = F.normalize(plain(pixel_values=x).pooler_output, dim=-1)
    assert torch.allclose(model.get_image_features(x).ret_embeds, ref, atol=1e-6)


def _head_kwargs():
    cfg = tiny_config()
    keys = ["image_size", "tokenizer_channels", "cross_attention_heads", "cross_attention_ffn_dim",
            "relation_grid", "relation_dim", "relation_mlp_dims"]
    return {k: getattr(cfg, k) for k in keys}


def test_save_load_round_trip_auto_classes(tmp_path, pixels):
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    with torch.no_grad():
        model.encoder.tokenizer.gate.normal_()
    model.save_pretrained(tmp_path)
    ZseProcessor.from_config(model.config).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_zse.ZseConfig", "AutoModel": "modeling_zse.ZseModel"}
    for name in ("configuration_zse.py", "modeling_zse.py", "processing_zse.py", "image_processing_zse.py"):
        assert (tmp_path / name).exists(), name
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())  # raw loaders need no mapping
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, ZseModel)
    assert_same_state(loaded.state_dict(), model.state_dict())
    assert torch.equal(model.get_image_features(pixels).ret_embeds, loaded.get_image_features(pixels).ret_embeds)
    proc = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(proc, ZseProcessor) and proc.image_processor.side == 56
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ZseConfig)


REMOTE_CODE_CHECK = textwrap.dedent(
    """
    import sys
    sys.modules["zse_hf"] = None  # the package must not be importable here
    import torch
    from transformers import AutoModel, AutoProcessor
    from PIL import Image, ImageDraw
    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    proc = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "zse_hf" not in type(model).__module__, type(model).__module__
    img = Image.new("RGB", (80, 60), "white")
    ImageDraw.Draw(img).line([(10, 10), (70, 50)], fill="black", width=3)
    inputs = proc(sketches=img, photos=img, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        feats = model.get_image_features(inputs["sketch_pixel_values"])
    torch.save({"ret": feats.ret_embeds, "rel": out.relation_scores, "px": inputs["sketch_pixel_values"],
                "state": model.state_dict()}, sys.argv[2])
    """
)


def test_trust_remote_code_without_package(tmp_path):
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).eval()
    with torch.no_grad():
        model.encoder.tokenizer.gate.normal_()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ZseProcessor.from_config(model.config).save_pretrained(folder)
    script = tmp_path / "check.py"
    script.write_text(REMOTE_CODE_CHECK)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "out.pt")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        feats = model.get_image_features(remote["px"])
        rel = model.relation_score(feats, feats)
    assert_same_state(remote["state"], model.state_dict())  # the remote code loaded these weights, bit for bit
    # computed in another process: equal up to summation order, not bit for bit
    assert_close_to_scale(remote["ret"], feats.ret_embeds)
    assert_close_to_scale(remote["rel"], rel)


# ----------------------------------------------------------------------------- transformers conventions


def test_pair_api_typed_outputs_and_indexed_pairs():
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=6)).eval()
    with torch.no_grad():
        model.encoder.tokenizer.gate.fill_(0.3)
        q = model.get_image_features(torch.randn(3, 3, 56, 56))
        k = model.get_image_features(torch.randn(4, 3, 56, 56))
        pair = model.score_pairs(q, k.select(slice(1, 4)), output_attentions=True, output_kernel=True)
        g = model.config.relation_grid
        assert isinstance(pair, ZsePairOutput) and pair.kernel.shape == (3, g * g, g * g)
        assert torch.equal(pair.relation_scores, torch.sigmoid(pair.relation_logits))
        assert pair.sketch_cross_attentions.shape == (3, 2, 16, 16)
        assert model.score_pairs(q, q).kernel is None and model.score_pairs(q, q).sketch_cross_attentions is None
        # the typed pieces the pair head is made of
        cross = model.cross_attention(q, q)
        assert isinstance(cross, ZseCrossAttentionOutput) and cross.sketch_tokens.shape == (3, 16, 32)
        relation = model.relation_network(cross)
        assert isinstance(relation, ZseRelationOutput)
        assert torch.equal(relation.logits, model.score_pairs(q, q).relation_logits)
        # any list of pairs, in chunks, from fp16 features stored on the side
        stored = ZseImageFeatures(local_tokens=k.local_tokens.half(), token_mask=k.token_mask, grid_size=k.grid_size)
        qi, ki = torch.tensor([2, 0, 1, 2, 0]), torch.tensor([3, 3, 0, 1, 2])
        got = model.score_indexed_pairs(q, stored, qi, ki, chunk_size=2)
        half = model.score_all_pairs(q, stored, chunk_size=5)
        assert torch.equal(got, half[qi, ki])
        full = model.score_all_pairs(q, k, chunk_size=3)
        assert_close_to_scale(half, full, rel=1e-2)  # only the fp16 storage differs
        assert torch.equal(model.relation_scores(q, k), full)  # the old name
        with pytest.raises(ValueError, match="equal length"):
            model.score_indexed_pairs(q, k, qi, ki[:2])


def test_get_image_features_transformers_contract(tiny_model, pixels):
    feats = tiny_model.get_image_features(pixels, output_hidden_states=True)
    assert feats.last_hidden_state.shape == (3, 17, 32)
    assert torch.equal(feats.pooler_output, feats.ret_embeds)
    assert len(feats.hidden_states) == 3 and feats.attentions is None
    as_tuple = tiny_model.get_image_features(pixels, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], feats.last_hidden_state)
    tiny_model.config.return_dict = False  # the config's default is honoured
    try:
        assert isinstance(tiny_model(pixels, pixels), tuple)
    finally:
        tiny_model.config.return_dict = True


def test_attention_implementation_is_switchable_and_eager_equals_sdpa(pixels):
    torch.manual_seed(0)
    model = ZseModel(tiny_config(num_selected_tokens=6)).eval()
    assert model.config._attn_implementation == "sdpa"
    calls = []
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return ALL_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)

    ALL_ATTENTION_FUNCTIONS.register("zse_counting", counting_sdpa)
    with torch.no_grad():
        sdpa = model(pixels, pixels.flip(0)).relation_logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        assert model.config.backbone_config._attn_implementation == "eager"
        eager = model(pixels, pixels.flip(0)).relation_logits
        model.config._attn_implementation_internal = "zse_counting"
        counted = model.score_pairs(*(model.get_image_features(pixels),) * 2).relation_logits
    assert len(calls) == 2  # both cross-attention layers read the registry
    assert torch.allclose(eager, sdpa, atol=1e-5) and counted.shape == (3,)


def test_no_unused_parameters_and_dinov2_mask_token_loads_clean(tmp_path):
    """The DINOv2 mask token (never used by ZSE) is not built, so every parameter gets a gradient
    (DDP with find_unused_parameters=False); checkpoints that carry it still load cleanly."""
    torch.manual_seed(0)
    model = ZseModel(tiny_config()).train()
    assert model.encoder.backbone.embeddings.mask_token is None
    with torch.no_grad():
        model.encoder.tokenizer.gate.fill_(0.3)
    x = torch.randn(4, 3, 56, 56)
    model(x, x.flip(0), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []
    bb_cfg = tiny_config().backbone_config
    bb_cfg.use_mask_token = True
    plain = Dinov2Model(bb_cfg)
    assert plain.embeddings.mask_token is not None
    plain.save_pretrained(tmp_path / "dinov2")
    built = ZseModel.from_backbone(str(tmp_path / "dinov2"), **_head_kwargs())
    assert built.encoder.backbone.embeddings.mask_token is None
    # a ZSE checkpoint saved with a mask token (older configs) loads without unexpected keys
    state = dict(model.state_dict(), **{"encoder.backbone.embeddings.mask_token": torch.zeros(1, 32)})
    model.save_pretrained(tmp_path / "zse")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "zse" / "model.safetensors"),
              metadata={"format": "pt"})
    loaded, info = ZseModel.from_pretrained(tmp_path / "zse", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert_same_state(loaded.state_dict(), model.state_dict())
