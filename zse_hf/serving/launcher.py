"""`zse-sbir demo`: start the Gradio demo that lives in the source tree's `demo/app.py`.

    zse-sbir demo [--model DIR_OR_HUB_ID] [--gallery DIR] [--host 127.0.0.1] [--port 7860] [--share]

`demo/` (app, bundled gallery, example sketches) is not part of the installed package; it is
found next to the package in a source checkout (`pip install -e ".[demo]"`), or at `$ZSE_DEMO_APP`.
`zse-sbir space` copies it, with the package and a model, into a self-contained Space folder.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

MODULE_NAME = "zse_sbir_demo_app"


def app_path() -> Path:
    """Path of `demo/app.py`: `$ZSE_DEMO_APP`, else `<repo>/demo/app.py` next to the package.

    Raises:
        FileNotFoundError: with instructions, when the file is not there (e.g. a non-editable install).
    """
    override = os.environ.get("ZSE_DEMO_APP")
    import zse_hf

    path = Path(override) if override else Path(zse_hf.__file__).resolve().parents[1] / "demo" / "app.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"the demo app is not at {path}. The demo (app, bundled gallery, example sketches) ships in the "
            "source tree, not in the installed package: clone the repository and run "
            "`pip install -e \".[demo]\"` there, or point $ZSE_DEMO_APP at demo/app.py.")
    return path


def load_app(path: str | os.PathLike | None = None) -> ModuleType:
    """Import `demo/app.py` (see [`app_path`]) as a module; repeated calls return the same module."""
    path = Path(path) if path is not None else app_path()
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(MODULE_NAME, None)
        raise
    return module


def main(argv: list[str] | None = None) -> int:
    """`zse-sbir demo [--model DIR] [--gallery DIR] [--host H] [--port P] [--share]`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        app = load_app()
    except FileNotFoundError as err:
        print(f"zse-sbir demo: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        print(f"zse-sbir demo: missing dependency {err.name!r}; install the demo extra: "
              "pip install -e \".[demo]\"", file=sys.stderr)
        return 2
    return int(app.main(argv) or 0)


__all__ = ["app_path", "load_app", "main"]
