"""Natural photos with backgrounds from Debian ``gcompris-qt-data``: the reviewed photo table
(``natural_photos.csv``), the name filter that keeps the unseen concepts out, and loading a
photo from its Qt resource file as RGB.

The package's photos sit inside Qt resource files (``usr/share/gcompris-qt/rcc/*.rcc``, read
with [`zse_hf.data.rcc`]). Every image path of the package went through [`deny_reason`] before
any of its bytes was read: a path whose name could show one of the 63 unseen concepts
(``unseen_all`` of ``split.json``), a concept left out of every class by the review rule
(chicken, gull, deer, ...), or a broad name that could hide one of them ("bird", "fruit") was
never opened, and is listed by name only in ``natural_photos_denied.csv``. The photos of the
other candidates were reviewed by eye; ``natural_photos.csv`` holds the accepted ones.
[`extract_resource`], which every loader here goes through, refuses a denied path before
reading anything.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image

from .. import assets
from .images import composite_on_white
from .rcc import RccFile

# Concept -> name terms. A term is one or more words; a word also matches its plural (s, es,
# y -> ies). Terms of 5+ letters also match inside a run-together name ("flyingfox",
# "FanoeWindmill"). Keys are the 63 unseen concepts (QuickDraw spelling) plus the concepts of the
# standard unseen lists that QuickDraw lacks (chicken, seagull, deer, tank, songbird, ...), which the
# review rule keeps out of every class. Synonyms, close look-alikes (the stamp review's: a koala
# for teddy-bear, a hippopotamus for rhinoceros, a mug for cup) and old French file names included.
DENY_TERMS: dict[str, tuple[str, ...]] = {
    "airplane": ("airplane", "aeroplane", "plane", "airliner", "aircraft", "jet", "jetliner", "biplane", "seaplane",
                 "glider", "warplane", "boeing", "airbus", "cessna", "avion", "raptor"),
    "ant": ("ant", "anthill", "termite", "fourmi"),
    "banana": ("banana", "plantain", "banane"),
    "bat": ("bat", "flying fox", "fruit bat", "pipistrelle", "chauve souris", "chiroptera"),
    "beach": ("beach", "seaside", "seashore", "shore", "coast", "coastline", "plage", "dune"),
    "bed": ("bed", "bunk", "cot", "crib", "cradle", "hammock", "mattress", "bedroom", "berceau"),
    "brain": ("brain", "cerveau"),
    "bread": ("bread", "loaf", "loaves", "baguette", "toast", "bagel", "brioche", "pain"),
    "bridge": ("bridge", "viaduct", "aqueduct", "footbridge", "pont", "pontdugard", "chenonceau", "eilean donan",
               "eilandonan", "golden gate"),
    "bus": ("bus", "buses", "minibus", "trolleybus", "omnibus", "coach", "autobus", "autocar"),
    "butterfly": ("butterfly", "butterflies", "moth", "caterpillar", "chrysalis", "papilio", "swallowtail",
                  "lepidoptera", "papillon", "chenille"),
    "cactus": ("cactus", "cacti", "saguaro", "succulent", "opuntia"),
    "camel": ("camel", "dromedary", "bactrian", "alpaca", "llama", "lama", "vicuna", "guanaco", "chameau",
              "dromadaire"),
    "campfire": ("campfire", "camp fire", "bonfire", "fire", "fire pit", "firepit", "flame", "feu"),
    "canoe": ("canoe", "kayak", "dugout", "pirogue", "rowboat", "rowing boat", "paddle", "boat", "barque"),
    "cow": ("cow", "calf", "calves", "bull", "ox", "oxen", "cattle", "heifer", "steer", "bovine", "bison",
            "buffalo", "yak", "zebu", "gaur", "aurochs", "longhorn", "gnu", "wildebeest", "vache", "veau",
            "taureau", "boeuf"),
    "cup": ("cup", "teacup", "mug", "coffee cup", "goblet", "chalice", "trophy", "saucer", "buffetset", "glass",
            "tasse", "bol"),
    "dolphin": ("dolphin", "porpoise", "orca", "killer whale", "narwhal", "beluga", "cetacean", "whale", "dauphin",
                "baleine"),
    "door": ("door", "doorway", "gate", "gateway", "entrance", "portal", "porte"),
    "fan": ("fan", "ceiling fan", "ventilator", "ventilateur", "eventail"),
    "feather": ("feather", "quill", "plume"),
    "fire hydrant": ("hydrant", "fire hydrant"),
    "frying pan": ("pan", "frying pan", "skillet", "wok", "saucepan", "frypan", "poele"),
    "giraffe": ("giraffe", "girafe", "okapi"),
    "harp": ("harp", "lyre", "harpe"),
    "helicopter": ("helicopter", "chopper", "heli", "helicoptere"),
    "horse": ("horse", "pony", "ponies", "foal", "stallion", "mare", "colt", "filly", "mustang", "bronco",
              "donkey", "mule", "ass", "equine", "nokota", "cheval", "chevaux", "jument", "poulain", "ane",
              "mulassiere"),
    "hot air balloon": ("balloon", "hot air balloon", "montgolfiere", "ballon"),
    "laptop": ("laptop", "notebook computer", "netbook", "ordinateur portable"),
    "lighter": ("lighter", "zippo", "briquet"),
    "megaphone": ("megaphone", "bullhorn", "loudspeaker", "loudhailer", "loud hailer", "porte voix"),
    "mouse": ("mouse", "mice", "rat", "hamster", "gerbil", "vole", "shrew", "dormouse", "rodent", "pika",
              "guinea pig", "chinchilla", "souris", "rongeur"),
    "palm tree": ("palm", "palm tree", "coconut", "date palm", "palmier", "cocotier"),
    "parachute": ("parachute", "paraglider", "paraglide", "paragliding", "paratrooper", "skydiver", "skydiving",
                  "parasail", "parapente"),
    "parrot": ("parrot", "macaw", "toucan", "cockatoo", "cockatiel", "parakeet", "budgie", "budgerigar",
               "lorikeet", "lory", "lovebird", "conure", "kea", "kakapo", "amazon", "ara", "pteroglossus",
               "aracari", "hornbill", "perroquet", "perruche"),
    "pear": ("pear", "poire", "nashi", "avocado", "avocat"),
    "penguin": ("penguin", "adelie", "chinstrap", "puffin", "auk", "pingouin", "manchot"),
    "pineapple": ("pineapple", "ananas", "pinecone", "pine cone"),
    "pizza": ("pizza",),
    "raccoon": ("raccoon", "racoon", "coati", "red panda", "badger", "lemur", "maki", "raton laveur"),
    "rhinoceros": ("rhinoceros", "rhino", "rhinogc", "hippopotamus", "hippo", "hypogc", "hippopotame"),
    "rifle": ("rifle", "gun", "shotgun", "musket", "carbine", "firearm", "sniper", "fusil", "weapon"),
    "rollerskates": ("rollerskate", "roller skate", "rollerblade", "roller blade", "inline skate", "skate",
                     "ice skate", "patin"),
    "saw": ("saw", "handsaw", "chainsaw", "hacksaw", "jigsaw", "bandsaw", "cutting tool", "scie"),
    "scissors": ("scissor", "scissors", "shears", "clipper", "ciseaux"),
    "shoe": ("shoe", "sneaker", "boot", "sandal", "slipper", "trainer", "heel", "loafer", "clog", "moccasin",
             "footwear", "flip flop", "chaussure", "botte"),
    "skyscraper": ("skyscraper", "high rise", "highrise", "tower block", "skyline", "building", "empire state",
                   "burj", "khalifa", "juche", "bayterek", "petronas", "trade center", "gratte ciel"),
    "snail": ("snail", "slug", "escargot", "whelk", "conch", "seashell", "shell", "nautilus", "limace"),
    "squirrel": ("squirrel", "chipmunk", "marmot", "groundhog", "prairie dog", "meerkat", "suricate", "ecureuil"),
    "streetlight": ("streetlight", "street light", "streetlamp", "street lamp", "lamppost", "lamp post",
                    "light pole", "lampadaire", "railroad crossing", "lamp"),
    "suitcase": ("suitcase", "luggage", "baggage", "valise", "briefcase", "toolbox", "trolley bag"),
    "swan": ("swan", "cygnet", "cygnus", "cygne"),
    "sword": ("sword", "sabre", "saber", "katana", "rapier", "cutlass", "scimitar", "dagger", "blade", "epee"),
    "t-shirt": ("t shirt", "tshirt", "tee", "shirt", "jersey", "polo", "maillot"),
    "table": ("table", "desk", "workbench", "tabletop", "dining", "bureau"),
    "teddy-bear": ("teddy", "teddy bear", "teddybear", "plush", "stuffed", "soft toy", "cuddly", "koala", "nounours",
                   "peluche"),
    "telephone": ("telephone", "phone", "cellphone", "cell phone", "mobile", "smartphone", "iphone", "handset"),
    "tractor": ("tractor", "harvester", "dumper", "digger", "excavator", "backhoe", "tracteur"),
    "tree": ("tree", "oak", "pine", "fir", "birch", "maple", "willow", "baobab", "sequoia", "forest", "woods",
             "spruce", "cedar", "bonsai", "trunk", "thyme", "lettuce", "arbre", "sapin", "chene"),
    "trombone": ("trombone", "sackbut", "brass"),
    "umbrella": ("umbrella", "parasol", "brolly", "parapluie"),
    "windmill": ("windmill", "wind turbine", "turbine", "wind farm", "windpump", "moulin", "molen"),
    "wine bottle": ("wine bottle", "bottle", "wine", "bouteille", "vin"),
    # in the standard unseen lists, not in QuickDraw: kept out of every class
    "chicken": ("chicken", "hen", "rooster", "cock", "cockerel", "chick", "poultry", "pullet", "capon", "gallus",
                "gosling", "duckling", "turkey", "quail", "pheasant", "guinea fowl", "grouse", "partridge", "peahen",
                "peafowl", "poule", "coq", "poussin", "poulet", "dinde"),
    "seagull": ("seagull", "gull", "kittiwake", "tern", "skua", "fulmar", "petrel", "albatross", "mouette",
                "goeland"),
    "deer": ("deer", "caribou", "reindeer", "moose", "elk", "wapiti", "stag", "doe", "fawn", "roe", "antelope",
             "gazelle", "impala", "ibex", "cerf", "biche", "renne", "elan"),
    "tank": ("tank", "armoured", "armored", "panzer", "char"),
    "songbird": ("songbird", "sparrow", "robin", "finch", "warbler", "tit", "titmouse", "wren", "blackbird",
                 "thrush", "nightingale", "canary", "bluebird", "starling", "lark", "swallow", "bunting",
                 "goldfinch", "chickadee", "cardinal", "jay", "magpie", "crow", "raven", "kingfisher",
                 "hummingbird", "bee eater", "passerine", "moineau", "merle", "rouge gorge"),
    "window": ("window", "fenetre", "vitrail"),
    "volcano": ("volcano", "lava", "eruption", "crater", "etna", "vesuvius", "volcan"),
    "cabin": ("cabin", "hut", "chalet", "log house", "shack", "cottage", "cabane"),
    "bell": ("bell", "cloche"),
    "bottle opener": ("bottle opener", "corkscrew", "opener"),
    "ray": ("ray", "manta", "stingray"),
    "snowboard": ("snowboard",),
    "space shuttle": ("space shuttle", "shuttle", "spaceship", "rocket", "fusee"),
    "wheelchair": ("wheelchair",),
}

# Broad names that could show one of the concepts above ("bird" a parrot, "fruit" a pear); they
# are matched against the file name only (folder names such as "animals" or "tools" are fine).
DENY_BROAD_TERMS: tuple[str, ...] = (
    "bird", "seabird", "waterfowl", "animal", "mammal", "creature", "beast", "wildlife", "livestock", "pet",
    "fruit", "food", "snack", "drink", "beverage", "bug", "insect", "vehicle", "transport", "furniture",
    "instrument", "orchestra", "toy", "tool", "utensil", "kitchenware", "tableware", "dish", "container",
    "clothes", "clothing", "plant",
)

# Paths denied by more than their name (exact resource paths): the credits file beside the image
# gives an upstream title that names an unseen concept (never opened), or the review by eye found
# an unseen concept in the photo after all (dropped, and listed here so it is never read again).
_A = "gcompris/src/activities/"
DENY_PATHS: dict[str, tuple[str, str]] = {
    _A + "categorization/resource/images/tools/hammer4.webp":
        ("saw", "upstream title 'workshop-tools-1': a set of tools; not opened"),
    _A + "categorization/resource/images/tools/screwDriver1.webp":
        ("table", "upstream title 'screwdriver on table'; not opened"),
    _A + "categorization/resource/images/others/bulb.webp":
        ("laptop", "review: a laptop and a phone in a corner, on a table"),
    _A + "categorization/resource/images/others/pillow.webp": ("bed", "review: the pillow lies on a bed"),
    _A + "categorization/resource/images/monuments/eiffelTower.webp":
        ("streetlight", "review: a lamp post beside the tower"),
    _A + "explore_monuments/resource/germany/berlinCathedral.webp": ("bus", "review: a bus and cars in front"),
    _A + "explore_monuments/resource/germany/wormsCathedral.webp":
        ("streetlight", "review: a lamp post; the subject is a bronze model of the church"),
    _A + "explore_monuments/resource/usa/castleClinton.webp": ("skyscraper", "review: skyscrapers behind the fort"),
    _A + "explore_world_animals/resource/animals/kangaroo.webp": ("streetlight", "review: a lamp post behind"),
    _A + "explore_world_animals/resource/animals/panda.webp":
        ("teddy-bear", "review: a sitting round-eared bear, like the koala stamp the stamp review moved to teddy-bear"),
}

_IMAGE_EXTENSIONS = (".webp", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".svg", ".svgz")


def _words(text: str) -> list[str]:
    """Lower-case words of a name: camelCase, digits, ``_``, ``-``, ``.`` and spaces split it."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", text)
    return re.findall(r"[a-z]+", text.lower())


