"""Cases ready for training: the canonical, normalised 2 mm volume and the centroids as voxel indices.

Preprocessing is the core library's (``to_canonical`` + ``zscore``), the very code inference runs,
so training and inference can never drift apart.
"""

import os
from dataclasses import dataclass
from typing import Dict

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
    """

    volume: np.ndarray
    centroids: np.ndarray
    case_id: str = ""

    @property
    def present(self) -> np.ndarray:
        return np.all(np.isfinite(self.centroids), axis=1)


def prepare_case(image: sitk.Image, centroids_lps: Dict[str, np.ndarray], case_id: str = "") -> PreparedCase:
    """Resample and normalise ``image`` exactly as inference does, and map the centroids onto its grid."""
    canon = to_canonical(image)
    volume = zscore(canon.hu).astype(np.float16)
    cents = np.full((NUM_VERTEBRAE, 3), np.nan, dtype=np.float32)
    for name, lps in centroids_lps.items():
        if name in NAME_TO_INDEX:
            cents[NAME_TO_INDEX[name]] = canon.lps_to_index(np.asarray(lps, dtype=float))
    return PreparedCase(volume=volume, centroids=cents, case_id=case_id)


def save_prepared(case: PreparedCase, path: str) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, volume=case.volume, centroids=case.centroids, case_id=np.array(case.case_id))
    os.replace(tmp, path)


def load_prepared(path: str) -> PreparedCase:
    with np.load(path) as data:
        return PreparedCase(volume=data["volume"], centroids=data["centroids"], case_id=str(data["case_id"]))
