"""Explanations: why a sketch matched a photo (the paper's explainability pictures).

- `core`: [`explain_pair`] runs the model once on a (sketch, photo) pair into a [`ZseExplanation`]
  (cell kernel from the relation head or the encoder, attention, patch matches), and the
  selections read from it (strongest correspondences, a cell's heat map, the synthesis);
- `pictures`: the four pictures (correspondence lines, attention heat map, patch synthesis,
  cell kernel) as PIL images;
- `cli`: `zse-sbir explain`, and which kernel source a model explains with by default.

May import: the model, `loading` and `cli_args` only. It sits beside the model: retrieval (a
hit's explanation), evaluation, serving and the CLI import it, never the other way round.
"""

from .cli import default_source, main, recorded_locality
from .core import (
    PICTURES,
    READABLE_GRID,
    READABLE_IMAGE_SIZE,
    SCORES_FILE,
    SOURCES,
    ZseExplanation,
    cell_heatmap,
    correspondence_pairs,
    encoder_cells,
    explain_pair,
    ink_map,
    synthesize,
)
from .pictures import attention_heatmap, correspondence_image, explanation_pictures, kernel_image, patch_synthesis

__all__ = [
    "PICTURES", "READABLE_GRID", "READABLE_IMAGE_SIZE", "SCORES_FILE", "SOURCES", "ZseExplanation",
    "attention_heatmap", "cell_heatmap", "correspondence_image", "correspondence_pairs", "default_source",
    "encoder_cells", "explain_pair", "explanation_pictures", "ink_map", "kernel_image", "main", "patch_synthesis",
    "recorded_locality", "synthesize",
]
