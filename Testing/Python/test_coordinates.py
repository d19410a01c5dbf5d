"""A point in the CT must come back at the same physical place, whatever the file's orientation."""

import numpy as np
import pytest
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib.outputs import lps_to_verse, verse_to_lps
from VertebraeLabeling.VertebraeLabelingLib.preprocessing import to_canonical


def _rotation(axis, degrees):
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


ORIENTATIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    # PIR: i → posterior, j → inferior, k → right (VerSe's convention)
    "PIR": np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]]),
    "oblique": _rotation("x", 17) @ _rotation("z", -11) @ np.diag([-1.0, -1.0, 1.0]),
}


def _dot_image(direction, spacing, point_lps):
    """Air with a bright 3×3×3 blob whose intensity-weighted centre is exactly ``point_lps``."""
    size = (70, 60, 50)
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetDirection(tuple(direction.ravel()))
    # Put the image centre near the point so the blob is inside.
    centre_index = np.array(size) / 2
    offset = direction @ (centre_index * np.array(spacing))
    img.SetOrigin(tuple(np.asarray(point_lps) - offset))
    arr = np.full(size[::-1], -1000.0, dtype=np.float32)
    cont = np.array(img.TransformPhysicalPointToContinuousIndex(tuple(point_lps)))
    base = np.floor(cont).astype(int)
    frac = cont - base
    # Trilinear splat of a unit mass: its centre of mass is exactly the continuous index.
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1]) * (frac[2] if dz else 1 - frac[2])
                arr[base[2] + dz, base[1] + dy, base[0] + dx] += 3000.0 * w
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
@pytest.mark.parametrize("spacing", [(0.8, 0.8, 2.5), (3.0, 3.0, 3.0)])
def test_bright_dot_comes_back_at_its_physical_point(name, spacing):
    point = np.array([12.3, -45.6, 78.9])
    img = _dot_image(ORIENTATIONS[name], spacing, point)
    vol = to_canonical(img)
    excess = np.clip(vol.hu + 1000.0, 0, None)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), axis=-1)
    centre_index = (idx * excess[..., None]).reshape(-1, 3).sum(0) / excess.sum()
    found = vol.index_to_lps(centre_index)
    assert np.linalg.norm(found - point) < 1.0, (name, found, point)


def test_index_lps_mapping_is_invertible():
    img = _dot_image(ORIENTATIONS["PIR"], (1.0, 1.5, 2.0), np.zeros(3))
    vol = to_canonical(img)
    pts = np.array([[0.0, 0.0, 0.0], [10.5, 3.25, 7.0], [vol.shape[0] - 1.0, 2.0, 1.0]])
    assert np.allclose(vol.lps_to_index(vol.index_to_lps(pts)), pts)
    # axis 0 runs superior → inferior: a larger k is lower (smaller LPS z)
    assert vol.index_to_lps(np.array([5.0, 0, 0]))[2] < vol.index_to_lps(np.array([0.0, 0, 0]))[2]


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_verse_coordinates_round_trip(name):
    img = _dot_image(ORIENTATIONS[name], (0.9, 1.1, 2.0), np.zeros(3))
    point = np.array([3.0, -7.0, 11.0])
    back = verse_to_lps(lps_to_verse(point, img), img)
    assert np.allclose(back, point, atol=1e-6)
