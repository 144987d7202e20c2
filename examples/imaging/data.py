"""Histology patches as an audit pool: 32x32 RGB patches of scikit-image's bundled
immunohistochemistry (IHC) image, labelled DAB-positive or negative.

``skimage.data.immunohistochemistry()`` is a 512x512 crop of a human colon slide stained
for a protein with DAB (brown) and counterstained with hematoxylin (blue); it ships inside
the scikit-image wheel and loads offline. A patch is DAB-positive when the DAB channel of
the stain separation (``skimage.color.rgb2hed``) exceeds a threshold on more than 10% of
its pixels, the usual definition of an IHC-positive region; the threshold is the image's
own 90th percentile of DAB, fixed by the image, not by the split.

What "patient" means here: all patches come from one slide of one person. Patches
overlap (stride 16 < 32), so patches whose centres fall in the same 64x64 tile share
pixels and are grouped as one unit, the way records of one patient are: the report's
"patients" are tiles (64 of them). Patches of neighbouring tiles still overlap at tile
borders, so membership of a tile is not perfectly separated from its neighbours'. The
subgroup column ``dab`` is the tile's staining (``dab-rich``: most of its patches are
DAB-positive), a property of the "patient" as a subgroup must be.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from privacy_gate.errors import InputError
from privacy_gate.signals import Task
from privacy_gate.training.data import AuditData

__all__ = ["PATCH", "STRIDE", "TILE", "ihc_patches", "load_ihc_patches"]

PATCH, STRIDE, TILE = 32, 16, 64
POSITIVE_FRACTION = 0.1


def ihc_patches() -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """Patches ``(N, 3, 32, 32)`` in [0, 1], labels (1: DAB-positive) and tile ids."""
    try:
        from skimage import color, data
    except ModuleNotFoundError:
        raise InputError(
            "The imaging example needs scikit-image (it ships the IHC slide). HINT: pip "
            "install 'privacy-gate[examples]'."
        ) from None
    image = data.immunohistochemistry()
    dab = color.rgb2hed(image)[..., 2]
    threshold = np.quantile(dab, 0.9)
    pixels = image.astype(np.float32) / 255.0
    starts = range(0, image.shape[0] - PATCH + 1, STRIDE)
    patches, labels, tiles = [], [], []
    tiles_per_row = image.shape[1] // TILE
    for top in starts:
        for left in starts:
            window = (slice(top, top + PATCH), slice(left, left + PATCH))
            patches.append(pixels[window].transpose(2, 0, 1))
            labels.append(int((dab[window] > threshold).mean() > POSITIVE_FRACTION))
            centre_row, centre_col = (top + PATCH // 2) // TILE, (left + PATCH // 2) // TILE
            tiles.append(centre_row * tiles_per_row + centre_col)
    return np.stack(patches), np.array(labels, dtype=np.int64), np.array(tiles, dtype=np.int64)


def _tile_staining(labels: NDArray[np.int64], tiles: NDArray[np.int64]) -> NDArray[np.str_]:
    """Per patch, its tile's staining: ``dab-rich`` when most of the tile's patches are
    DAB-positive, else ``dab-poor`` (a subgroup is a property of the tile, the "patient",
    so every record of a patient carries the same value)."""
    share = {t: labels[tiles == t].mean() for t in np.unique(tiles)}
    return np.array(["dab-rich" if share[t] > 0.5 else "dab-poor" for t in tiles])


def load_ihc_patches(seed: int = 0, holdout_fraction: float = 0.5) -> AuditData:
    """The pool: the patches of a random ``1 - holdout_fraction`` of the tiles train the
    candidate, the other tiles' patches are held out (split by tile, as by patient)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"data_args.holdout_fraction must be in (0, 1). Got {holdout_fraction!r}.")
    patches, labels, tiles = ihc_patches()
    unique = np.unique(tiles)
    shuffled = np.random.default_rng(seed).permutation(unique)
    n_holdout = max(1, round(len(unique) * holdout_fraction))
    held_out = np.isin(tiles, shuffled[:n_holdout])
    train, holdout = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    pool = np.concatenate([train, holdout])
    return AuditData(
        train_inputs=torch.from_numpy(patches[train]),
        train_labels=torch.from_numpy(labels[train]),
        holdout_inputs=torch.from_numpy(patches[holdout]),
        holdout_labels=torch.from_numpy(labels[holdout]),
        task=Task.MULTICLASS,
        patient_ids=[f"tile/{t}" for t in tiles[pool]],
        columns={"dab": _tile_staining(labels, tiles)[pool].tolist()},
        record_ids=[f"patch/{i}" for i in pool],
    )
