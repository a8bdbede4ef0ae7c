"""Pre-rendered training inputs: the same triplets with and without the cache, in loader
workers too; the file is reused, rebuilt when damaged, and keyed by its settings."""

import os

import numpy as np
import pytest
import torch

from zse_hf.data import stamps
from zse_hf.data.render_cache import RenderCache, attach_render_cache, attach_triplet_caches
from zse_hf.data.triplets import collate_triplets
from zse_hf.training import TrainConfig, build_datasets

pytestmark = pytest.mark.slow  # needs the real QuickDraw / Tux Paint data

N = 24


@pytest.fixture
def few_stamps(monkeypatch):
    records = stamps.usable_stamp_records()[:6]
    monkeypatch.setattr(stamps, "usable_stamp_records", lambda: list(records))


def _triplets(**kw):
    cfg = TrainConfig(image_size=56, relation_grid=2, batch_size=4, max_steps=6, pseudo_sketch_prob=0.5,
                      correspondence_weight=1.0, correspondence_fraction=0.5, stamp_pair_prob=0.3,
                      stamp_negative_prob=0.2, **kw)
    return build_datasets(cfg, num_triplets=N)[0]


def _pixels(item):
    out = {k: np.asarray(item[k]) for k in ("sketch", "positive", "negative")}
    if item["correspondence"] is not None:
        out.update({f"c_{k}": np.asarray(v) for k, v in item["correspondence"].items()})
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_cached_triplets_are_the_uncached_ones(few_stamps, tmp_path):
    plain = _triplets()
    cached = _triplets()
    caches = attach_triplet_caches(cached, folder=tmp_path, progress=False)
    assert len(caches) == 2 and all(isinstance(c, RenderCache) for c in caches)
    assert caches[0].sketch_size == 112 and caches[0].pair_size == 56
    kinds = set()
    for i in range(N):
        a, b = plain[i], cached[i]
        kinds |= {a["sketch_id"].split(":")[0] if a["pseudo"] else "quickdraw", a["negative_id"][:6]}
        kinds |= {"pair"} if a["correspondence"] is not None else set()
        assert {k: a[k] for k in ("sketch_id", "positive_id", "negative_id", "label")} == \
               {k: b[k] for k in ("sketch_id", "positive_id", "negative_id", "label")}
        _same(_pixels(a), _pixels(b))
    # the stream exercised every cached kind: pseudo anchors, stamp pairs/negatives, warped pairs
    assert {"pseudo", "quickdraw", "extra:", "pair"} <= kinds
    assert cached.photos._cache is None  # the file replaces the per-process decoded copies


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_read_the_cache(few_stamps, tmp_path, context):
    plain = _triplets()
    cached = _triplets()
    attach_triplet_caches(cached, folder=tmp_path, progress=False)
    loader = torch.utils.data.DataLoader(cached, batch_size=4, num_workers=2, collate_fn=collate_triplets,
                                         multiprocessing_context=context)
    got = [it for batch in loader for it in zip(batch["sketch"], batch["positive"], batch["negative"])]
    assert len(got) == N
    for i, (sk, pos, neg) in enumerate(got):
        ref = plain[i]
        for x, y in ((sk, ref["sketch"]), (pos, ref["positive"]), (neg, ref["negative"])):
            assert np.array_equal(np.asarray(x), np.asarray(y)), i


def test_cache_file_is_reused_rebuilt_when_damaged_and_keyed_by_size(few_stamps, tmp_path):
    photos = _triplets().extra_photos
    first = attach_render_cache(photos, 64, 32, folder=tmp_path, progress=False)
    stamp = first.path.stat().st_mtime_ns
    again = attach_render_cache(_triplets().extra_photos, 64, 32, folder=tmp_path, progress=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp  # not rendered again
    other = attach_render_cache(_triplets().extra_photos, 96, None, folder=tmp_path, progress=False)
    assert other.path != first.path and other.pair_size is None
    with pytest.raises(KeyError, match="no correspondence pairs"):
        other.square_pair(0)
    with pytest.raises(IndexError):
        first.rgba(len(photos))
    expected = np.asarray(first.pseudo_sketch(1))
    damaged = tmp_path / "damaged"
    damaged.write_bytes(first.path.read_bytes()[:100])  # a copy cut short, a bad disk
    os.replace(damaged, first.path)
    rebuilt = attach_render_cache(_triplets().extra_photos, 64, 32, folder=tmp_path, progress=False)
    assert rebuilt.path == first.path and rebuilt.num_photos == len(photos)
    assert np.array_equal(np.asarray(rebuilt.pseudo_sketch(1)), expected)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert rebuilt.path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other cache file


def test_training_builds_the_cache_when_asked(few_stamps, tmp_path, monkeypatch):
    from zse_hf.data import render_cache

    monkeypatch.setattr(render_cache, "default_folder", lambda: tmp_path / "render")
    triplets = _triplets(render_cache=True)
    assert triplets.photos.render_cache is not None and triplets.extra_photos.render_cache is not None
    assert sorted(p.suffix for p in (tmp_path / "render").iterdir()) == [".safetensors", ".safetensors"]
    assert _triplets().photos.render_cache is None  # off by default
