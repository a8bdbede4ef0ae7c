"""`zse-sbir space`: assemble a self-contained Hugging Face Space of the Gradio demo in one step.

    zse-sbir space --out DIR [--model DIR_OR_HUB_ID] [--with-index] [--gallery DIR] [--force]

The model: by default the shipped one (the folder the demo runs, `hub_card/` of a source
checkout), bundled, so the Space starts wherever it is pushed. A Hub id is used only when
`--model` names one; it must resolve now (on the Hub, or in the local Hugging Face cache when
offline), else the command fails in one line and writes nothing.

DIR gets what the Space repository holds:

- `app.py`: the demo (`demo/app.py`), unchanged;
- `zse_hf/`: a copy of this package (zse-sbir is not on PyPI; `app.py` imports it from there);
- `requirements.txt`: zse-sbir's runtime dependencies and faiss-cpu pinned at the versions
  installed here (torch without its local `+cpu` tag, from the PyTorch CPU index); Gradio comes
  from `sdk_version` in the README, set to the installed Gradio;
- `README.md`: `demo/README.md` with its Space front matter (a Hub model's id under `models:`);
- `gallery/` and `examples/` with their `NOTICE` files (the photos' and drawings' licences);
- `space_config.json`: `{"model": ...}`, read by `app.py` (`$ZSE_DEMO_MODEL` still overrides):
  `"model"` for the model folder copied to `model/` (the default, or `--model DIR`), or a Hub id
  (`--model owner/name`, downloaded by the Space at start);
- `index_cache/`: the gallery's index prebuilt with that model, so the Space's first start loads
  it instead of encoding the photos (it is rebuilt if the model or the gallery differ): built here
  for the shipped model and the bundled gallery, and for any other with `--with-index`;
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
HUB_TIMEOUT_S = 10  # one request to the Hub when resolving `--model owner/name`


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


def shipped_model() -> Path:
    """The shipped model folder, found as the demo finds it (`HUB_CARD_DIR` of `demo/app.py`:
    `hub_card/` of a source checkout).

    Raises:
        SpaceError: the folder (or its config.json) is not there.
    """
    from . import launcher as demo_launcher

    folder = Path(demo_launcher.load_app().HUB_CARD_DIR)
    if not (folder / "config.json").is_file():
        raise SpaceError(f"the shipped model is not at {folder} (it comes with a source checkout); "
                         "pass a model folder with --model")
    return folder


def resolve_hub_model(repo_id: str) -> str:
    """Check that the Hub model `repo_id` can be loaded: with `HF_HUB_OFFLINE=1`, its config.json
    is in the local Hugging Face cache; otherwise the Hub lists it with a config.json (one request),
    or, when the Hub cannot be reached, the local cache has it. Returns where it was found.

    Raises:
        SpaceError: one line naming `repo_id` and why it does not resolve.
    """
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    def cached() -> bool:
        return isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str)

    if huggingface_hub.is_offline_mode():
        if cached():
            return "the local Hugging Face cache"
        reason = "offline (HF_HUB_OFFLINE=1) and not in the local Hugging Face cache"
    else:
        try:
            info = huggingface_hub.HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
        except GatedRepoError:
            reason = "a gated repo this account cannot read"
        except RepositoryNotFoundError:
            reason = "no such repo on the Hub, or a private one"
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", "?")
            reason = f"the Hub answered HTTP {status}"
        except Exception as err:  # noqa: BLE001 - no network: httpx / OS errors, reported in the line below
            if cached():
                return "the local Hugging Face cache"
            reason = f"the Hub cannot be reached ({type(err).__name__}) and it is not in the local Hugging Face cache"
        else:
            if "config.json" in {s.rfilename for s in info.siblings or []}:
                return "the Hub"
            reason = "the repo has no config.json"
    raise SpaceError(f"cannot resolve Hub model {repo_id!r}: {reason}; pass a local folder with --model")


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


def assemble(out: str | os.PathLike, model: str | os.PathLike | None = None, *,
             gallery: str | os.PathLike | None = None, examples: str | os.PathLike | None = None,
             with_index: bool = False, force: bool = False) -> Path:
    """Write the Space folder `out` (see the module docstring); it is built in a sibling folder
    and renamed into place when complete. Returns its path.

    Args:
        out: the Space folder; it must not exist unless `force` (then it is replaced).
        model: a model folder (copied to `model/`) or a Hub id (`owner/name`, written to
            `space_config.json` once [`resolve_hub_model`] finds it); default: [`shipped_model`].
        gallery, examples: default: those next to the demo app.
        with_index: prebuild the gallery's index into `index_cache/` (loads the model; a Hub id
            is downloaded unless cached); always done for the shipped model and bundled gallery.

    Raises:
        SpaceError: a missing input, an unusable model argument or a Hub id that does not
            resolve, `out` existing; nothing is written then.
    """
    from . import launcher as demo_launcher

    app_file = demo_launcher.app_path()
    demo_dir = app_file.parent
    gallery = Path(gallery) if gallery else demo_dir / "gallery"
    examples = Path(examples) if examples else demo_dir / "examples"
    out = Path(out).resolve()
    if out.exists() and not force:
        raise SpaceError(f"{out} exists; choose another folder or pass --force")
    shipped = model is None
    model = str(shipped_model() if shipped else model)
    bundled = Path(model).is_dir()
    if not bundled and not HUB_ID.match(model):
        raise SpaceError(f"--model {model!r} is neither a model folder nor a Hub id (owner/name)")
    if bundled and not (Path(model) / "config.json").is_file():
        raise SpaceError(f"{model} has no config.json; is it a model folder?")
    for folder in (gallery, examples):
        if not (folder / "NOTICE").is_file():
            raise SpaceError(f"{folder} has no NOTICE file (the licence of its images)")
    if not bundled:
        resolve_hub_model(model)

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
        if with_index or (shipped and gallery == demo_dir / "gallery"):  # always for the shipped pair
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
    from . import launcher as demo_launcher

    app = demo_launcher.load_app()
    dm = app.load_demo_model(model, "--model")
    app.bundled_index(dm, space / "gallery", space / "index_cache")
    return space / "index_cache"


def main(argv: list[str] | None = None) -> int:
    """`zse-sbir space --out DIR [--model DIR_OR_HUB_ID] ...`; returns the exit code."""
    p = argparse.ArgumentParser(prog="zse-sbir space", description="Assemble a self-contained Hugging Face Space "
                                "of the Gradio demo in one step (see `zse_hf.serving.space`).")
    p.add_argument("--out", required=True, help="the Space folder to write")
    p.add_argument("--model", default=None,
                   help="a model folder (copied into the Space) or a Hub id that resolves now (default: the "
                   "shipped model, hub_card/, bundled)")
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
    model = json.loads((out / "space_config.json").read_text())["model"]
    print(f"zse-sbir space: wrote {out} ({files} files, {size / 2**20:.1f} MB); model: "
          f"{'bundled in model/' if model == 'model' else model}. Try it: cd {out} && python app.py")
    return 0


__all__ = ["SpaceError", "assemble", "main", "pinned_requirements", "prebuild_index", "readme_text",
           "requirements_text", "resolve_hub_model", "shipped_model", "split_front_matter"]
