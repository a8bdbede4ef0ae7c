"""`zse-sbir soup`: weight averaging of models that share an architecture."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from zse_hf import ZseModel
from zse_hf.assets import sha256_file
from zse_hf.training.soup import SoupError, check_ingredients, main, make_soup, save_soup

from conftest import save_tiny_model, tiny_config


@pytest.fixture
def three(tmp_path):
    """Three tiny models from different seeds (same architecture), saved."""
    folders = [tmp_path / f"m{k}" for k in range(3)]
    for k, folder in enumerate(folders):
        save_tiny_model(folder, seed=k)
    return folders


def _state(folder):
    return load_file(str(folder / "model.safetensors"))


def test_uniform_and_weighted_average(three):
    states = [_state(f) for f in three]
    soup = make_soup(three, progress=False).state_dict()
    for name, t in states[0].items():
        expected = (states[0][name].double() + states[1][name].double() + states[2][name].double()) / 3
        torch.testing.assert_close(soup[name].double(), expected, rtol=0, atol=1e-6)
    # weights are normalised; a zero weight leaves a model out
    half = make_soup(three, weights=[2.0, 2.0, 0.0], progress=False).state_dict()
    for name in states[0]:
        expected = (states[0][name].double() + states[1][name].double()) / 2
        torch.testing.assert_close(half[name].double(), expected, rtol=0, atol=1e-6)


def test_soup_of_one_model_with_itself_is_that_model(three, pixels):
    original = ZseModel.from_pretrained(str(three[0])).eval()
    soup = make_soup([three[0], three[0]], progress=False)
    for name, t in original.state_dict().items():
        assert torch.equal(soup.state_dict()[name], t), name
    with torch.no_grad():
        a, b = original.get_image_features(pixels), soup.get_image_features(pixels)
    torch.testing.assert_close(a, b)


def test_float16_and_float32_ingredients_average_in_float32(three):
    half = {k: v.half() for k, v in _state(three[1]).items()}
    save_file(half, str(three[1] / "model.safetensors"), metadata={"format": "pt"})
    state = make_soup(three[:2], progress=False).state_dict()
    a = _state(three[0])
    for name, t in a.items():
        assert state[name].dtype == torch.float32
        expected = (t.double() + half[name].double()) / 2
        torch.testing.assert_close(state[name].double(), expected, rtol=0, atol=1e-6)


def test_refuses_what_cannot_be_averaged(three, tmp_path):
    with pytest.raises(SoupError, match="at least two"):
        check_ingredients(three[:1])
    with pytest.raises(SoupError, match="not a saved ZSE model"):
        check_ingredients([three[0], tmp_path / "nowhere"])
    other = tmp_path / "grid3"
    torch.manual_seed(0)
    ZseModel(tiny_config(relation_grid=3)).save_pretrained(other)
    with pytest.raises(SoupError, match="relation_grid"):
        check_ingredients([three[0], other])
    size = tmp_path / "px70"
    ZseModel(tiny_config(image_size=70)).save_pretrained(size)
    with pytest.raises(SoupError, match="image_size"):
        check_ingredients([three[0], size])
    # loss weights may differ: they do not shape the network
    loss = tmp_path / "loss"
    ZseModel(tiny_config(triplet_weight=0.5, correspondence_weight=1.0)).save_pretrained(loss)
    assert len(check_ingredients([three[0], loss])) == 2
    # same architecture but a tensor removed: refused with its name
    cut = tmp_path / "cut"
    save_tiny_model(cut)
    state = _state(cut)
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(cut / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SoupError, match="other tensors"):
        check_ingredients([three[0], cut])
    with pytest.raises(SoupError, match="non-negative"):
        make_soup(three[:2], weights=[1.0, -1.0], progress=False)
    for bad in (float("nan"), float("inf")):  # a NaN weight would save a NaN soup
        with pytest.raises(SoupError, match="finite"):
            make_soup(three[:2], weights=[bad, 1.0], progress=False)


def test_save_soup_writes_a_loadable_model_and_summary(three, tmp_path, pixels):
    from transformers import AutoModel

    import zse_hf  # noqa: F401  (registers the Auto classes)

    out = save_soup(three, tmp_path / "soup", progress=False)
    summary = json.loads((out / "soup_summary.json").read_text())
    assert [i["model"] for i in summary["ingredients"]] == [str(f) for f in three]
    assert [i["sha256"] for i in summary["ingredients"]] == [sha256_file(f / "model.safetensors") for f in three]
    assert sum(i["weight"] for i in summary["ingredients"]) == pytest.approx(1.0)
    loaded = AutoModel.from_pretrained(str(out)).eval()
    expected = make_soup(three, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_image_features(pixels), expected.get_image_features(pixels))
    assert (out / "preprocessor_config.json").is_file() or (out / "processor_config.json").is_file()
    assert not (tmp_path / "soup.tmp").exists() and not (tmp_path / "soup.old").exists()
    with pytest.raises(SoupError, match="exists"):
        save_soup(three, out, progress=False)
    save_soup(three[:2], out, overwrite=True, progress=False)
    assert len(json.loads((out / "soup_summary.json").read_text())["ingredients"]) == 2
    assert not (tmp_path / "soup.old").exists()


def test_cli(three, tmp_path, capsys):
    out = tmp_path / "cli"
    args = [a for f in three[:2] for a in ("--model", str(f))]
    assert main([*args, "--weight", "3", "--weight", "1", "--out", str(out)]) == 0
    weights = [i["weight"] for i in json.loads((out / "soup_summary.json").read_text())["ingredients"]]
    assert weights == [0.75, 0.25]
    with pytest.raises(SystemExit):  # one weight for two models
        main([*args, "--weight", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):  # exists
        main([*args, "--out", str(out)])
    assert "exists" in capsys.readouterr().err
