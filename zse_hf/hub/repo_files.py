"""What a Hub repo folder of a ZSE model holds, and the checks that it is complete and its
remote code is this package's."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # zse_hf/
REMOTE_CODE_FILES = ("configuration_zse.py", "modeling_zse.py", "image_processing_zse.py", "processing_zse.py",
                     "pipeline_zse.py")
DEFAULT_REPO_ID = "zse-sbir/zse-sbir-dinov2-small"
EXPORTED_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "preprocessor_config.json",
    "README.md",
    "LICENSE.md",
    "eval_results.json",
    *REMOTE_CODE_FILES,
)
OPTIONAL_FILES = ("training_summary.json", "eval_results_val.json")  # exported when there is one
AUTO_MAP = {
    "AutoConfig": "configuration_zse.ZseConfig",
    "AutoModel": "modeling_zse.ZseModel",
    "AutoImageProcessor": "image_processing_zse.ZseImageProcessor",
    "AutoProcessor": "processing_zse.ZseProcessor",
}
# `config.json`'s `custom_pipelines`: `pipeline("sketch-based-image-retrieval", model=repo, trust_remote_code=True)`
# loads the pipeline class from the repo (the entry `Pipeline.save_pretrained` writes for a registered pipeline)
CUSTOM_PIPELINES = {
    "sketch-based-image-retrieval": {
        "impl": "pipeline_zse.ZseSketchRetrievalPipeline",
        "pt": ["AutoModel"],
        "type": "image",
    },
}
# never uploaded
UPLOAD_IGNORE = ["*.pyc", "__pycache__/*", "*/__pycache__/*", ".git/*", ".cache/*", "*.tmp", ".DS_Store"]


def check_in_sync(hub_dir: str | os.PathLike) -> list[str]:
    """The remote-code files of `hub_dir` whose content differs from `zse_hf/` (or are missing).

    An empty list means the Hub copy of the code is exactly this package's code.
    """
    hub_dir = Path(hub_dir)
    stale = []
    for name in REMOTE_CODE_FILES:
        copy = hub_dir / name
        if not copy.is_file() or copy.read_bytes() != (PACKAGE_DIR / name).read_bytes():
            stale.append(name)
    return stale


def list_upload_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """`(relative path, size in bytes)` of every file `push` would upload from `folder`, sorted."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    kept = filter_repo_objects(paths, ignore_patterns=UPLOAD_IGNORE)
    return [(p, (folder / p).stat().st_size) for p in kept if not p.startswith(".")]


def check_folder(folder: str | os.PathLike) -> list[str]:
    """Problems that make `folder` unfit to upload (missing files, stale code, bad card)."""
    from .errors import HubError
    from .model_card import validate_card

    folder = Path(folder)
    if not folder.is_dir():
        return [f"folder not found: {folder} (create it with `zse-sbir export`)"]
    problems = [f"missing {name}" for name in EXPORTED_FILES if not (folder / name).is_file()]
    stale = [n for n in check_in_sync(folder) if (folder / n).is_file()]
    if stale:
        problems.append(f"code differs from the installed zse_hf: {', '.join(stale)} (re-run `zse-sbir export`)")
    if (folder / "README.md").is_file():
        try:
            validate_card(folder)
        except HubError as err:
            problems.append(str(err))
    return problems


__all__ = ["AUTO_MAP", "CUSTOM_PIPELINES", "DEFAULT_REPO_ID", "EXPORTED_FILES", "OPTIONAL_FILES", "PACKAGE_DIR",
           "REMOTE_CODE_FILES", "UPLOAD_IGNORE", "check_folder", "check_in_sync", "list_upload_files"]
