"""The record every loader returns, and the image-geometry helpers the loaders share.

Annotation files store centroids in many frames (voxel indices of a reoriented image, mm
from an image corner, world RAS, ...). Every loader converts them here, once, to the
project's frame: **LPS millimetres**, the frame SimpleITK reports for the image.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib import vertebrae
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image  # noqa: F401 - one reader, the core's

# Grids and axis-code reorientation are the core's (one implementation, shared with the VerSe writer).
from VertebraeLabeling.VertebraeLabelingLib.orientation import (  # noqa: F401,E402 - re-exported for the loaders
    ImageGeometry,
    axis_map,
    lps_to_reoriented_voxel,
    reoriented_voxel_to_lps,
)


@dataclass
class AnnotatedCase:
    """One CT with the ground-truth centroid of each vertebra it shows.

    Attributes:
        case_id: a name unique within its data set (file or folder stem).
        image_path: a NIfTI/NRRD/MHA file or a folder holding one DICOM series; read lazily.
        centroids: vertebra name (C1..S2 only) -> centroid in LPS mm, shape (3,).
        notes: what the loader dropped or assumed (L6, T13, coccyx, TotalSegmentator "sacrum",
            label file chosen, ...), one line each, so that evaluations can say so.
        partial: names of vertebrae cut by the volume's edge (known for label maps only);
            their centroid is that of the visible part, not of the whole vertebra.
        source: which loader made the case ("verse", "csi", "labelmap", "synthetic").
    """

    case_id: str
    image_path: str
    centroids: Dict[str, np.ndarray]
    notes: List[str] = field(default_factory=list)
    partial: List[str] = field(default_factory=list)
    source: str = ""

    def load_image(self) -> "sitk.Image":
        """Read the CT (file or DICOM folder) with SimpleITK; geometry is in LPS."""
        return read_image(self.image_path)

    def whole_centroids(self) -> Dict[str, np.ndarray]:
        """The centroids of the vertebrae that are not cut by the volume's edge."""
        return {n: p for n, p in self.centroids.items() if n not in self.partial}


def keep_known(named: Dict[str, np.ndarray], notes: List[str], where: str) -> Dict[str, np.ndarray]:
    """Keep the 26 network labels; record every other name (L6, T13, coccyx, ...) in ``notes``."""
    kept = {}
    for name, pos in named.items():
        if name in vertebrae.NAME_TO_INDEX:
            kept[name] = np.asarray(pos, dtype=float)
        else:
            notes.append(f"{where}: dropped {name} (not one of the 26 labels C1..S2)")
    return kept


def order_by_spine(centroids: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The same dictionary in cranio-caudal label order (C1 first), for stable output."""
    return {n: centroids[n] for n in vertebrae.VERTEBRA_NAMES if n in centroids}


def strip_nifti_ext(name: str) -> str:
    """``"a/b/case.nii.gz"`` -> ``"case"`` (also .nii, .nrrd, .mha, .mhd)."""
    base = os.path.basename(name)
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def find_image_next_to(folder: str, stem: str) -> Optional[str]:
    """The image file ``stem`` + a known extension in ``folder``, if there is one."""
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    return None