def _forms(word: str) -> set[str]:
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return forms


def _compile(terms: Iterable[str]) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(_words(t)), "".join(_words(t))) for t in terms]


_CONCEPT_TERMS = [(concept, _compile(terms)) for concept, terms in DENY_TERMS.items()]
_BROAD_TERMS = _compile(DENY_BROAD_TERMS)


def _matches(words: list[str], term: tuple[str, ...], joined: str) -> bool:
    """``term`` occurs in ``words`` (last word plural-tolerant), or, when 5+ letters long, inside the
    run-together name."""
    n = len(term)
    for i in range(len(words) - n + 1):
        if tuple(words[i:i + n - 1]) == term[:-1] and words[i + n - 1] in _forms(term[-1]):
            return True
    if len(joined) >= 5:
        run = "".join(words)
        return joined in run
    return False


def deny_reason(resource_path: str) -> str | None:
    """The concept that keeps ``resource_path`` unopened, or ``None`` if its name is safe to open.

    Decided from the path alone, before any byte of the image is read: every folder name and the
    file name are split into words (camelCase, digits, ``_``, ``-``) and matched against
    [`DENY_TERMS`] (unseen concepts, the concepts the review rule leaves out, their synonyms and
    look-alikes; plural-tolerant, and 5+ letter terms also inside run-together names), and the file
    name against [`DENY_BROAD_TERMS`] (returned as ``"broad name: <term>"``). The exact paths of
    [`DENY_PATHS`] are denied too.
    """
    parts = [p for p in resource_path.replace("\\", "/").split("/") if p and p != ":"]
    if not parts:
        return None
    listed = DENY_PATHS.get("/".join(parts).lstrip(":"))
    if listed is not None:
        return listed[0]
    stem = parts[-1]
    for ext in _IMAGE_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    components = [_words(p) for p in parts[:-1]] + [_words(stem)]
    best: tuple[int, int, str] | None = None  # the most specific match names the concept ("fire hydrant", not "fire")
    for words in components:
        for concept, terms in _CONCEPT_TERMS:
            for term, joined in terms:
                if _matches(words, term, joined) and (best is None or (len(term), len(joined)) > best[:2]):
                    best = (len(term), len(joined), concept)
    if best is not None:
        return best[2]
    stem_words = components[-1]
    for term, joined in _BROAD_TERMS:
        if _matches(stem_words, term, joined):
            return "broad name: " + " ".join(term)
    return None


