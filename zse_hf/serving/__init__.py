"""Serving: what the demo and any other front end (an API server, another UI) share, without any
web framework:

- `service`: [`SketchSearchService`]: search (the bundled gallery, a user's photos, a saved photo
  store), explain, index a user's photos, sessions;
- `models`: which model to serve, loading it (or the untrained fallback), the note about it;
- `gallery_index`: the bundled gallery's index, its cache and fingerprints, built in the background;
- `sessions`: per-user state, its caps, and freeing it (index, uploads, pictures) when a session ends;
- `runtime`: the one model thread, heap tuning, clean-up of what a killed server left;
- `uploads`: safe reading of web uploads and the caps on a user's gallery;
- `launcher` (`zse-sbir demo`) and `space` (`zse-sbir space`): the Gradio demo in `demo/app.py`,
  which keeps only the page layout and its event wiring, and the Hugging Face Space built from it.

Nothing here imports Gradio; front ends pass their own folders in (the demo its `gallery/`,
`index_cache/` and `hub_card/`).

May import: the model, `loading`, `assets`, `cli_args`, `model_summary`, data, retrieval, explain
and conversion (the untrained fallback backbone). Never imports training.
"""

from __future__ import annotations

import importlib

# public names, imported on first use (`zse-sbir demo` / `space` start without loading the model code)
_EXPORTS = {
    "SketchSearchService": "service", "Ranking": "service", "Explained": "service", "BUNDLED": "service",
    "MINE": "service", "COLLECTION": "service", "RET": "service", "RERANK": "service", "sketch_query": "service",
    "DemoModel": "models", "load_demo_model": "models", "resolve_model_path": "models",
    "BundledGallery": "gallery_index", "bundled_index": "gallery_index", "prebuild_seed_index": "gallery_index",
    "Session": "sessions", "SessionRegistry": "sessions", "FileHost": "sessions",
    "ModelThread": "runtime", "UserInputError": "uploads", "UploadLimits": "uploads",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
