"""The error type of `zse-sbir export` / `push`, and the one-line form the command line prints."""

from __future__ import annotations


class HubError(RuntimeError):
    """A problem with export or upload that the command line reports as one line."""


def one_line(err: BaseException | str) -> str:
    """An error message on one line, at most 400 characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


__all__ = ["HubError", "one_line"]
