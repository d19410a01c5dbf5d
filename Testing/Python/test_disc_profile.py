"""The disc finder behind the by-eye reference of the plain chest CT (benchmarks/disc_profile.py)."""

import numpy as np

from benchmarks.disc_profile import body_centre, disc_levels


def _toy_spine(discs_z, spacing=(1.0, 1.0, 2.0)):
    """Bodies of 250 HU in a column at (x, y) = (40, 30) mm, dark 4 mm discs at ``discs_z``, soft tissue around."""
    shape = (100, 60, 80)  # z, y, x voxels; z from 0 up to 198 mm
    origin = np.zeros(3)
    z = origin[2] + np.arange(shape[0]) * spacing[2]
    y = origin[1] + np.arange(shape[1]) * spacing[1]
    x = origin[0] + np.arange(shape[2]) * spacing[0]
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    volume = np.full(shape, 40.0, np.float32)
    column = (xx - 40) ** 2 + (yy - 30) ** 2 <= 14 ** 2
    volume[column] = 250.0
    for d in discs_z:
        volume[column & (np.abs(zz - d) <= 2)] = 90.0
    return volume, origin, np.array(spacing)


def test_the_dips_of_the_profile_along_the_spine_are_the_discs():
    discs = [30.0, 52.0, 76.0, 100.0, 126.0, 152.0]
    volume, origin, spacing = _toy_spine(discs)
    rough = np.array([[41.0, 28.0, z] for z in (20.0, 60.0, 110.0, 160.0, 175.0)])  # a few mm off the column
    found, *_ = disc_levels(volume, origin, spacing, rough)
    assert len(found) == len(discs)
    np.testing.assert_allclose(sorted(found), discs, atol=1.5)


def test_a_body_centre_slides_to_the_middle_of_the_bone():
    volume, origin, spacing = _toy_spine([])
    centre = body_centre(volume, origin, spacing, 34.0, 25.0, 100.0, radius=10.0, bone_hu=120.0)
    np.testing.assert_allclose(centre[:2], [40.0, 30.0], atol=1.0)
