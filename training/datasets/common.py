"""The record every loader returns, and the image-geometry helpers the loaders share.

Annotation files store centroids in many frames (voxel indices of a reoriented image, mm
from an image corner, world RAS, ...). Every loader converts them here, once, to the
project's frame: **LPS millimetres**, the frame SimpleITK reports for the image.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib import vertebrae
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image  # noqa: F401 - one reader, the core's

#: Axis letters in the nibabel / VerSe sense: the letter names the direction in which the
#: voxel index *increases* ("R" = towards the patient's right). Index = LPS axis.
_POSITIVE_LETTER = ("L", "P", "S")
_NEGATIVE_LETTER = ("R", "A", "I")
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


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


@dataclass(frozen=True)
class ImageGeometry:
    """The geometry of an image grid (what SimpleITK reports), without its voxels."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]  # 9 values, row-major, columns are the axis directions in LPS

    @classmethod
    def of(cls, image: sitk.Image) -> "ImageGeometry":
        """The geometry of an image already in memory."""
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @classmethod
    def read(cls, path: str) -> "ImageGeometry":
        """Read only the header of an image file (fast: no voxels are decoded)."""
        if os.path.isdir(path):
            return cls.of(read_image(path))
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        return cls(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                   tuple(reader.GetDirection()))

    @property
    def matrix(self) -> np.ndarray:
        """Direction matrix (3, 3); column j is the LPS direction of voxel axis j."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_lps(self, index: Sequence[float]) -> np.ndarray:
        """Continuous voxel index (x, y, z order; voxel centres at integers) -> LPS mm."""
        idx = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + self.matrix @ (idx * np.asarray(self.spacing))

    def lps_to_index(self, point: Sequence[float]) -> np.ndarray:
        """LPS mm -> continuous voxel index (x, y, z order)."""
        rel = np.asarray(point, dtype=float) - np.asarray(self.origin)
        return np.linalg.solve(self.matrix, rel) / np.asarray(self.spacing)

    def axcodes(self) -> Tuple[str, str, str]:
        """nibabel-style axis codes of the voxel axes, e.g. ("R", "A", "S") for a RAS+ NIfTI."""
        codes = []
        m = self.matrix
        for j in range(3):
            k = int(np.argmax(np.abs(m[:, j])))
            codes.append(_POSITIVE_LETTER[k] if m[k, j] > 0 else _NEGATIVE_LETTER[k])
        if len(set(_axis_of(c) for c in codes)) != 3:
            raise ValueError(f"cannot name the axes of direction {self.direction}: two axes are parallel")
        return tuple(codes)  # type: ignore[return-value]


def _axis_of(letter: str) -> int:
    letter = letter.upper()
    if letter in _POSITIVE_LETTER:
        return _POSITIVE_LETTER.index(letter)
    if letter in _NEGATIVE_LETTER:
        return _NEGATIVE_LETTER.index(letter)
    raise ValueError(f"not an axis code: {letter!r}")


def axis_map(geometry: ImageGeometry, axcodes: Sequence[str]) -> List[Tuple[int, bool]]:
    """For each axis of the image reoriented to ``axcodes``: (original voxel axis, flipped?).

    Reorienting (as nibabel's ``apply_orientation`` does) only permutes and flips voxel axes;
    it never resamples, so a reoriented voxel index maps exactly to an original one.
    """
    own = geometry.axcodes()
    result = []
    for code in axcodes:
        code = code.upper()
        matches = [j for j, c in enumerate(own) if _axis_of(c) == _axis_of(code)]
        if len(matches) != 1:
            raise ValueError(f"axis code {code!r} does not match the image axes {own}")
        j = matches[0]
        result.append((j, own[j] != code))
    if sorted(j for j, _ in result) != [0, 1, 2]:
        raise ValueError(f"axis codes {tuple(axcodes)} do not name three different axes")
    return result


def reoriented_voxel_to_lps(coords: Sequence[float], geometry: ImageGeometry,
                            axcodes: Sequence[str]) -> np.ndarray:
    """Voxel coordinates in the image reoriented to ``axcodes`` -> LPS mm.

    A flipped axis of n voxels maps reoriented index c to original index n - 1 - c (exact:
    voxel centres sit at integer indices in both grids).
    """
    index = np.zeros(3)
    for c, (j, flipped) in zip(coords, axis_map(geometry, axcodes)):
        n = geometry.size[j]
        index[j] = (n - 1 - float(c)) if flipped else float(c)
    return geometry.index_to_lps(index)


def lps_to_reoriented_voxel(point: Sequence[float], geometry: ImageGeometry,
                            axcodes: Sequence[str]) -> np.ndarray:
    """LPS mm -> voxel coordinates in the image reoriented to ``axcodes`` (inverse of the above)."""
    index = geometry.lps_to_index(point)
    out = np.zeros(3)
    for t, (j, flipped) in enumerate(axis_map(geometry, axcodes)):
        n = geometry.size[j]
        out[t] = (n - 1 - index[j]) if flipped else index[j]
    return out


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
