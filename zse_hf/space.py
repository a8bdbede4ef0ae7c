"""`zse-sbir space`: assemble a self-contained Hugging Face Space of the Gradio demo in one step.

    zse-sbir space --out DIR [--model HUB_ID_OR_DIR] [--with-index] [--gallery DIR] [--force]

DIR gets what the Space repository holds:

- `app.py`: the demo (`demo/app.py`), unchanged;
- `zse_hf/`: a copy of this package (zse-sbir is not on PyPI; `app.py` imports it from there);
- `requirements.txt`: zse-sbir's runtime dependencies and faiss-cpu pinned at the versions
  installed here (torch without its local `+cpu` tag, from the PyTorch CPU index); Gradio comes
  from `sdk_version` in the README, set to the installed Gradio;
- `README.md`: `demo/README.md` with its Space front matter (the model's Hub id under `models:`);
- `gallery/` and `examples/` with their `NOTICE` files (the photos' and drawings' licences);
- `space_config.json`: `{"model": ...}`, read by `app.py` (`$ZSE_DEMO_MODEL` still overrides):
  a Hub id (downloaded by the Space at start), or `"model"` for a model folder copied to
  `model/` (`--model DIR`);
- with `--with-index`, `index_cache/`: the gallery's index prebuilt with that model, so the
  Space's first start loads it instead of encoding the photos (it is rebuilt if the model or the
  gallery differ);
- `.gitattributes`: weights and index arrays through Git LFS.

Push DIR to a Space created with the Gradio SDK (`hf upload USER/SPACE DIR . --repo-type space`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "zse-sbir"
EXTRA = "demo"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
SKIPPED = {"gradio"}  # the Space's SDK provides it (README `sdk_version`)
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.npy", "*.faiss")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SpaceError(RuntimeError):
    """The Space cannot be assembled (worded for the command line)."""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(distribution: str = DISTRIBUTION, extra: str = EXTRA) -> list[str]:
    """`name==installed version` for each runtime dependency of `distribution` and of its
    `extra` (Gradio left out: the Space SDK brings it); local version tags (`+cpu`) dropped.

    Raises:
        SpaceError: the distribution or one of its dependencies is not installed.
    """
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError as err:
        raise SpaceError(f"{distribution} is not installed (pip install -e '.[demo]')") from err
    pins, seen = [], set()
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = _normalise(req.name)
        if key in seen or key in SKIPPED:
            continue
        seen.add(key)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError as err:
            raise SpaceError(f"{req.name} (needed by {distribution}[{extra}]) is not installed") from err
        pins.append(f"{req.name}=={version.split('+', 1)[0]}")
    return pins


def requirements_text(pins: list[str]) -> str:
    """The Space's `requirements.txt`."""
    return "\n".join([
        f"# {DISTRIBUTION}'s runtime dependencies and its `{EXTRA}` extra, pinned at the versions the Space was",
        "# assembled with (`zse-sbir space`); the package itself is the `zse_hf/` folder next to app.py.",
        "# Gradio comes from `sdk_version` in README.md.",
        f"--extra-index-url {TORCH_INDEX}",
        *pins, "",
    ])


def split_front_matter(text: str) -> tuple[dict, str]:
    """`(YAML front matter, body)` of a README that starts with `---`."""
    import yaml

    match = re.match(r"^---\n(.*?)\n---\n?(.*)$", text, flags=re.S)
    if not match:
        raise SpaceError("the demo README has no front matter (--- ... ---)")
    return yaml.safe_load(match.group(1)) or {}, match.group(2)


def readme_text(source: str, model: str, bundled: bool, gradio_version: str | None) -> str:
    """The Space README: `source`'s front matter with `sdk_version` set to `gradio_version` and
    the model's Hub id as `models:` (none for a bundled folder); its body without links into
    the repository, and a note on what the Space holds."""
    import yaml

    meta, body = split_front_matter(source)
    if gradio_version:
        meta["sdk_version"] = gradio_version
    meta["app_file"] = "app.py"
    if bundled:
        meta.pop("models", None)
    else:
        meta["models"] = [model]
    body = "\n".join(line for line in body.splitlines() if "](../" not in line)
    where = ("the model folder copied to `model/`" if bundled
             else f"the Hub model [`{model}`](https://huggingface.co/{model})")
    note = (f"\n\n## This Space\n\nAssembled with `zse-sbir space`: `app.py` (the demo), the `zse_hf` package, "
            f"{where} (`space_config.json`; the Space variable `ZSE_DEMO_MODEL` overrides it), the gallery and the "
            "example sketches with their `NOTICE` files, and `requirements.txt` pinned to the versions it was "
            "assembled with.\n")
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    return f"---\n{front}\n---\n{body.rstrip()}{note}"