def is_denied(resource_path: str) -> bool:
    """Whether [`deny_reason`] keeps ``resource_path`` unopened."""
    return deny_reason(resource_path) is not None


class DeniedResourceError(PermissionError):
    """A resource whose name could show an unseen concept was asked for; nothing was read."""


def _rcc(path: str | os.PathLike) -> RccFile:
    p = Path(path)
    st = p.stat()
    return _rcc_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _rcc_cached(path: str, size: int, mtime_ns: int) -> RccFile:
    return RccFile(path)


def extract_resource(rcc_path: str | os.PathLike, resource_path: str) -> bytes:
    """The bytes of ``resource_path`` inside the ``.rcc`` file ``rcc_path``, after the name filter.

    Raises:
        DeniedResourceError: [`deny_reason`] denies the path (checked before the file is opened).
        zse_hf.data.rcc.RccError: no such resource.
    """
    reason = deny_reason(resource_path)
    if reason is not None:
        raise DeniedResourceError(f"{resource_path!r} is never read: its name could show {reason!r}")
    return _rcc(rcc_path).read(resource_path)


@dataclass(frozen=True)
class NaturalPhotoRecord:
    """One reviewed photo: a row of ``natural_photos.csv``.

    Attributes:
        class_name: QuickDraw class name (spelled as the ``.ndjson.gz`` file).
        rcc_file: the Qt resource file, relative to ``usr/share/gcompris-qt/rcc``.
        resource_path: the path inside it (no leading ``:/``).
        sha256: hash of the image bytes (the ``.webp`` file as stored, uncompressed).
        licence: the licence ``debian/copyright`` (DEP-5) gives this path.
        upstream_licence: the licence the ``README`` beside the image gives it (empty if none).
        upstream_source: the original's address from that ``README`` (empty if none).
    """

    class_name: str
    rcc_file: str
    resource_path: str
    sha256: str
    licence: str
    upstream_licence: str = ""
    upstream_source: str = ""

    @property
    def id(self) -> str:
        """Stable id: ``<rcc_file>:<resource_path>``."""
        return f"{self.rcc_file}:{self.resource_path}"


