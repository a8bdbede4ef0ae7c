"""The natural photos from Debian ``gcompris-qt-data``: the ``.rcc`` reader, the name filter that keeps
the unseen concepts unopened, and the reviewed table ``natural_photos.csv``.

The reader is tested on real ``.rcc`` bytes written here per Qt's documented layout (no mocks);
the tests marked ``slow`` read the pinned package itself (fetched and cached on first use).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import struct
import zlib
from importlib import resources

import pytest
from PIL import Image

from zse_hf import assets
from zse_hf.data import natural_photos as npm
from zse_hf.data.natural_photos import (
    DENY_PATHS,
    DENY_TERMS,
    DeniedResourceError,
    deny_reason,
    extract_resource,
    is_denied,
    natural_photo_records,
)
from zse_hf.data.rcc import RccError, RccFile

from conftest import asset_root

A = "gcompris/src/activities/"


def _package_text(name: str) -> str:
    return resources.files("zse_hf").joinpath("data", name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def split() -> dict:
    return json.loads(_package_text("split.json"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return list(csv.DictReader(_package_text("natural_photos.csv").splitlines()))


@pytest.fixture(scope="module")
def denied_rows() -> list[dict]:
    return list(csv.DictReader(_package_text("natural_photos_denied.csv").splitlines()))


# -- a .rcc writer, independent of the reader: Qt's layout (header, data, names, tree) ---------------

def _qt_hash(name: str) -> int:
    h = 0
    for ch in name:
        h = ((h << 4) + ord(ch)) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def write_rcc(files: dict[str, bytes], version: int = 3, zlib_paths: frozenset[str] = frozenset()) -> bytes:
    """Bytes of a Qt binary resource file holding ``files``; the paths in ``zlib_paths`` are stored as
    ``qCompress`` records (big-endian uncompressed size, then a zlib stream)."""
    tree: dict = {}
    for path in files:
        *dirs, leaf = path.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = path
    data, names, name_at = bytearray(), bytearray(), {}

    def name_offset(name: str) -> int:
        if name not in name_at:
            name_at[name] = len(names)
            names.extend(struct.pack(">HI", len(name), _qt_hash(name)) + name.encode("utf-16-be"))
        return name_at[name]

    # rcc numbers nodes breadth-first; a directory's children are contiguous, sorted by name hash
    nodes: list[tuple[str, object]] = [("", tree)]
    records = []
    i = 0
    while i < len(nodes):
        name, payload = nodes[i]
        name_off = name_offset(name) if name else 0
        if isinstance(payload, dict):
            children = sorted(payload.items(), key=lambda kv: _qt_hash(kv[0]))
            records.append(struct.pack(">IHII", name_off, 0x02, len(children), len(nodes)))
            nodes.extend(children)
        else:
            blob = files[payload]
            flags = 0
            if payload in zlib_paths:
                blob, flags = struct.pack(">I", len(blob)) + zlib.compress(blob, 9), 0x01
            records.append(struct.pack(">IHHHI", name_off, flags, 0, 1, len(data)))
            data.extend(struct.pack(">I", len(blob)) + blob)
        if version >= 2:
            records[-1] += struct.pack(">Q", 1_700_000_000_000)  # last-modified, ms
        i += 1
    header_size = 24 if version >= 3 else 20
    data_off = header_size
    names_off = data_off + len(data)
    tree_off = names_off + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 0x01 if zlib_paths else 0)
    return header + bytes(data) + bytes(names) + b"".join(records)


def _png_bytes(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (7, 5), colour).save(buf, format="PNG")
    return buf.getvalue()


FILES = {
    "gcompris/src/activities/demo/resource/readme.txt": b"hello, rcc\n" * 40,
    "gcompris/src/activities/demo/resource/images/red.png": _png_bytes(),
    "gcompris/src/activities/demo/resource/images/empty.bin": b"",
    "gcompris/src/activities/demo/resource/\u00e9t\u00e9.json": '{"saison": "\u00e9t\u00e9"}'.encode(),
    "gcompris/top.qml": b"import QtQuick 2.12\n",
}


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("compressed", ["none", "some", "all"])
def test_rcc_round_trip(tmp_path, version, compressed):
    zipped = {"none": frozenset(), "all": frozenset(FILES),
              "some": frozenset({"gcompris/src/activities/demo/resource/readme.txt",
                                 "gcompris/src/activities/demo/resource/images/red.png"})}[compressed]
    path = tmp_path / "demo.rcc"
    path.write_bytes(write_rcc(FILES, version=version, zlib_paths=zipped))
    rcc = RccFile(path)
    assert rcc.version == version
    assert rcc.paths() == sorted(FILES)
    for p, blob in FILES.items():
        assert rcc.read(p) == blob
        assert rcc.read(":/" + p) == blob
        assert rcc.entries()[p].compression == ("zlib" if p in zipped else "none")
    with Image.open(io.BytesIO(rcc.read("gcompris/src/activities/demo/resource/images/red.png"))) as im:
        assert im.size == (7, 5) and im.convert("RGB").getpixel((3, 2)) == (200, 30, 30)
    with pytest.raises(RccError):
        rcc.read("gcompris/nothing.txt")


def test_rcc_listing_reads_no_data(tmp_path):
    """Listing uses the tree and names only: with every data byte overwritten, the paths still list,
    while reading an entry fails."""
    raw = bytearray(write_rcc(FILES, zlib_paths=frozenset(FILES)))
    _, _, data_off, names_off = struct.unpack(">4I", raw[4:20])
    raw[data_off:names_off] = b"\xff" * (names_off - data_off)
    path = tmp_path / "scrambled.rcc"
    path.write_bytes(bytes(raw))
    rcc = RccFile(path)
    assert rcc.paths() == sorted(FILES)
    with pytest.raises(RccError):
        rcc.read("gcompris/top.qml")


def test_rcc_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.rcc"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(RccError, match="magic"):
        RccFile(bad)
    future = tmp_path / "v9.rcc"
    future.write_bytes(b"qres" + struct.pack(">5I", 9, 24, 24, 24, 0) + b"\x00" * 16)
    with pytest.raises(RccError, match="version"):
        RccFile(future)


# -- the name filter ------------------------------------------------------------------------------

def test_deny_terms_cover_every_unseen_concept(split):
    assert set(split["unseen_all"]) <= set(DENY_TERMS)
    for concept in split["unseen_all"]:
        for name in (concept, concept.replace(" ", "_"), concept.title().replace(" ", "").replace("-", ""),
                     concept.replace(" ", "-") + "s"):
            assert deny_reason(f"{A}some/resource/{name}.webp") == concept, name


@pytest.mark.parametrize("name, concept", [
    ("flying_fox", "bat"), ("fruitBat", "bat"), ("bats", "bat"), ("flyingfox2", "bat"),
    ("calf", "cow"), ("calves", "cow"), ("bull", "cow"), ("oxen", "cow"), ("cattle", "cow"), ("bison", "cow"),
    ("pony", "horse"), ("ponies", "horse"), ("foal", "horse"), ("stallion", "horse"), ("mare", "horse"),
    ("donkey", "horse"), ("jumentmulassieregc", "horse"),
    ("sneaker", "shoe"), ("sneakers", "shoe"), ("boots", "shoe"), ("sandals", "shoe"),
    ("mobilePhone", "telephone"), ("cell_phone", "telephone"), ("desk", "table"), ("lamp_post", "streetlight"),
    ("lamppost", "streetlight"), ("toucan", "parrot"), ("scarlet_macaw", "parrot"), ("parakeet", "parrot"),
    ("cockatoo", "parrot"), ("budgie", "parrot"), ("lorikeet", "parrot"), ("rat", "mouse"), ("hamster", "mouse"),
    ("dromedary", "camel"), ("alpaca", "camel"), ("orca", "dolphin"), ("whale", "dolphin"), ("narwhal", "dolphin"),
    ("koala", "teddy-bear"), ("hippopotamus", "rhinoceros"), ("mug", "cup"), ("teacup", "cup"),
    ("red_panda", "raccoon"), ("meerkats", "squirrel"), ("caterpillar", "butterfly"), ("coconut", "palm tree"),
    ("FanoeWindmill_0", "windmill"), ("wind_turbine", "windmill"), ("TowerBridgeLondon", "bridge"),
    ("pontduGard", "bridge"), ("empireState", "skyscraper"), ("pan", "frying pan"), ("manta", "ray"),
    ("hen", "chicken"), ("rooster", "chicken"), ("chicks", "chicken"), ("gosling", "chicken"),
    ("turkey", "chicken"), ("seagull", "seagull"), ("black-headed-gull", "seagull"), ("deer", "deer"),
    ("caribou", "deer"), ("reindeer", "deer"), ("moose", "deer"), ("elk", "deer"), ("tank", "tank"),
    ("windows", "window"), ("volcano", "volcano"), ("cabin", "cabin"), ("kingfisher", "songbird"),
    ("sparrow", "songbird"), ("girafegc", "giraffe"), ("rhinogc", "rhinoceros"),
])
def test_deny_filter_catches_synonyms(name, concept):
    assert deny_reason(f"{A}erase/resource/{name}.webp") == concept


@pytest.mark.parametrize("name", ["bird", "animal", "fruit", "bugs", "insect", "vehicle", "furniture"])
def test_deny_filter_catches_broad_file_names(name):
    assert deny_reason(f"{A}lang/resource/words_sample/{name}.webp") == f"broad name: {name.rstrip('s')}"


@pytest.mark.parametrize("path", [
    "categorization/resource/images/tools/hammer1.webp",  # folder "tools" is not a broad file name
    "explore_farm_animals/resource/animals/sheep.webp",  # nor is folder "animals"
    "categorization/resource/images/fishes/fish17.webp",
    "lang/resource/words_sample/elephant.webp",  # "ant" only as a word
    "erase/resource/flamingo.webp",
    "lang/resource/words_sample/apple.webp",  # "pineapple" is denied, "apple" is not
    "lang/resource/words_sample/mother.webp",  # "moth" only as a word
    "categorization/resource/images/others/basketball.webp",
    "explore_monuments/resource/france/eiffelTower.webp",
    "explore_world_animals/resource/animals/polar_bear.webp",
    "street/resource/crown.webp",  # "tree" and "crow" only as words
])
def test_deny_filter_keeps_safe_names(path):
    assert deny_reason(A + path) is None


def test_deny_paths_are_exact():
    for path, (concept, why) in DENY_PATHS.items():
        assert deny_reason(path) == concept and deny_reason(":/" + path) == concept
        assert why
    assert deny_reason(A + "lang/resource/words_sample/kangaroo.webp") is None  # only that kangaroo photo
    assert deny_reason(A + "lang/resource/words_sample/panda.webp") is None


def test_extractor_refuses_denied_names_before_reading(tmp_path):
    path = tmp_path / "zoo.rcc"
    path.write_bytes(write_rcc({A + "erase/resource/flying_fox.webp": b"not read",
                                A + "erase/resource/crab.webp": b"crab bytes"}))
    with pytest.raises(DeniedResourceError, match="bat"):
        extract_resource(path, A + "erase/resource/flying_fox.webp")
    # refused before the file is touched: a missing file gives the same answer, not FileNotFoundError
    with pytest.raises(DeniedResourceError):
        extract_resource(tmp_path / "missing.rcc", A + "erase/resource/flying_fox.webp")
    assert extract_resource(path, A + "erase/resource/crab.webp") == b"crab bytes"


# -- the reviewed table ---------------------------------------------------------------------------

def test_natural_photos_csv_is_clean(rows, split):
    unseen = set(split["unseen_all"])
    assert len(rows) == 83
    assert list(rows[0]) == ["class", "rcc_file", "resource_path", "sha256", "licence", "upstream_licence",
                             "upstream_source"]
    assert len({r["resource_path"] for r in rows}) == len(rows)
    assert len({r["sha256"] for r in rows}) == len(rows)
    for r in rows:
        assert r["class"] not in unseen, r
        assert deny_reason(r["resource_path"]) is None, r
        assert re.fullmatch(r"[0-9a-f]{64}", r["sha256"]), r
        assert r["rcc_file"].endswith(".rcc") and r["resource_path"].startswith(A), r
        assert r["licence"] in {"GPL-3", "GPL-3+"}, r


def test_natural_photos_counts(rows, split):
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    train = set(split["train"])
    assert len(counts) == 29
    assert sum(n for c, n in counts.items() if c in train) == 51  # 11 of today's training classes
    assert sorted(c for c in counts if c in train) == ["bear", "bird", "dog", "duck", "fish", "hammer", "monkey",
                                                       "owl", "pig", "pliers", "sheep"]
    assert counts["fish"] == 28 and counts["castle"] == 6 and counts["hammer"] == 8


def test_denied_list_matches_the_filter(denied_rows, rows):
    assert len(denied_rows) == 170
    assert list(denied_rows[0]) == ["rcc_file", "resource_path", "concept", "rule"]
    accepted = {r["resource_path"] for r in rows}
    for d in denied_rows:
        assert deny_reason(d["resource_path"]) == d["concept"], d
        assert d["resource_path"] not in accepted
        assert (d["rule"] == "name") == (d["resource_path"] not in DENY_PATHS), d
    assert {d["resource_path"] for d in denied_rows} >= set(DENY_PATHS)


def test_loader_api(rows):
    records = natural_photo_records()
    assert [r.resource_path for r in records] == [r["resource_path"] for r in rows]
    fish = natural_photo_records(["fish"])
    assert len(fish) == 28 and {r.class_name for r in fish} == {"fish"}
    assert natural_photo_records("castle") == natural_photo_records(["castle"])
    assert natural_photo_records([]) == []
    grouped = npm.natural_photos_by_class(["cat", "dog"])
    assert sorted(grouped) == ["cat", "dog"] and len(grouped["cat"]) == 2
    assert npm.natural_photo_classes()[:3] == ["The Eiffel Tower", "The Great Wall of China", "baseball"]
    rec = records[0]
    assert rec.id == f"{rec.rcc_file}:{rec.resource_path}"
    with pytest.raises(AttributeError):
        rec.class_name = "cow"  # frozen


@pytest.mark.slow
def test_every_row_matches_and_decodes():
    root = asset_root(assets.gcompris_rcc_root)
    for rec in natural_photo_records():
        data = npm.natural_photo_bytes(rec, root=root)
        assert hashlib.sha256(data).hexdigest() == rec.sha256
        im = npm.load_natural_photo(rec, root=root, verify=False)
        assert im.mode == "RGB" and min(im.size) >= 100, rec
    small = npm.load_natural_photo(natural_photo_records(["crab"])[0], root=root, max_side=64)
    assert max(small.size) == 64


@pytest.mark.slow
def test_denied_list_is_every_denied_image_of_the_package(denied_rows):
    """Listing (no data read) every raster image path of the package: the filter's denials are exactly
    the denied list, and every accepted path exists."""
    root = asset_root(assets.gcompris_rcc_root)
    denied, accepted = set(), {(r.rcc_file, r.resource_path) for r in natural_photo_records()}
    found = set()
    for rcc_path in sorted(root.glob("*.rcc")):
        for p in RccFile(rcc_path).paths():
            if re.search(r"\.(webp|png|jpe?g)$", p, re.I):
                found.add((rcc_path.name, p))
                if deny_reason(p) is not None:
                    denied.add((rcc_path.name, p))
    assert denied == {(d["rcc_file"], d["resource_path"]) for d in denied_rows}
    assert accepted <= found
    assert len(found) == 882


@pytest.mark.slow
def test_verification_catches_a_modified_file(tmp_path):
    root = asset_root(assets.gcompris_rcc_root)
    rec = natural_photo_records(["crab"])[0]
    copy = tmp_path / rec.rcc_file
    copy.write_bytes((root / rec.rcc_file).read_bytes())
    assert npm.natural_photo_bytes(rec, root=tmp_path) == npm.natural_photo_bytes(rec, root=root)
    forged = npm.NaturalPhotoRecord(rec.class_name, rec.rcc_file, rec.resource_path, "0" * 64, rec.licence)
    with pytest.raises(npm.NaturalPhotoVerificationError):
        npm.natural_photo_bytes(forged, root=root)


def test_the_shipped_model_trained_on_reviewed_natural_photos_only(rows, split):
    """`hub_card/training_summary.json` records the natural photos each run in its chain trained on:
    every one a reviewed row (same resource path and sha256), of an allowed class, none denied, none
    of an unseen concept, none of the run's own natural validation classes."""
    from pathlib import Path

    summary = json.loads((Path(__file__).resolve().parents[1] / "hub_card" / "training_summary.json").read_text())
    reviewed = {r["resource_path"]: r for r in rows}
    unseen = set(split["unseen_all"])
    stage, seen_any = summary, False
    while stage is not None:
        config = stage.get("config") or {}
        if config.get("natural_photos"):
            assert stage.get("natural_photos"), "a run on natural photos must record which ones"
        for photo in stage.get("natural_photos", []):
            seen_any = True
            row = reviewed[photo["resource_path"]]
            assert row["sha256"] == photo["sha256"] and row["class"] == photo["class"], photo
            assert photo["class"] not in unseen and not is_denied(photo["resource_path"]), photo
            assert photo["class"] not in stage.get("natural_validation_classes", []), photo
        stage = stage.get("init_from_summary") if config.get("init_from") else None
    if not seen_any:
        pytest.skip("the shipped model was not trained on natural photos")
