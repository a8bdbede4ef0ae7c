"""CLIP towers: open_clip -> CLIPVisionModel conversion parity, ZSE on a CLIP tower, Hub path offline."""

import json
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, AutoProcessor, CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from zse_hf import ZseConfig, ZseModel, ZseProcessor
from zse_hf.conversion import open_clip as oc
from zse_hf.modeling_zse import backbone_blocks, backbone_embeddings

from hf_cache import make_hf_cache

WIDTH, LAYERS, HEADS, PATCH, IMAGE, OUT = 64, 2, 4, 16, 64, 32
ZSE_KW = dict(image_size=IMAGE, tokenizer_channels=[4, 8, 16], cross_attention_heads=2, cross_attention_ffn_dim=64,
              relation_grid=2, relation_dim=16, relation_mlp_dims=[8, 4])


# ----------------------------------------------------------------------------- open_clip reference


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """open_clip's block: same parameter names, `nn.MultiheadAttention` consumes `in_proj_weight`."""

    def __init__(self, width, heads, act):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=act(), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, act):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, act) for _ in range(layers))


class VisionTransformer(nn.Module):
    """open_clip's `VisionTransformer` (tok pooling, ln_post before pooling, `proj` matrix)."""

    def __init__(self, act=QuickGELU):
        super().__init__()
        scale = WIDTH ** -0.5
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=PATCH, stride=PATCH, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(scale * torch.randn((IMAGE // PATCH) ** 2 + 1, WIDTH))
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = Transformer(WIDTH, LAYERS, HEADS, act)
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(scale * torch.randn(WIDTH, OUT))
        with torch.no_grad():  # non-trivial norms and biases
            for name, p in self.named_parameters():
                if name.endswith("bias") or "ln" in name:
                    p.add_(0.1 * torch.randn_like(p))

    def forward(self, x):
        """`[B, 3, H, W]` -> `(tokens before ln_post [B, 1+N, W], pooled [B, W], embeds [B, OUT])`."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        pooled = self.ln_post(x)[:, 0]
        return x, pooled, pooled @ self.proj


def open_clip_checkpoint(act=QuickGELU, seed=0):
    """`(reference module, full CLIP state dict with visual.* and some text-tower keys)`."""
    torch.manual_seed(seed)
    ref = VisionTransformer(act).eval()
    state = {f"visual.{k}": v.detach().clone() for k, v in ref.state_dict().items()}
    state.update({  # text tower: must be ignored (its transformer.* keys look like the tower's)
        "token_embedding.weight": torch.randn(100, 32), "positional_embedding": torch.randn(16, 32),
        "transformer.resblocks.0.ln_1.weight": torch.ones(32), "text_projection": torch.randn(32, OUT),
        "logit_scale": torch.tensor(4.6),
    })
    return ref, state


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted OpenAI-style (QuickGELU) checkpoint: `(reference, folder, manifest)`."""
    tmp = tmp_path_factory.mktemp("oc")
    ref, state = open_clip_checkpoint()
    save_file(state, str(tmp / "ViT-B-16-openai.safetensors"))
    man = oc.convert(tmp / "ViT-B-16-openai.safetensors", tmp / "tower", heads=HEADS)  # width/64 would say 1
    return ref, tmp / "tower", man


def _pixels(n=3, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n, 3, IMAGE, IMAGE)


# ----------------------------------------------------------------------------- converter


def test_converted_tower_matches_open_clip(converted):
    ref, folder, man = converted
    assert man["act"] == "quick_gelu" and "openai" in man["act_reason"]
    assert (man["hidden_size"], man["num_hidden_layers"], man["num_attention_heads"]) == (WIDTH, LAYERS, HEADS)
    assert (man["patch_size"], man["image_size"], man["projection_dim"]) == (PATCH, IMAGE, OUT)
    assert man["parity_ok"] and man["parity_max_abs"] < 1e-5
    model = CLIPVisionModel.from_pretrained(folder).eval()
    assert model.config.hidden_act == "quick_gelu"
    head = oc.load_visual_projection(folder)
    x = _pixels()
    with torch.no_grad():
        tokens, pooled, embeds = ref(x)
        out = model(pixel_values=x)
        with_proj = oc.load_with_projection(folder)(pixel_values=x)
    assert (out.last_hidden_state - tokens).abs().max() < 1e-5
    assert (out.pooler_output - pooled).abs().max() < 1e-5
    assert (head(out.pooler_output) - embeds).abs().max() < 1e-5
    assert (with_proj.image_embeds - embeds).abs().max() < 1e-5
    assert (oc.reference_forward(oc.visual_state_dict(ref.state_dict()), x, HEADS)[1] - embeds).abs().max() < 1e-5
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == OPENAI_CLIP_MEAN and pre["image_std"] == OPENAI_CLIP_STD
    assert pre["crop_size"] == {"height": IMAGE, "width": IMAGE}


def test_gelu_towers_and_checkpoint_wrappers(tmp_path):
    """A LAION-style GELU tower in a training checkpoint (`state_dict`, `module.` prefix) via the CLI;
    the activation matters (converting it as QuickGELU does not match)."""
    ref, state = open_clip_checkpoint(act=nn.GELU, seed=3)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_3.pt")
    from zse_hf.cli import main as cli

    rc = cli(["convert-backbone", "--from-open-clip", str(tmp_path / "epoch_3.pt"), "--out", str(tmp_path / "a"),
              "--model-name", "ViT-B-16", "--heads", str(HEADS)])
    assert rc == 0
    assert json.loads((tmp_path / "a" / oc.MANIFEST_NAME).read_text())["act"] == "gelu"
    x = _pixels(2)
    with torch.no_grad():
        embeds = ref(x)[2]
        good = oc.load_with_projection(tmp_path / "a")(pixel_values=x).image_embeds
    assert (good - embeds).abs().max() < 1e-5
    # tower-only keys (no `visual.` prefix), wrong activation forced: converts, but does not match
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    torch.save(visual, tmp_path / "visual.bin")
    man = oc.convert(tmp_path / "visual.bin", tmp_path / "b", act="quick_gelu", heads=HEADS, check=False)
    assert man["act"] == "quick_gelu" and man["parity_max_abs"] is None
    with torch.no_grad():
        bad = oc.load_with_projection(tmp_path / "b")(pixel_values=x).image_embeds
    assert (bad - embeds).abs().max() > 1e-3


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_openai_torchscript_checkpoint(tmp_path):
    """OpenAI's original release is a TorchScript archive (torch.jit.trace is deprecated, not gone)."""
    ref, _ = open_clip_checkpoint(seed=5)

    class Clip(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = ref

        def forward(self, x):
            return self.visual(x)[2]

    torch.jit.trace(Clip().eval(), _pixels(1), check_trace=False).save(str(tmp_path / "ViT-B-16.pt"))
    man = oc.convert(tmp_path / "ViT-B-16.pt", tmp_path / "out", heads=HEADS)
    assert man["act"] == "quick_gelu" and man["act_reason"] == "OpenAI TorchScript checkpoint"
    assert man["parity_ok"] and man["parity_max_abs"] < 1e-5


def test_defaults_and_refusals(tmp_path):
    assert oc.default_act("ViT-B-16-quickgelu")[0] == "quick_gelu"
    assert oc.default_act("ViT-B-16", pretrained="openai")[0] == "quick_gelu"
    assert oc.default_act("ViT-B-16", checkpoint="/x/open_clip_pytorch_model.bin")[0] == "gelu"
    assert oc.default_heads(768, "ViT-B-16") == 12 and oc.default_heads(1280, "ViT-H-14-quickgelu") == 16
    assert oc.default_heads(1664, "ViT-bigG-14") == 16 and oc.default_heads(1024) == 16
    _, state = open_clip_checkpoint()
    layer_scale = {**state, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(WIDTH)}
    with pytest.raises(oc.ConversionError, match="ls_1"):
        oc.visual_state_dict(layer_scale)
    with pytest.raises(oc.ConversionError, match="ln_post"):
        oc.visual_state_dict({k: v for k, v in state.items() if "ln_post" not in k})
    with pytest.raises(oc.ConversionError, match="timm"):
        oc.visual_state_dict({"visual.trunk.patch_embed.proj.weight": torch.zeros(1)})
    rc = oc.main(["--from-open-clip", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")])
    try:
        import open_clip  # noqa: F401
    except Exception:  # noqa: BLE001 - not installable beside this torch: a clear error, exit 2
        assert rc == 2


# ----------------------------------------------------------------------------- ZSE on a CLIP tower


def test_zse_on_converted_tower_trains_saves_reloads(converted, tmp_path):
    _, folder, _ = converted
    torch.manual_seed(0)
    model = ZseModel.from_backbone(str(folder), num_selected_tokens=8, **ZSE_KW)
    cfg = model.config
    tower = CLIPVisionModel.from_pretrained(folder).eval()
    assert cfg.backbone_config.model_type == "clip_vision_model" and cfg.patch_size == PATCH
    assert isinstance(model.encoder.backbone, CLIPVisionModel) and model.encoder.is_clip
    for k, v in tower.state_dict().items():
        assert torch.equal(model.encoder.backbone.state_dict()[k], v), k
    assert len(backbone_blocks(model.encoder.backbone)) == LAYERS
    assert backbone_embeddings(model.encoder.backbone) is model.encoder.backbone.embeddings
    # processor: CLIP's mean/std; tokenizer stem lands on the 16-px grid without resizing
    proc = ZseProcessor.from_config(cfg)
    assert proc.image_processor.image_mean == OPENAI_CLIP_MEAN and proc.image_processor.image_std == OPENAI_CLIP_STD
    white = proc(photos=Image.new("RGB", (80, 80), "white"), return_tensors="pt")["photo_pixel_values"]
    expected = (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert white.shape == (1, 3, IMAGE, IMAGE) and torch.allclose(white[0, :, 5, 5], expected, atol=1e-5)
    x = _pixels(4)
    assert model.encoder.tokenizer.stem(x).shape[-2:] == (IMAGE // PATCH, IMAGE // PATCH)

    model.eval()
    with torch.no_grad():  # zero gate: [Ret] = CLIP's pooled (post-layernorm) class token
        feats = model.get_image_features(x, output_ret_attention=True)
        plain = tower(pixel_values=x)
    assert torch.allclose(feats.ret_embeds, F.normalize(plain.pooler_output, dim=-1), atol=1e-6)
    kept = feats.token_mask  # token selection: kept tokens as CLIP's, dropped ones never computed (0)
    expected = tower.post_layernorm(plain.last_hidden_state[:, 1:])
    assert torch.allclose(feats.local_tokens[kept], expected[kept], atol=1e-5)
    assert torch.all(feats.local_tokens[~kept] == 0)
    assert feats.grid_size == (4, 4) and feats.ret_attention.shape == (4, 16)
    assert feats.token_mask.sum(1).tolist() == [8] * 4

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = dict(sketch_pixel_values=x, photo_pixel_values=_pixels(4, 2), negative_pixel_values=_pixels(4, 3),
                 labels=torch.tensor([0, 1, 2, 3]))
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    gate = model.encoder.tokenizer.gate.grad
    assert gate is not None and gate.abs().sum() > 0
    assert model.cross_attention.sketch_layer.q_proj.weight.grad.abs().sum() > 0
    assert backbone_blocks(model.encoder.backbone)[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        assert model(**batch).loss < loss

    model.eval()
    model.save_pretrained(tmp_path / "zse")
    proc.save_pretrained(tmp_path / "zse")
    assert AutoProcessor.from_pretrained(tmp_path / "zse").image_processor.image_mean == OPENAI_CLIP_MEAN
    loaded = AutoModel.from_pretrained(tmp_path / "zse").eval()
    assert type(loaded) is ZseModel and loaded.config.backbone_config.model_type == "clip_vision_model"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(**batch).relation_logits, loaded(**batch).relation_logits)


def test_config_from_clip_vision_config():
    vc = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, patch_size=PATCH, image_size=IMAGE)
    cfg = ZseConfig(backbone_config=vc, **ZSE_KW)
    assert cfg.image_mean == OPENAI_CLIP_MEAN and cfg.image_std == OPENAI_CLIP_STD
    again = ZseConfig.from_dict(cfg.to_dict())
    assert isinstance(again.backbone_config, CLIPVisionConfig) and again.backbone_config.hidden_act == "quick_gelu"
    model = ZseModel(cfg).eval()
    assert isinstance(model.encoder.backbone, CLIPVisionModel)


def test_from_backbone_full_clip_model_folder(converted, tmp_path):
    _, folder, _ = converted
    vision = CLIPVisionModel.from_pretrained(folder).config.to_dict()
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=OUT))
    full.save_pretrained(tmp_path / "clip")
    model = ZseModel.from_backbone(str(tmp_path / "clip"), **ZSE_KW)
    for k, v in full.vision_model.state_dict().items():
        assert torch.equal(model.encoder.backbone.state_dict()[k], v), k


HUB_CHECK = textwrap.dedent("""
    import sys, torch
    from transformers import CLIPVisionModel
    from zse_hf import ZseModel
    model = ZseModel.from_backbone("openai/clip-vit-base-patch16", image_size=64, tokenizer_channels=[4, 8, 16],
                                   cross_attention_heads=2, cross_attention_ffn_dim=64, relation_grid=2,
                                   relation_dim=16, relation_mlp_dims=[8, 4])
    ref = CLIPVisionModel.from_pretrained(sys.argv[1])
    sd = model.encoder.backbone.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())
    assert model.config.backbone_config.model_type == "clip_vision_model"
    print("OK", model.config.image_mean)
""")


def test_from_backbone_hub_id_offline(converted, tmp_path):
    """`from_backbone("openai/clip-vit-base-patch16")` through an on-disk HF cache, offline."""
    _, folder, _ = converted
    make_hf_cache(tmp_path / "hf", "openai/clip-vit-base-patch16", folder)
    (tmp_path / "check.py").write_text(HUB_CHECK)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(folder)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")