@functools.lru_cache(maxsize=1)
def _records_cached() -> tuple[NaturalPhotoRecord, ...]:
    text = resources.files(__package__).joinpath("natural_photos.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text))
    return tuple(NaturalPhotoRecord(r["class"], r["rcc_file"], r["resource_path"], r["sha256"].lower(), r["licence"],
                                    r.get("upstream_licence", ""), r.get("upstream_source", "")) for r in rows)


def natural_photo_records(classes: Iterable[str] | None = None) -> list[NaturalPhotoRecord]:
    """The reviewed photos of ``natural_photos.csv`` in file order, restricted to ``classes`` if given."""
    wanted = None if classes is None else set([classes] if isinstance(classes, str) else classes)
    return [r for r in _records_cached() if wanted is None or r.class_name in wanted]


def natural_photos_by_class(classes: Iterable[str] | None = None) -> dict[str, list[NaturalPhotoRecord]]:
    """Photo records grouped by class (csv order), restricted to ``classes`` if given."""
    out: dict[str, list[NaturalPhotoRecord]] = {}
    for rec in natural_photo_records(classes):
        out.setdefault(rec.class_name, []).append(rec)
    return out


def natural_photo_classes() -> list[str]:
    """The classes that have at least one reviewed photo, sorted."""
    return sorted({r.class_name for r in _records_cached()})


def denied_resource_names() -> list[dict[str, str]]:
    """Rows of ``natural_photos_denied.csv`` (``rcc_file``, ``resource_path``, ``concept``): every image
    path of the package that the name filter kept unopened, with the concept it matched."""
    text = resources.files(__package__).joinpath("natural_photos_denied.csv").read_text(encoding="utf-8")
    return [dict(r) for r in csv.DictReader(io.StringIO(text))]


class NaturalPhotoVerificationError(assets.AssetError):
    """A photo's bytes differ from the sha256 in ``natural_photos.csv``."""


def natural_photo_bytes(record: NaturalPhotoRecord, verify: bool = True,
                        root: str | os.PathLike | None = None) -> bytes:
    """The image file bytes of ``record`` (``.webp``), read from its ``.rcc`` file.

    Args:
        record: a row of ``natural_photos.csv``.
        verify: check the sha256 from ``natural_photos.csv``.
        root: the ``rcc`` folder (default ``assets.gcompris_rcc_root()``, fetched on first use).

    Raises:
        NaturalPhotoVerificationError: the bytes differ from ``natural_photos.csv``.
        DeniedResourceError: the record names a path the filter denies.
    """
    import hashlib

    base = Path(root) if root is not None else assets.gcompris_rcc_root()
    data = extract_resource(base / record.rcc_file, record.resource_path)
    if verify:
        got = hashlib.sha256(data).hexdigest()
        if got != record.sha256:
            raise NaturalPhotoVerificationError(
                f"sha256 mismatch for {record.id}: natural_photos.csv says {record.sha256}, the resource has {got}. "
                "The file is modified or not from gcompris-qt-data 3.1-2; delete the cached package "
                "(zse_hf.assets.cache_dir()) and fetch it again, or pass verify=False.")
    return data


def load_natural_photo(record: NaturalPhotoRecord, verify: bool = True, max_side: int | None = None,
                       root: str | os.PathLike | None = None) -> Image.Image:
    """Load a reviewed photo as an RGB image (any transparency composited onto white).

    Args:
        record: a row of ``natural_photos.csv``.
        verify: check the sha256 from ``natural_photos.csv``.
        max_side: downscale (Lanczos) so the longer side is at most this.
        root: the ``rcc`` folder (default ``assets.gcompris_rcc_root()``).

    Raises:
        NaturalPhotoVerificationError: the bytes differ from ``natural_photos.csv``.
    """
    with Image.open(io.BytesIO(natural_photo_bytes(record, verify=verify, root=root))) as im:
        im.load()
        rgb = composite_on_white(im)
    if max_side is not None and max(rgb.size) > max_side:
        s = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * s)), max(1, round(rgb.height * s))), Image.Resampling.LANCZOS)
    return rgb


__all__ = ["DENY_BROAD_TERMS", "DENY_PATHS", "DENY_TERMS", "DeniedResourceError", "NaturalPhotoRecord",
           "NaturalPhotoVerificationError", "denied_resource_names", "deny_reason", "extract_resource", "is_denied",
           "load_natural_photo", "natural_photo_bytes", "natural_photo_classes", "natural_photo_records",
           "natural_photos_by_class"]
