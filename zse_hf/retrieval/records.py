"""The records a search or a build returns: [`Hit`] and [`Skipped`]."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    """One search result.

    Args:
        id: the photo's id (`str` or `int`).
        path: the photo's file path, or None for in-memory images.
        rank: 1 for the best hit.
        ret_score: cosine of the [Ret] embeddings (exact: lossy PQ/SQ indexes are re-scored
            from the stored float32 embeddings).
        relation_score: relation-network score in (0, 1) when the hit was re-ranked, else None.
    """

    id: str | int
    path: str | None
    rank: int
    ret_score: float
    relation_score: float | None = None


@dataclass(frozen=True)
class Skipped:
    """An item that `build`/`add` could not read: its position in the input, id, path and why."""

    position: int
    id: str | int
    path: str | None
    reason: str

