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
