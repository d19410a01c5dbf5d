"""The paper's z-score, kept within the range of the CTs the network was trained on."""

import numpy as np
import pytest

from VertebraeLabeling.VertebraeLabelingLib import preprocessing
from VertebraeLabeling.VertebraeLabelingLib.errors import InputImageError


def _body_in_air(rng):
    """Half air, half soft tissue with some bone: the statistics of an ordinary CT's field of view."""
    hu = np.full((40, 60, 60), -1000.0, np.float32)
    hu[:, :, 15:45] = rng.normal(40, 30, size=(40, 60, 30))
    hu[:, 25:35, 25:35] = 700.0
    return hu


def test_an_ordinary_ct_gets_the_plain_z_score():
    hu = _body_in_air(np.random.default_rng(0))
    mean, std = float(hu.mean()), float(hu.std())
    lo_m, hi_m = preprocessing.ZSCORE_MEAN_RANGE_HU
    lo_s, hi_s = preprocessing.ZSCORE_STD_RANGE_HU
    assert lo_m < mean < hi_m and lo_s < std < hi_s
    z = preprocessing.zscore(hu)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-4


def test_a_ct_without_air_is_scaled_like_the_training_cts():
    """Inside the body the plain z-score would put bone at 6-7 standard deviations; the clamped statistics
    keep it where the network has seen bone."""
    rng = np.random.default_rng(1)
    hu = rng.normal(30, 60, size=(40, 60, 60)).astype(np.float32)
    hu[:, 25:35, 25:35] = 700.0
    assert float(hu.std()) < 300 and float(hu.mean()) > -100
    z = preprocessing.zscore(hu)
    mean, std = preprocessing.ZSCORE_MEAN_RANGE_HU[1], preprocessing.ZSCORE_STD_RANGE_HU[0]
    np.testing.assert_allclose(z, (hu - mean) / std, rtol=1e-5, atol=1e-5)
    assert 2.0 < float(z.max()) < 3.0


def test_air_below_minus_1000_is_clamped_before_the_statistics():
    hu = _body_in_air(np.random.default_rng(2))
    padded = hu.copy()
    padded[hu == -1000.0] = -3024.0  # the value some scanners write outside the reconstruction circle
    np.testing.assert_array_equal(preprocessing.zscore(padded), preprocessing.zscore(hu))


def test_a_constant_volume_is_refused():
    with pytest.raises(InputImageError, match="same value"):
        preprocessing.zscore(np.full((8, 8, 8), 40.0, np.float32))


# ----------------------------------------------------------------------------------------------------------------
# resampling onto the canonical grid
# ----------------------------------------------------------------------------------------------------------------

import SimpleITK as sitk  # noqa: E402

#: direction matrices (columns = where the image axes point in LPS)
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS-stored NIfTI": np.diag([-1.0, -1.0, 1.0]),
    "slices running down (negative z)": np.diag([1.0, 1.0, -1.0]),
    "PIR (sagittal stack)": np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]]),
}


def _noise_ct(size, spacing, direction, dtype=np.int16, seed=0):
    """Every voxel a random HU value: the hardest input for two resamplers to agree on."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1024, 1600, size=size[::-1]).astype(dtype)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    image.SetOrigin((-12.3, 45.6, -78.9))
    return image


def _simpleitk_resampled(image):
    """The canonical volume from SimpleITK's Gaussians and resampler (the path of oblique CTs), in one slab."""
    origin, size = preprocessing.canonical_grid(image)
    return preprocessing._to_canonical_resampled(image, origin, size, preprocessing.WORKING_SPACING_MM, 10_000)


@pytest.mark.parametrize("orientation", sorted(DIRECTIONS))
@pytest.mark.parametrize("spacing", [(0.8, 0.8, 0.6), (0.7, 0.9, 1.25), (0.6, 2.5, 3.0)],
                         ids=["thin slices", "anisotropic", "coarser than the grid"])
def test_an_axis_aligned_ct_gets_the_numbers_of_simpleitk_resampling(orientation, spacing):
    """Whatever the storage order and the flips, one axis at a time gives SimpleITK's numbers, edges included."""
    image = _noise_ct((37, 41, 29), spacing, DIRECTIONS[orientation])
    fast = preprocessing.to_canonical(image)
    reference = _simpleitk_resampled(image)
    np.testing.assert_allclose(fast.origin_lps, reference.origin_lps)
    assert fast.shape == reference.shape
    assert float(np.abs(fast.hu - reference.hu).max()) < 0.01  # HU, out of values 2600 HU apart


@pytest.mark.parametrize("pixel_type", [np.float32, np.uint8, np.int32])
def test_any_pixel_type_is_read_slab_by_slab_as_float(pixel_type):
    image = _noise_ct((30, 33, 40), (0.8, 0.8, 0.6), DIRECTIONS["LPS"], dtype=pixel_type, seed=1)
    fast = preprocessing.to_canonical(image, slab_slices=4)
    assert fast.hu.dtype == np.float32
    assert float(np.abs(fast.hu - _simpleitk_resampled(image).hu).max()) < 0.01


def test_a_ct_of_three_slices_is_not_smoothed_across_them_in_either_path():
    image = _noise_ct((40, 44, 3), (0.7, 0.7, 0.6), DIRECTIONS["RAS-stored NIfTI"], seed=2)
    assert float(np.abs(preprocessing.to_canonical(image).hu - _simpleitk_resampled(image).hu).max()) < 0.01


def test_the_faces_of_a_ct_are_not_blurred_into_air():
    """A uniform 40 HU block: the canonical grid spans the CT from its first sample to its last, and the
    smoothing continues each line with its edge value (ITK's rule, in both paths), so every canonical voxel,
    the faces included, is 40 HU: nothing outside the CT (air) is mixed in."""
    image = sitk.GetImageFromArray(np.full((50, 31, 27), 40, np.int16))
    image.SetSpacing((0.7, 0.9, 0.6))
    image.SetDirection(tuple(DIRECTIONS["slices running down (negative z)"].ravel()))
    volume = preprocessing.to_canonical(image)
    assert volume.shape == (15, 14, 10)  # 29.4 × 27 × 18.2 mm between the first and last samples
    np.testing.assert_allclose(volume.hu, 40.0, atol=1e-3)
    np.testing.assert_allclose(_simpleitk_resampled(image).hu, 40.0, atol=1e-3)


def test_an_oblique_ct_still_goes_through_simpleitk(monkeypatch):
    calls = []
    monkeypatch.setattr(preprocessing, "_to_canonical_separable", lambda *args: calls.append(args))
    a = np.deg2rad(17.0)
    tilted = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    volume = preprocessing.to_canonical(_noise_ct((30, 30, 20), (0.8, 0.8, 0.6), tilted))
    assert not calls and volume.hu.dtype == np.float32


def test_a_thin_slice_ct_is_never_held_whole_as_float(monkeypatch):
    """The input is converted to float a slab at a time (1000-slice CTs): numpy never holds a quarter of it."""
    import tracemalloc

    image = _noise_ct((64, 64, 1000), (0.8, 0.8, 0.6), DIRECTIONS["LPS"], seed=3)
    float_copy = 64 * 64 * 1000 * 4
    tracemalloc.start()
    try:
        preprocessing.to_canonical(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < float_copy / 4, peak
