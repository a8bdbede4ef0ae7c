"""Test helper: lay a model folder out as a Hugging Face hub cache, for offline repo-id loading.

Usage::

    from hf_cache import make_hf_cache
    make_hf_cache(tmp_path / "hf", "facebook/dinov2-small", folder)
    # then, with HF_HOME=tmp_path/"hf" and HF_HUB_OFFLINE=1 in the environment,
    # Dinov2Model.from_pretrained("facebook/dinov2-small") loads `folder`'s files.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def make_hf_cache(hf_home: Path, repo_id: str, folder: Path, revision: str = "0" * 40) -> Path:
    """Copy the files of ``folder`` into ``hf_home`` as the hub cache entry of model ``repo_id``.

    Layout (what ``huggingface_hub`` reads with ``HF_HOME=hf_home``)::

        hf_home/hub/models--<org>--<name>/refs/main           (contains ``revision``)
        hf_home/hub/models--<org>--<name>/snapshots/<revision>/<files of folder>
        hf_home/hub/models--<org>--<name>/blobs/               (empty: files are plain copies)

    Args:
        hf_home: the folder to use as ``HF_HOME`` (created if needed).
        repo_id: ``"org/name"`` (or ``"name"``).
        folder: a model folder, e.g. a ``save_pretrained`` output; subfolders are copied too.
        revision: the commit hash to file the snapshot under (40 hex digits).

    Returns:
        the snapshot folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    if len(revision) != 40 or any(c not in "0123456789abcdef" for c in revision):
        raise ValueError(f"revision must be 40 lowercase hex digits, got {revision!r}")
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"bad repo id {repo_id!r}")
    repo = Path(hf_home) / "hub" / ("models--" + "--".join(parts))
    snapshot = repo / "snapshots" / revision
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs" / "main").write_text(revision)  # no trailing newline, like huggingface_hub
    return snapshot