def _copy_files(src: Path, dest: Path, what: str) -> list[str]:
    """Copy the files directly in `src` (not its sub-folders) to `dest`; their names."""
    if not src.is_dir():
        raise SpaceError(f"{what} {src} is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            shutil.copy2(p, dest / p.name)
            names.append(p.name)
    return names


def assemble(out: str | os.PathLike, model: str, *, gallery: str | os.PathLike | None = None,
             examples: str | os.PathLike | None = None, with_index: bool = False, force: bool = False) -> Path:
    """Write the Space folder `out` (see the module docstring); it is built in a sibling folder
    and renamed into place when complete. Returns its path.

    Args:
        out: the Space folder; it must not exist unless `force` (then it is replaced).
        model: a model folder (copied to `model/`) or a Hub id (`owner/name`, written to
            `space_config.json`).
        gallery, examples: default: those next to the demo app.
        with_index: prebuild the gallery's index into `index_cache/` (loads the model; a Hub id
            is downloaded unless cached).

    Raises:
        SpaceError: a missing input, an unusable model argument, `out` existing.
    """
    from zse_hf import demo_launcher

    app_file = demo_launcher.app_path()
    demo_dir = app_file.parent
    gallery = Path(gallery) if gallery else demo_dir / "gallery"
    examples = Path(examples) if examples else demo_dir / "examples"
    out = Path(out).resolve()
    if out.exists() and not force:
        raise SpaceError(f"{out} exists; choose another folder or pass --force")
    bundled = Path(model).is_dir()
    if not bundled and not HUB_ID.match(model):
        raise SpaceError(f"--model {model!r} is neither a model folder nor a Hub id (owner/name)")
    if bundled and not (Path(model) / "config.json").is_file():
        raise SpaceError(f"{model} has no config.json; is it a model folder?")
    for folder in (gallery, examples):
        if not (folder / "NOTICE").is_file():
            raise SpaceError(f"{folder} has no NOTICE file (the licence of its images)")

    work = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        shutil.copy2(app_file, work / "app.py")
        import zse_hf

        shutil.copytree(Path(zse_hf.__file__).resolve().parent, work / "zse_hf",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (work / "requirements.txt").write_text(requirements_text(pinned_requirements()))
        gradio_version = _installed("gradio")
        (work / "README.md").write_text(readme_text((demo_dir / "README.md").read_text(), model, bundled,
                                                    gradio_version))
        _copy_files(gallery, work / "gallery", "the gallery")
        _copy_files(examples, work / "examples", "the examples folder")
        if bundled:
            _copy_files(Path(model), work / "model", "the model")
        config = {"model": "model" if bundled else model}
        (work / "space_config.json").write_text(json.dumps(config, indent=1) + "\n")
        (work / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n"
                                                     for p in LFS_PATTERNS))
        if with_index:
            prebuild_index(work, str(work / "model") if bundled else model)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def prebuild_index(space: Path, model: str) -> Path:
    """Build the Space's gallery index with `model` into `space/index_cache/` (the demo's
    cache layout, read by `app.py` before building its own)."""
    from zse_hf import demo_launcher

    app = demo_launcher.load_app()
    dm = app.load_demo_model(model, "--model")
    app.bundled_index(dm, space / "gallery", space / "index_cache")
    return space / "index_cache"


def main(argv: list[str] | None = None) -> int:
    """`zse-sbir space --out DIR [--model ID_OR_DIR] ...`; returns the exit code."""
    from zse_hf.hub import DEFAULT_REPO_ID

    p = argparse.ArgumentParser(prog="zse-sbir space", description="Assemble a self-contained Hugging Face Space "
                                "of the Gradio demo in one step (see `zse_hf.space`).")
    p.add_argument("--out", required=True, help="the Space folder to write")
    p.add_argument("--model", default=DEFAULT_REPO_ID,
                   help=f"a model folder (copied into the Space) or a Hub id (default: {DEFAULT_REPO_ID})")
    p.add_argument("--with-index", action="store_true",
                   help="prebuild the gallery's index with the model (the Space's first start then loads it)")
    p.add_argument("--gallery", default=None, help="photos to bundle (default: the demo's gallery/, with NOTICE)")
    p.add_argument("--examples", default=None, help="example sketches (default: the demo's examples/, with NOTICE)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    try:
        out = assemble(args.out, args.model, gallery=args.gallery, examples=args.examples,
                       with_index=args.with_index, force=args.force)
    except (SpaceError, FileNotFoundError) as err:
        print(f"zse-sbir space: {err}", file=sys.stderr)
        return 2
    files = sum(1 for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"zse-sbir space: wrote {out} ({files} files, {size / 2**20:.1f} MB); model: "
          f"{'bundled in model/' if Path(args.model).is_dir() else args.model}. Try it: cd {out} && python app.py")
    return 0


__all__ = ["SpaceError", "assemble", "main", "pinned_requirements", "prebuild_index", "readme_text",
           "requirements_text", "split_front_matter"]
