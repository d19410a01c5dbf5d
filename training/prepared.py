"""Cases ready for training: the canonical, normalised 2 mm volume and the centroids as voxel indices.

Preprocessing is the core library's (``to_canonical`` + ``zscore``), the very code inference runs,
so training and inference can never drift apart.
"""

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib.preprocessing import to_canonical, zscore
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX, NUM_VERTEBRAE


@dataclass
class PreparedCase:
    """A training case on the canonical grid.

    Attributes:
        volume: z-scored volume, float16 (k, j, i) to halve the memory of a case pool.
        centroids: (26, 3) canonical voxel indices (k, j, i); NaN rows for vertebrae not in the image.
        case_id: where it came from.
        known: (26,) bool, the vertebrae whose presence the reference decides; None: all of them. A real CT
            annotated from T2 to T12 says nothing about the C7 or L1 at its edges: where those are in view,
            a crop must not teach the network that they are absent.
    """

    volume: np.ndarray
    centroids: np.ndarray
    case_id: str = ""
    known: Optional[np.ndarray] = None

    @property
    def present(self) -> np.ndarray:
        return np.all(np.isfinite(self.centroids), axis=1)

    @property
    def known_mask(self) -> np.ndarray:
        """(26,) float32: 1 where the reference decides presence (the loss ignores the others)."""
        if self.known is None:
            return np.ones(NUM_VERTEBRAE, dtype=np.float32)
        return np.asarray(self.known, dtype=np.float32)


def annotated_span(names: Iterable[str]) -> np.ndarray:
    """(26,) bool: the vertebrae from the first to the last of ``names`` along the spine.

    A partial reference (centroids of some levels, as CSI 2014 or a by-eye reading gives) decides presence
    inside the span it covers (a level missing there is genuinely absent: fused or not there) and
    nothing outside it.
    """
    idx = [NAME_TO_INDEX[n] for n in names if n in NAME_TO_INDEX]
    span = np.zeros(NUM_VERTEBRAE, dtype=bool)
    if idx:
        span[min(idx):max(idx) + 1] = True
    return span


def prepare_case(image: sitk.Image, centroids_lps: Dict[str, np.ndarray], case_id: str = "",
                 known: Optional[np.ndarray] = None) -> PreparedCase:
    """Resample and normalise ``image`` exactly as inference does, and map the centroids onto its grid.

    ``known`` (26 bools, see :attr:`PreparedCase.known`) marks the levels the reference speaks for; None: all.
    """
    canon = to_canonical(image)
    volume = zscore(canon.hu).astype(np.float16)
    cents = np.full((NUM_VERTEBRAE, 3), np.nan, dtype=np.float32)
    for name, lps in centroids_lps.items():
        if name in NAME_TO_INDEX:
            cents[NAME_TO_INDEX[name]] = canon.lps_to_index(np.asarray(lps, dtype=float))
    return PreparedCase(volume=volume, centroids=cents, case_id=case_id, known=known)


def save_prepared(case: PreparedCase, path: str) -> None:
    tmp = path + ".tmp.npz"
    extra = {} if case.known is None else {"known": np.asarray(case.known, dtype=bool)}
    np.savez(tmp, volume=case.volume, centroids=case.centroids, case_id=np.array(case.case_id), **extra)
    os.replace(tmp, path)


def load_prepared(path: str) -> PreparedCase:
    with np.load(path) as data:
        known = data["known"] if "known" in data.files else None
        return PreparedCase(volume=data["volume"], centroids=data["centroids"], case_id=str(data["case_id"]),
                            known=known)
