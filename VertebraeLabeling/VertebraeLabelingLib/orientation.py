"""Image grids and axis-code reorientation: voxel indices of a permuted/flipped image ↔ LPS mm.

VerSe centroid files (read by the training loaders, written by the core's VerSe output) give
positions as voxel indices of the image *reoriented* to axis codes such as ("P", "I", "R").
Reorienting, as nibabel's ``apply_orientation`` does, only permutes and flips voxel axes, so a
reoriented index maps exactly to an original one. This module is the one implementation of that
mapping; everything else calls it.

Axis letters are in the nibabel / VerSe sense: the letter names the direction in which the voxel
index *increases* ("R" = towards the patient's right).
"""

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Index = LPS axis (0 = x, 1 = y, 2 = z).
POSITIVE_LETTERS = ("L", "P", "S")
NEGATIVE_LETTERS = ("R", "A", "I")


def lps_axis_of(letter: str) -> int:
    """0, 1 or 2: the LPS axis an axis letter runs along."""
    letter = letter.upper()
    if letter in POSITIVE_LETTERS:
        return POSITIVE_LETTERS.index(letter)
    if letter in NEGATIVE_LETTERS:
        return NEGATIVE_LETTERS.index(letter)
    raise ValueError(f"not an axis code: {letter!r}")


@dataclass(frozen=True)
class ImageGeometry:
    """The geometry of an image grid (what SimpleITK reports), without its voxels."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns are the axis directions in LPS

    @classmethod
    def of(cls, image: sitk.Image) -> "ImageGeometry":
        """The geometry of an image already in memory."""
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @classmethod
    def read(cls, path: str) -> "ImageGeometry":
        """Read only the header of an image file (fast: no voxels are decoded)."""
        if os.path.isdir(path):
            from .image_io import read_image

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

    def axcodes(self) -> tuple[str, str, str]:
        """nibabel-style axis codes of the voxel axes, e.g. ("R", "A", "S") for a RAS+ NIfTI.

        Each voxel axis is named after the LPS axis it is closest to, choosing the best one-to-one
        assignment, so even a 45° oblique grid gets three distinct letters rather than an error.
        """
        m = np.abs(self.matrix)
        perm = max(itertools.permutations(range(3)), key=lambda p: sum(m[p[j], j] for j in range(3)))
        codes = []
        for j, k in enumerate(perm):
            codes.append(POSITIVE_LETTERS[k] if self.matrix[k, j] > 0 else NEGATIVE_LETTERS[k])
        return tuple(codes)  # type: ignore[return-value]


def axis_map(geometry: ImageGeometry, axcodes: Sequence[str]) -> list[tuple[int, bool]]:
    """For each axis of the image reoriented to ``axcodes``: (original voxel axis, flipped?)."""
    own = geometry.axcodes()
    result = []
    for code in axcodes:
        code = code.upper()
        matches = [j for j, c in enumerate(own) if lps_axis_of(c) == lps_axis_of(code)]
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
