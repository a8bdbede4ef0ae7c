"""argparse types shared by the `zse-sbir` commands: a bad value is a usage error (exit 2)
before anything is loaded."""

from __future__ import annotations

import argparse

from .configuration_zse import check_rerank_ret_weight


def at_least(minimum: int):
    """argparse type: an integer `>= minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def rerank_ret_weight(text: str) -> float:
    """argparse type: a re-rank [Ret] weight (a finite number >= 0, see `check_rerank_ret_weight`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    try:
        return check_rerank_ret_weight(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


__all__ = ["at_least", "rerank_ret_weight"]
