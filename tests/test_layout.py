"""The package's house rules, read from the source: a folder per concern, imports pointing one way
(from the CLI and the demo, through training, evaluation and serving, down to retrieval, data and the
model), serving never importing training, and few modules at the top."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "zse_hf"
REMOTE_CODE = {"configuration_zse", "modeling_zse", "image_processing_zse", "processing_zse", "pipeline_zse"}

# component of zse_hf -> layer; a module may import its own component and lower layers only
LAYERS = {
    # the model and what every layer shares
    "": 0, "__version__": 0, **{name: 0 for name in REMOTE_CODE}, "loading": 0, "assets": 0, "cli_args": 0,
    "model_summary": 0,
    "data": 1, "retrieval": 1, "explain": 1, "hub": 1,
    "conversion": 2,
    "evaluation": 3,
    "training": 4, "serving": 4,
    "cli": 5,
}
# imports between components of one layer that are allowed (layer 0 is one unit: the model and its
# loader; a retrieval hit's explanation)
SAME_LAYER = {("retrieval", "explain")}


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """`(line, absolute zse_hf module)` of every import in `path`, function-level ones included."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - (node.level - 1)])
                targets = [f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names]
            elif node.module == "zse_hf":
                targets = [f"zse_hf.{a.name}" for a in node.names]
            elif node.module and node.module.startswith("zse_hf."):
                targets = [node.module]
            else:
                targets = []
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == "zse_hf" or a.name.startswith("zse_hf.")]
        else:
            continue
        found += [(node.lineno, t) for t in targets]
    return found


def test_imports_point_one_way():
    sources = sorted(PACKAGE.rglob("*.py")) + [REPO / "demo" / "app.py"]
    wrong = []
    for path in sources:
        source = "demo" if path.parent.name == "demo" else _component(_module_name(path))
        rank = 6 if source == "demo" else LAYERS[source]
        for line, target in _imports(path):
            comp = _component(target)
            assert comp in LAYERS, f"{path.relative_to(REPO)}:{line} imports {target}: give {comp!r} a layer"
            ok = comp == source or LAYERS[comp] < rank or rank == LAYERS[comp] == 0 or (source, comp) in SAME_LAYER
            if not ok:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({source}, layer {rank}) imports {target} "
                             f"(layer {LAYERS[comp]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_serving_never_imports_training():
    for path in sorted((PACKAGE / "serving").rglob("*.py")):
        bad = [t for _, t in _imports(path) if _component(t) == "training"]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_every_component_has_a_layer_and_each_folder_says_what_lives_there():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir()
                                                    if p.is_dir() and (p / "__init__.py").is_file()}
    assert top - {"__init__"} <= set(LAYERS), sorted(top - set(LAYERS))
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert len(doc) > 80, f"zse_hf/{folder.name}/__init__.py: say what lives there and what it may import"


def test_few_modules_beside_the_remote_code():
    others = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in REMOTE_CODE | {"__init__"})
    assert len(others) <= 10, others


MAX_MODULE_LINES = 700
MAX_DEMO_APP_LINES = 500


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_demo_app_is_the_page_only():
    """demo/app.py keeps the layout and the event wiring; the service lives in zse_hf/serving/."""
    n = _lines(REPO / "demo" / "app.py")
    assert n <= MAX_DEMO_APP_LINES, f"demo/app.py has {n} lines (at most {MAX_DEMO_APP_LINES})"


def test_no_module_outside_the_remote_code_is_too_long():
    too_long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        if (path.parent == PACKAGE and path.stem in REMOTE_CODE):
            continue
        if _lines(path) > MAX_MODULE_LINES:
            too_long[name] = _lines(path)
    assert not too_long, f"over {MAX_MODULE_LINES} lines: {too_long}"
