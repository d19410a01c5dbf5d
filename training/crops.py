"""Random 104×80×80 training crops with the paper's multi-label targets, and augmentation.

A crop's target says, for each of the 26 vertebrae, whether its centroid lies inside the crop
(multi-label presence) and where (crop voxel coordinates, used only when present).
"""

from typing import Optional, Tuple

import numpy as np

from VertebraeLabeling.VertebraeLabelingLib.blocks import Block, extract_block
from VertebraeLabeling.VertebraeLabelingLib.network import BLOCK_SHAPE

from .prepared import PreparedCase


def sample_crop_start(case: PreparedCase, rng: np.random.Generator,
                      crop_shape: Tuple[int, int, int] = BLOCK_SHAPE, jitter: float = 0.25) -> Tuple[int, int, int]:
    """A crop position that contains spine most of the time, the way inference places its blocks.

    The centre is a random point on the segment between two consecutive present centroids, with
    in-plane jitter of ``jitter`` × crop size (inference centres blocks on a spine track that can be off
    by that much) and free cranio-caudal placement. One crop in ten is anywhere in the volume, so
    the network also learns to say "nothing here".
    """
    shape = np.asarray(case.volume.shape)
    cs = np.asarray(crop_shape)
    present = np.nonzero(case.present)[0]
    if present.size == 0 or rng.random() < 0.1:
        centre = rng.uniform(0, shape)
    else:
        n = int(rng.integers(0, present.size))
        a = case.centroids[present[n]]
        b = case.centroids[present[min(n + 1, present.size - 1)]]
        centre = a + rng.random() * (b - a)
        centre = centre + rng.uniform(-0.5, 0.5, size=3) * cs * np.array([1.0, 2 * jitter, 2 * jitter])
    start = np.round(centre - cs / 2).astype(int)
    return tuple(int(v) for v in start)


def crop_targets(case: PreparedCase, start: Tuple[int, int, int],
                 crop_shape: Tuple[int, int, int] = BLOCK_SHAPE) -> Tuple[np.ndarray, np.ndarray]:
    """(presence (26,) float32, coordinates (26, 3) float32 in crop voxels; 0 where absent)."""
    block = Block(start, crop_shape)
    rel = case.centroids - np.asarray(start, dtype=np.float32)
    present = case.present & block.contains(np.nan_to_num(case.centroids, nan=-1e6))
    coords = np.where(present[:, None], rel, 0.0).astype(np.float32)
    return present.astype(np.float32), coords


def make_crop(case: PreparedCase, rng: np.random.Generator, crop_shape: Tuple[int, int, int] = BLOCK_SHAPE,
              augment: bool = True, start: Optional[Tuple[int, int, int]] = None):
    """Return ``(crop (1, D, H, W) float32, presence (26,), coords (26, 3), known (26,))``.

    ``known`` is the case's :attr:`~training.prepared.PreparedCase.known_mask`: 0 for the levels whose
    presence its reference does not decide.
    """
    if start is None:
        start = sample_crop_start(case, rng, crop_shape)
    fill = float(case.volume.min())
    crop = extract_block(case.volume, Block(start, crop_shape), fill).astype(np.float32)
    presence, coords = crop_targets(case, start, crop_shape)
    if augment:
        crop, coords = augment_crop(crop, coords, presence, rng)
    return crop[None], presence, coords, case.known_mask


def augment_crop(crop: np.ndarray, coords: np.ndarray, presence: np.ndarray, rng: np.random.Generator):
    """Intensity (contrast, brightness, gamma-like, noise) and a left-right mirror.

    Only label-preserving transforms: a mirrored spine is still a spine with the same names, but
    a cranio-caudal flip would turn C1 into S2, so the axial axis is never flipped.
    """
    crop = crop * rng.uniform(0.85, 1.15) + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.5:
        crop = crop + rng.normal(0, rng.uniform(0.0, 0.08), size=crop.shape).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, :, ::-1].copy()
        width = crop.shape[2]
        coords = coords.copy()
        coords[:, 2] = np.where(presence > 0, width - 1 - coords[:, 2], 0.0)
    return crop.astype(np.float32, copy=False), coords
