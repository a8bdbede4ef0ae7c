"""Hugging Face Hub packaging: export a trained model folder as the content of its Hub repo
(weights, configs, remote code, model card), check that the remote code stays in sync with
this package, and upload it.

| module | what it holds |
|---|---|
| `repo_files` | the files of a Hub repo folder, the remote-code drift check, the pre-upload check |
| `eval_json` | reading the eval JSON and its `model-index` entries |
| `model_card` | the model card and licence, rendered from `templates/`, and the card check |
| `export` | `zse-sbir export` |
| `push` | `zse-sbir push` |
| `errors` | `HubError` |
"""

from ..model_summary import model_modes
from .errors import HubError
from .eval_json import eval_results_from_json, load_eval_results
from .export import export, export_main
from .model_card import ExportInfo, render_card, render_license, validate_card
from .push import PushResult, push, push_main
from .repo_files import (
    AUTO_MAP,
    DEFAULT_REPO_ID,
    EXPORTED_FILES,
    OPTIONAL_FILES,
    REMOTE_CODE_FILES,
    UPLOAD_IGNORE,
    check_folder,
    check_in_sync,
    list_upload_files,
)

__all__ = [
    "AUTO_MAP",
    "DEFAULT_REPO_ID",
    "EXPORTED_FILES",
    "ExportInfo",
    "HubError",
    "OPTIONAL_FILES",
    "PushResult",
    "REMOTE_CODE_FILES",
    "UPLOAD_IGNORE",
    "check_folder",
    "check_in_sync",
    "eval_results_from_json",
    "export",
    "export_main",
    "list_upload_files",
    "load_eval_results",
    "model_modes",
    "push",
    "push_main",
    "render_card",
    "render_license",
    "validate_card",
]
