"""The labels go back to the PACS as a DICOM SR (Comprehensive 3D SR, TID 1500): valid, readable by
highdicom to the same points, filed with the CT it describes."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_ct
from dicom_trees import write_series

from VertebraeLabeling.VertebraeLabelingLib import cli
from VertebraeLabeling.VertebraeLabelingLib.results import LabeledVertebra, LabelingResult

pydicom = pytest.importorskip("pydicom", reason="DICOM SR needs the [dicom] extra (pydicom, highdicom)")
pytest.importorskip("highdicom", reason="DICOM SR needs the [dicom] extra (pydicom, highdicom)")

from VertebraeLabeling.VertebraeLabelingLib.dicom_sr import (  # noqa: E402
    VERTEBRA_SCT,
    read_dicom_sr,
    write_dicom_sr,
)

POINTS = {"T11": [12.345678, -101.25, 1403.5], "T12": [11.0, -99.125, 1375.75], "L1": [-3.5, -97.0, 1340.0],
          "S1": [0.0, -80.5, 1201.0625]}


@pytest.fixture()
def ct_series(tmp_path):
    folder = tmp_path / "ct"
    uids = write_series(str(folder), make_ct(shape=(20, 32, 32), spacing=(0.8, 0.8, 2.0)),
                        patient_name="山田^太郎", patient_id="P-07")
    files = sorted(str(folder / name) for name in os.listdir(folder))
    return files, uids


def _result():
    return LabelingResult(vertebrae=[LabeledVertebra(name, np.array(xyz), 0.9, "test")
                                     for name, xyz in POINTS.items()])


def test_the_vertebra_codes_are_pydicoms_snomed_codes():
    from pydicom.sr.codedict import codes

    for name, (value, meaning) in VERTEBRA_SCT.items():
        expected = codes.SCT.Sacrum if name.startswith("S") else getattr(codes.SCT, f"{name}Vertebra")
        assert (value, meaning) == (expected.value, expected.meaning), name


def test_the_report_reads_back_to_the_same_points_and_keeps_the_ct_uids(tmp_path, ct_series):
    files, uids = ct_series
    path = tmp_path / "labels.sr.dcm"
    write_dicom_sr(_result(), str(path), files, "test model")
    points = read_dicom_sr(str(path))
    assert [p.name for p in points] == list(POINTS)
    for point in points:
        assert np.max(np.abs(point.position_lps - POINTS[point.name])) < 0.01
        assert point.frame_of_reference_uid == uids["frame"]
        assert point.code == VERTEBRA_SCT[point.name][0]
    ds = pydicom.dcmread(str(path))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == uids["study"] and ds.PatientID == "P-07"
    assert str(ds.PatientName) == "山田^太郎"
    assert ds.SeriesInstanceUID not in (uids["series"], uids["study"])
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == uids["series"]
    assert sorted(item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence) == sorted(uids["sops"])


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy is not installed (apt-get install dicom3tools); CI has no such package step")
def test_dciodvfy_finds_no_error(tmp_path, ct_series):
    files, _ = ct_series
    path = tmp_path / "labels.sr.dcm"
    write_dicom_sr(_result(), str(path), files)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    messages = (run.stdout + run.stderr).splitlines()
    assert not [line for line in messages if line.startswith("Error")], "\n".join(messages)


def test_an_image_file_cannot_become_a_dicom_sr(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_ct(), str(ct))
    out = tmp_path / "ct.sr.dcm"
    assert cli.main([str(ct), "--format", "dicom-sr", "-o", str(out), "-q"]) == cli.EXIT_ERROR
    assert "DICOM input" in capsys.readouterr().err
    assert not out.exists()


def test_a_dicom_ct_labeled_from_the_command_line_gets_its_report(tmp_path, sample_ct_path):
    from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct

    folder = tmp_path / "sample_dicom"
    uids = write_series(str(folder), sitk.ReadImage(sample_ct_path))
    out = tmp_path / "sample.sr.dcm"
    assert cli.main([str(folder), "--format", "dicom-sr", "-o", str(out), "-q", "--no-mirror"]) == cli.EXIT_OK
    reported = {p.name: p for p in read_dicom_sr(str(out))}
    expected = label_ct(read_image(str(folder)), device="cpu", mirror=False)
    assert list(reported) == [v.name for v in expected.vertebrae] and len(reported) >= 5
    for vertebra in expected.vertebrae:
        assert np.max(np.abs(reported[vertebra.name].position_lps - vertebra.position_lps)) < 0.01
        assert reported[vertebra.name].frame_of_reference_uid == uids["frame"]


def test_a_cohort_of_dicom_studies_gets_one_report_per_study_referring_to_the_chosen_series(tmp_path,
                                                                                             sample_ct_path):
    study = "1.2.826.0.1.3680043.8.498.77"
    ct = sitk.ReadImage(sample_ct_path)
    thin = write_series(str(tmp_path / "export" / "a"), ct, study_uid=study, series_number=3, description="3mm")
    thick = write_series(str(tmp_path / "export" / "a"), ct[:, :, ::2], study_uid=study, series_number=2,
                         description="6mm", prefix="B")
    sitk.WriteImage(make_ct(), str(tmp_path / "export" / "plain.nii.gz"))
    write_series(str(tmp_path / "export" / "b"), make_ct(shape=(20, 32, 32)), patient_id="P002")  # no spine
    out = tmp_path / "results"
    code = cli.main([str(tmp_path / "export"), "--out-dir", str(out), "-q", "--format", "dicom-sr", "--no-mirror"])
    assert code == cli.EXIT_ERROR  # the NIfTI file cannot have a DICOM report, the spine-less CT has nothing
    reports = list(out.rglob("*.sr.dcm"))
    assert [p.name for p in reports] == ["S3_3mm.sr.dcm"]
    ds = pydicom.dcmread(str(reports[0]))
    assert ds.StudyInstanceUID == study
    referenced = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == thin["series"] != thick["series"]
    assert len(read_dicom_sr(str(reports[0]))) >= 5
    summary = (out / "summary.csv").read_text(encoding="utf-8")
    assert "plain,failed" in summary and "needs a DICOM input" in summary
    assert "nothing to report" in summary
