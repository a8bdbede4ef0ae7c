"""torch.export of ZseModel and of get_image_features, and the ONNX image encoder on onnxruntime."""

import pytest
import torch

from zse_hf import ZseModel
from zse_hf.conversion.onnx_export import ZseImageEncoder, export_image_encoder

from conftest import tiny_config


def _model(**overrides) -> ZseModel:
    torch.manual_seed(0)
    model = ZseModel(tiny_config(**overrides)).eval()
    with torch.no_grad():  # an open tokenizer gate, so the stem is part of what is compared
        model.encoder.tokenizer.gate.fill_(0.3)
    return model


def _pixels(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("selected", [None, 5])
def test_torch_export_of_the_pair_model_matches_eager(selected):
    model = _model(num_selected_tokens=selected)
    sketch, photo = _pixels(3, 1), _pixels(3, 2)
    with torch.no_grad():
        program = torch.export.export(
            model, args=(), kwargs={"sketch_pixel_values": sketch, "photo_pixel_values": photo}, strict=False
        )
        eager = model(sketch, photo)
        exported = program.module()(sketch_pixel_values=sketch, photo_pixel_values=photo)
    for key in ("cosine", "relation_logits", "relation_scores", "sketch_embeds", "photo_embeds"):
        torch.testing.assert_close(exported[key], eager[key], rtol=1e-5, atol=1e-6, msg=key)
    assert torch.equal(exported["sketch_token_mask"], eager.sketch_token_mask)
    if selected:
        assert exported["sketch_token_mask"].sum(1).tolist() == [selected] * 3


@pytest.mark.parametrize("selected", [None, 5])
def test_torch_export_of_get_image_features_with_dynamic_batch(selected):
    model = _model(num_selected_tokens=selected)
    program = export_image_encoder(model, batch_size=2, dynamic_batch=True)
    for batch in (1, 4):  # other batch sizes than the traced one
        x = _pixels(batch, 3 + batch)
        with torch.no_grad():
            ret, local, mask = program.module()(x)
            eager = model.get_image_features(x)
        torch.testing.assert_close(ret, eager.ret_embeds, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(local, eager.local_tokens, rtol=1e-5, atol=1e-6)
        assert torch.equal(mask, eager.token_mask)


def test_compiles_as_one_graph():
    """`torch.compile(fullgraph=True)` captures the encoder (with token selection) and the whole pair
    model without a graph break: no data-dependent Python branch is left."""
    model = _model(num_selected_tokens=5)
    x, y = _pixels(2, 1), _pixels(2, 2)
    encoder = ZseImageEncoder(model)
    with torch.no_grad():
        eager = model(x, y)  # first call eager: transformers installs its output-capturing hooks lazily
        ret, _, mask = torch.compile(encoder, fullgraph=True, backend="eager")(x)
        out = torch.compile(model, fullgraph=True, backend="eager")(x, y)
    torch.testing.assert_close(ret, model.get_image_features(x).ret_embeds, rtol=1e-5, atol=1e-6)
    assert torch.equal(mask, eager.sketch_token_mask)
    torch.testing.assert_close(out.relation_logits, eager.relation_logits, rtol=1e-5, atol=1e-6)


def test_onnx_image_encoder_matches_eager(tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs `pip install onnx onnxscript`")
    pytest.importorskip("onnxruntime", reason="serving the ONNX encoder needs `pip install onnxruntime`")
    from zse_hf.conversion.onnx_export import OnnxImageEncoder, export_image_encoder_onnx

    model = _model(num_selected_tokens=5)
    path = export_image_encoder_onnx(model, tmp_path / "encoder.onnx")
    encoder = OnnxImageEncoder(path, num_threads=1)
    assert encoder.image_size == 56
    for batch in (1, 3):
        x = _pixels(batch, 10 + batch)
        got = encoder(x)
        with torch.no_grad():
            want = model.get_image_features(x)
        torch.testing.assert_close(got.ret_embeds, want.ret_embeds, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.local_tokens, want.local_tokens, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.token_mask, want.token_mask) and got.grid_size == want.grid_size
    # the ONNX features feed the model's pair head like the model's own
    with torch.no_grad():
        x = _pixels(2, 20)
        onnx_scores = model.score_all_pairs(encoder(x), encoder(x))
        eager_scores = model.score_all_pairs(model.get_image_features(x), model.get_image_features(x))
    torch.testing.assert_close(onnx_scores, eager_scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 3, 56, 56\]"):
        encoder(torch.zeros(1, 3, 28, 28))
