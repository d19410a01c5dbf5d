"""Bad input gets a clear message, a non-zero exit, and leaves the user's files as they were."""

import gzip
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_ct

from VertebraeLabeling.VertebraeLabelingLib import cli
from VertebraeLabeling.VertebraeLabelingLib.errors import InputImageError
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image, validate_ct


def _run_cli(tmp_path, ct_path, *extra):
    out = tmp_path / "result.mrk.json"
    out.write_text("user's previous result")
    code = cli.main([str(ct_path), "-o", str(out), "-q", "--overwrite", *extra])
    return code, out


def _save(img, tmp_path, name="ct.nii.gz"):
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def _expect_refused(tmp_path, capsys, img_or_path, pattern):
    path = img_or_path if isinstance(img_or_path, (str, os.PathLike)) else _save(img_or_path, tmp_path)
    code, out = _run_cli(tmp_path, path)
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    assert pattern.lower() in err.lower(), err
    assert out.read_text() == "user's previous result"
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    assert not leftovers
    return err


def test_2d_image(tmp_path, capsys):
    img = sitk.GetImageFromArray(np.full((64, 64), -1000, np.int16))
    _expect_refused(tmp_path, capsys, img, "2-D")


def test_single_slice_3d_image(tmp_path, capsys):
    _expect_refused(tmp_path, capsys, make_ct(shape=(1, 64, 64)), "single slice")


def test_empty_volume(tmp_path, capsys):
    img = sitk.GetImageFromArray(np.zeros((40, 50, 50), np.int16))
    _expect_refused(tmp_path, capsys, img, "every voxel")


def test_constant_air_volume(tmp_path, capsys):
    img = sitk.GetImageFromArray(np.full((40, 50, 50), -1000, np.int16))
    _expect_refused(tmp_path, capsys, img, "every voxel")


def test_nan_voxels(tmp_path, capsys):
    arr = sitk.GetArrayFromImage(make_ct()).astype(np.float32)
    arr[10, 10, 10] = np.nan
    arr[11, 10, 10] = np.inf
    # NIfTI I/O in ITK turns NaN into 0, so the file test uses MetaImage, which keeps them.
    _expect_refused(tmp_path, capsys, _save(sitk.GetImageFromArray(arr), tmp_path, "ct.mha"), "NaN")
    with pytest.raises(InputImageError, match="NaN"):
        validate_ct(sitk.GetImageFromArray(arr))


def test_mri_like_intensities(tmp_path, capsys):
    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 1200, size=(40, 64, 64)).astype(np.float32)  # no negative values: not HU
    _expect_refused(tmp_path, capsys, sitk.GetImageFromArray(arr), "Hounsfield")


def test_mask_instead_of_ct(tmp_path, capsys):
    arr = np.zeros((40, 64, 64), np.uint8)
    arr[10:30, 20:40, 20:40] = 1
    _expect_refused(tmp_path, capsys, sitk.GetImageFromArray(arr), "Hounsfield")


def test_missing_file(tmp_path, capsys):
    _expect_refused(tmp_path, capsys, str(tmp_path / "nope.nii.gz"), "No such file")


def test_truncated_file(tmp_path, capsys, sample_ct_path):
    data = open(sample_ct_path, "rb").read()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 3])
    _expect_refused(tmp_path, capsys, bad, "Could not read")


def test_not_an_image_at_all(tmp_path, capsys):
    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(gzip.compress(b"this is a text file, not a CT"))
    _expect_refused(tmp_path, capsys, bad, "Could not read")


def test_empty_dicom_folder(tmp_path, capsys):
    folder = tmp_path / "dicom"
    folder.mkdir()
    _expect_refused(tmp_path, capsys, folder, "no DICOM series")


def test_vector_image(tmp_path, capsys):
    arr = np.zeros((20, 30, 30, 3), np.uint8)
    _expect_refused(tmp_path, capsys, sitk.GetImageFromArray(arr, isVector=True), "values per voxel")


def test_absurd_spacing(tmp_path, capsys):
    img = make_ct()
    img.SetSpacing((1.0, 1.0, 100.0))
    _expect_refused(tmp_path, capsys, img, "spacing is wrong")


def test_wrong_model_file(tmp_path, capsys, sample_ct_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a model")
    code, out = _run_cli(tmp_path, sample_ct_path, "--model", str(fake))
    assert code == cli.EXIT_ERROR
    assert "manifest" in capsys.readouterr().err
    assert out.read_text() == "user's previous result"


def test_tampered_bundled_model_copy(tmp_path, capsys, sample_ct_path):
    from VertebraeLabeling.VertebraeLabelingLib.model_io import default_model_path, manifest_path

    copy = tmp_path / "model.pt"
    shutil.copy(default_model_path(), copy)
    shutil.copy(manifest_path(default_model_path()), tmp_path / "model.json")
    with open(copy, "r+b") as fh:
        fh.seek(-10, 2)
        fh.write(b"0123456789")
    code, out = _run_cli(tmp_path, sample_ct_path, "--model", str(copy))
    assert code == cli.EXIT_ERROR
    assert "Checksum mismatch" in capsys.readouterr().err
    assert out.read_text() == "user's previous result"


def test_validate_accepts_the_real_sample_ct(sample_ct_path):
    validate_ct(read_image(sample_ct_path))


def test_validate_raises_input_image_error_type():
    with pytest.raises(InputImageError):
        validate_ct(sitk.GetImageFromArray(np.zeros((5, 5, 5), np.int16)))


def test_a_spine_ct_with_a_small_field_of_view_and_no_air_is_accepted(sample_ct_path):
    """Spine protocols reconstruct a 120-200 mm field inside the body: fat and muscle, no air. That is a CT."""
    img = sitk.DICOMOrient(read_image(sample_ct_path), "LPS")
    inside = img[43:83, 40:80, :]  # 120 x 120 mm around the lumbar spine of the sample CT (3 mm voxels)
    assert np.percentile(sitk.GetArrayViewFromImage(inside), 1) > -400  # no air: refused before
    validate_ct(inside)
