"""`zse-sbir push`: upload an exported folder to a Hub model repo (`--dry-run`: check and list only).

    zse-sbir push --repo ORG/NAME --folder hub_card --dry-run
    zse-sbir push --repo ORG/NAME --folder hub_card
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..model_summary import human_size
from .errors import HubError, one_line
from .model_card import validate_card
from .repo_files import UPLOAD_IGNORE, check_folder, list_upload_files


@dataclass
class PushResult:
    """Files of a push (`(path in repo, bytes)`) and, after a real upload, the commit URL."""

    files: list[tuple[str, int]]
    url: str | None = None


def push(repo_id: str, folder: str | os.PathLike = "hub_card", private: bool = False, dry_run: bool = False,
         token: str | None = None) -> PushResult:
    """Upload an exported folder to the Hub model repo `repo_id` (`create_repo` + `upload_folder`).

    Args:
        repo_id: `"org/name"`.
        folder: the `zse-sbir export` output.
        private: create the repo private (an existing repo keeps its visibility).
        dry_run: only check the folder and card locally and return the file list; no network.
        token: a Hub token; default: the usual mechanisms (`HF_TOKEN`, `hf auth login`).

    Returns:
        [`PushResult`] with the files (and the commit URL after a real upload).

    Raises:
        HubError: a bad repo id or folder, offline mode, no token, or a failed upload.
    """
    import huggingface_hub
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as err:
        raise HubError(f"bad repo id {repo_id!r}: {one_line(err)}") from None
    if "/" not in repo_id:
        raise HubError(f"repo id must be ORG/NAME, got {repo_id!r}")
    problems = check_folder(folder)
    if problems:
        raise HubError(f"{folder} is not ready to upload: " + "; ".join(problems))
    files = list_upload_files(folder)
    if dry_run:
        return PushResult(files)
    if huggingface_hub.is_offline_mode():
        raise HubError("cannot upload: offline mode is on (HF_HUB_OFFLINE=1); unset it and connect to the Hub")
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    try:
        huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        info = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
            ignore_patterns=UPLOAD_IGNORE, commit_message="Upload ZSE-SBIR model (zse-sbir export)",
        )
    except Exception as err:  # network, auth and HTTP errors all end here
        kind = type(err).__name__
        unreachable = "Connect" in kind or "Timeout" in kind
        hint = " (cannot reach the Hub: check the network or HF_ENDPOINT)" if unreachable else ""
        raise HubError(f"upload to {repo_id} failed{hint}: {kind}: {one_line(err)}") from None
    return PushResult(files, getattr(info, "commit_url", None) or str(info))


def push_main(argv: Sequence[str] | None = None) -> int:
    """`zse-sbir push`: upload an exported folder to a Hub model repo (`--dry-run`: list and check only)."""
    p = argparse.ArgumentParser(prog="zse-sbir push", description=push_main.__doc__)
    p.add_argument("--repo", required=True, help="Hub repo id, ORG/NAME")
    p.add_argument("--folder", default="hub_card", help="exported folder (default: hub_card)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list the files and validate the card; upload nothing")
    args = p.parse_args(argv)
    try:
        result = push(args.repo, args.folder, private=args.private, dry_run=args.dry_run)
        if args.dry_run:
            card = validate_card(args.folder).data
            for name, size in result.files:
                print(f"{human_size(size):>10}  {name}")
            total = sum(s for _, s in result.files)
            print(f"{len(result.files)} files, {human_size(total)}; card metadata OK (license={card.license}, "
                  f"pipeline_tag={card.pipeline_tag}, {len(card.eval_results or [])} model-index results)")
            if args.repo not in Path(args.folder, "README.md").read_text():
                print(f"note: the card's examples name another repo than {args.repo}; "
                      f"re-export with --repo {args.repo}", file=sys.stderr)
            visibility = "private" if args.private else "public"
            print(f"dry run: would create {args.repo} ({visibility}) and upload these files")
            return 0
    except KeyboardInterrupt:
        print("zse-sbir push: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line, never a traceback
        msg = str(err) if isinstance(err, HubError) else f"{type(err).__name__}: {err}"
        print(f"zse-sbir push: error: {one_line(msg)}", file=sys.stderr)
        return 1
    print(f"uploaded {len(result.files)} files to https://huggingface.co/{args.repo} ({result.url})")
    return 0


__all__ = ["PushResult", "push", "push_main"]
