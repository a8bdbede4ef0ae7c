"""The reviewed list of the Tux Paint stamps outside ``photos.csv`` (``stamps_review.csv``).

Each of the package's other stamps was looked at on contact sheets and given a kind: ``photo``
(a real photo of an object, usable for instance-level training pairs and as extra negatives),
``drawing`` (cartoon, clip art, symbol, letter, sign), ``not-an-object`` (fireworks and such), or
``unseen-concept`` (a photo that depicts, or closely resembles, one of the 63 unseen concepts:
such stamps must never reach training). A usable photo that depicts or closely resembles a
training class names it in ``training_lookalike`` (never a negative for that class). These
tests keep the list consistent with the split and with the package it was made from.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from importlib import resources

import pytest

from conftest import asset_root

KINDS = {"photo", "drawing", "not-an-object", "unseen-concept"}


def _package_text(name: str) -> str:
    return resources.files("zse_hf").joinpath("data", name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def review() -> list[dict]:
    return list(csv.DictReader(_package_text("stamps_review.csv").splitlines()))


@pytest.fixture(scope="module")
def unseen() -> list[str]:
    return json.loads(_package_text("split.json"))["unseen_all"]


def test_rows_are_well_formed(review, unseen):
    assert len(review) == 630
    assert len({r["stamp_path"] for r in review}) == len(review)
    for r in review:
        assert r["kind"] in KINDS, r
        assert re.fullmatch(r"[0-9a-f]{64}", r["sha256"]), r
        assert (r["kind"] == "unseen-concept") == bool(r["unseen_concept"]), r
        if r["unseen_concept"]:
            assert r["unseen_concept"] in unseen, r


def test_training_lookalikes_name_training_classes_of_usable_photos(review):
    train = set(json.loads(_package_text("split.json"))["train"])
    marked = {r["stamp_path"]: set(r["training_lookalike"].split(";")) for r in review if r["training_lookalike"]}
    assert len(marked) == 39
    for r in review:
        if r["training_lookalike"]:
            assert r["kind"] == "photo", r
            assert set(r["training_lookalike"].split(";")) <= train, r
    # from the contact sheets: look-alikes marked, a mere namesake not
    for path, cls in [("animals/birds/hen.png", "bird"), ("household/kettle.png", "teapot"),
                      ("household/rubberduck.png", "duck"), ("town/uk_post_box.png", "mailbox"),
                      ("vehicles/7spoke256.png", "wheel")]:
        assert cls in marked[path], path
    assert "animals/mammals/aquatic/sea_lion.png" not in marked


def test_second_review_moved_the_close_lookalikes_of_unseen_concepts(review):
    """A second review of the contact sheets: these photos resemble an unseen concept (three
    of them a test class) as closely as a bison does a cow, so they never reach training."""
    kind = {r["stamp_path"]: (r["kind"], r["unseen_concept"]) for r in review}
    for path, concept in [("animals/mammals/hippopotamus.png", "rhinoceros"),
                          ("animals/marsupials/koala.png", "teddy-bear"), ("plants/trees/pinecone.png", "pineapple"),
                          ("vehicles/construction/dumper.png", "tractor"),
                          ("vehicles/construction/dumper_mirror.png", "tractor"),
                          ("animals/mammals/badger.png", "raccoon")]:
        assert kind[path] == ("unseen-concept", concept), path


def test_usable_photos_are_not_unseen_concepts_by_name(review, unseen):
    """A safety net under the visual review: no usable stamp's path names an unseen concept."""
    usable = [r for r in review if r["kind"] == "photo"]
    assert len(usable) == 170
    for r in usable:
        words = set(re.split(r"[^a-z]+", r["stamp_path"].lower()))
        named = [u for u in unseen if set(re.split(r"[^a-z]+", u)) <= words]
        assert not named, (r["stamp_path"], named)


def test_disjoint_from_the_reviewed_photo_table(review):
    table = list(csv.DictReader(_package_text("photos.csv").splitlines()))
    assert not {r["stamp_path"] for r in table} & {r["stamp_path"] for r in review}
    assert not {r["sha256"] for r in table} & {r["sha256"] for r in review}


@pytest.mark.slow
def test_covers_every_stamp_of_the_package_with_its_hash(review):
    from zse_hf import assets

    root = asset_root(assets.tuxpaint_root)
    table = {r["stamp_path"] for r in csv.DictReader(_package_text("photos.csv").splitlines())}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    assert on_disk == table | {r["stamp_path"] for r in review}
    for r in review:
        assert hashlib.sha256((root / r["stamp_path"]).read_bytes()).hexdigest() == r["sha256"], r["stamp_path"]


def test_the_shipped_model_trained_on_no_unseen_concept_stamp(review):
    """`hub_card/training_summary.json` records the exact stamps its run could draw (path and
    sha256, relative paths only): every one is a usable photo of the current review, none an
    unseen-concept look-alike, and no absolute path of the training machine is recorded."""
    from pathlib import Path

    summary_path = Path(__file__).resolve().parents[1] / "hub_card" / "training_summary.json"
    summary = json.loads(summary_path.read_text())
    by_path = {r["stamp_path"]: r for r in review}
    stage = summary
    while stage is not None:  # the run, then the run it was warm-started from, and so on
        config = stage["config"]
        if config.get("stamp_pair_prob") or config.get("stamp_negative_prob"):
            assert stage.get("stamps"), "a run with stamps must record which ones it drew from"
        for stamp in stage.get("stamps", []):
            row = by_path[stamp["path"]]
            assert row["kind"] == "photo" and not row["unseen_concept"], stamp["path"]
            assert stamp["sha256"] == row["sha256"], stamp["path"]
        if config.get("init_from"):
            assert stage.get("init_from_summary"), "a warm start must record the summary of what it started from"
        stage = stage.get("init_from_summary") if config.get("init_from") else None

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    assert not [s for s in strings(summary) if s.startswith("/")]
