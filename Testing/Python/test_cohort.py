"""A research engineer labels a hospital's cohort: a PACS export with everything a PACS holds, file lists,
crashes and reruns. Small CTs keep it quick (most hold no spine: the run says so and goes on)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_ct
from dicom_trees import new_uid, write_dose_report, write_series

from VertebraeLabeling.VertebraeLabelingLib import cli, cohort, dicom_series


def _ct(slices=40, z_spacing=2.0, seed=0):
    return make_ct(shape=(slices, 32, 32), spacing=(1.0, 1.0, z_spacing), seed=seed)


def _summary(out_dir, stem="summary"):
    with open(os.path.join(out_dir, stem + ".csv"), encoding="utf-8") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    with open(os.path.join(out_dir, stem + ".json"), encoding="utf-8") as handle:
        return rows, json.load(handle)


def _series_table(out_dir):
    with open(os.path.join(out_dir, "series.csv"), encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def pacs_export(tmp_path):
    """Two patients' studies as a PACS exports them, plus the things a cohort run must leave out."""
    root = tmp_path / "export"
    study = new_uid()
    # Patient 1: a thick and a thin reconstruction of one scan in ONE folder, a scout, a dose report,
    # an MR and a PET series, a secondary capture and a broken file.
    write_series(str(root / "P001" / "CT"), _ct(40, 2.0), study_uid=study, series_number=2,
                 description="Abdomen 2mm", prefix="A")
    write_series(str(root / "P001" / "CT"), _ct(80, 1.0), study_uid=study, series_number=3,
                 description="Abdomen 1mm", prefix="B")
    write_series(str(root / "P001" / "scout"), _ct(1), study_uid=study, series_number=1, description="Topogram",
                 image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    write_series(str(root / "P001" / "MR"), _ct(20), study_uid=study, series_number=5, description="T2 sag",
                 modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4")
    write_series(str(root / "P001" / "PET"), _ct(20), study_uid=study, series_number=6, description="PET AC",
                 modality="PT", sop_class="1.2.840.10008.5.1.4.1.1.128")
    write_series(str(root / "P001" / "SC"), _ct(20), study_uid=study, series_number=7, description="Screen save",
                 image_type="DERIVED\\SECONDARY", sop_class="1.2.840.10008.5.1.4.1.1.7")
    write_dose_report(str(root / "P001" / "dose" / "dose.dcm"), study)
    (root / "P001" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    (root / "README.txt").write_text("exported by the PACS")
    # Patient 2: no Patient ID, a name in Latin-1 (an older PACS), a CT that is complete.
    write_series(str(root / "P002"), _ct(30, 2.5, seed=1), patient_id="", patient_name="Müller^Jürgen",
                 charset="ISO_IR 100", series_number=4, description="Thorax")
    # Patient 3: the only CT misses slices (an interrupted transfer).
    write_series(str(root / "P003"), _ct(40, 2.0, seed=2), patient_id="P003", series_number=2, skip=(20, 21, 22),
                 description="Chest")
    # Patient 4: an MR study only: nothing to label, and not a failure.
    write_series(str(root / "P004"), _ct(20), patient_id="P004", series_number=1, description="Lumbar MR",
                 modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4")
    return root


def test_a_pacs_export_gives_one_case_per_study_and_says_what_was_left_out(tmp_path, pacs_export, capsys):
    out = tmp_path / "results"
    code = cli.main([str(pacs_export), "--out-dir", str(out), "--no-mirror"])
    assert code == cli.EXIT_ERROR  # patient 3's CT could not be labeled: the exit status says so
    err = capsys.readouterr().err
    assert "P003" in err and "missing slices" in err

    rows, document = _summary(out)
    thin = "P001/20250301_" + [r for r in rows if r.startswith("P001/")][0].split("_")[1].split("/")[0]
    assert rows[f"{thin}/S3_Abdomen_1mm"]["status"] == "labeled"  # thinnest of the two covering the scan
    assert (out / "P001").is_dir() and os.path.exists(rows[f"{thin}/S3_Abdomen_1mm"]["output"])
    latin = [name for name in rows if name.startswith("Müller_Jürgen/")]
    assert len(latin) == 1 and rows[latin[0]]["status"] == "labeled"  # decoded, not escaped, in the folder name
    assert os.path.exists(rows[latin[0]]["output"])
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert [r["case"].split("/")[0] for r in failed] == ["P003"]
    assert "missing slices" in failed[0]["error"]
    assert document["counts"] == {"labeled": 2, "failed": 1, "no CT to label": 1}
    assert [r["error"] for r in rows.values() if r["case"].startswith("P004/")] == ["the study holds no CT volume (MR)"]
    assert all(float(r["seconds"]) >= 0 for r in rows.values())

    reasons = {(row["description"] or os.path.basename(row["path"])): row["reason"] for row in _series_table(out)}
    assert reasons["Abdomen 2mm"].startswith("thicker slices")
    assert reasons["Topogram"] == "localizer (scout)"
    assert reasons["T2 sag"] == "not a CT (modality MR)"
    assert reasons["PET AC"] == "not a CT (modality PT)"
    assert reasons["Screen save"].startswith("secondary capture")
    assert reasons["dose.dcm"].startswith("dose report")
    assert reasons["broken.dcm"].startswith("broken DICOM file")
    assert "README.txt" not in reasons  # not DICOM at all: nothing to report


def test_a_rerun_skips_cases_already_done_and_keeps_their_results(tmp_path, pacs_export):
    out = tmp_path / "results"
    cli.main([str(pacs_export), "--out-dir", str(out), "-q", "--no-mirror"])
    first, _ = _summary(out)
    done = {name: row for name, row in first.items() if row["status"] == "labeled"}
    stamps = {name: os.stat(row["output"]).st_mtime_ns for name, row in done.items()}
    assert cli.main([str(pacs_export), "--out-dir", str(out), "-q", "--no-mirror"]) == cli.EXIT_ERROR
    second, _ = _summary(out)
    for name, row in done.items():
        assert second[name]["status"] == "done earlier"
        assert second[name]["review_notes"] == row["review_notes"]  # carried over from the first summary
        assert os.stat(row["output"]).st_mtime_ns == stamps[name]
    assert [r["status"] for r in second.values() if r["case"].startswith("P003")] == ["failed"]  # tried again


def _four_small_cts(folder) -> list:
    """Four small generated CTs written as NIfTI files in ``folder``; their paths."""
    paths = []
    for n in range(4):
        path = folder / f"ct{n}.nii.gz"
        sitk.WriteImage(_ct(24, 3.0, seed=n), str(path))
        paths.append(str(path))
    return paths


def test_ctrl_c_keeps_what_was_written_and_the_rerun_finishes(tmp_path, monkeypatch, capsys):
    inputs = _four_small_cts(tmp_path)
    out = tmp_path / "results"
    real = cohort.label_case
    calls = []

    def interrupted_on_the_third(case, output, options):
        calls.append(case.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(case, output, options)

    monkeypatch.setattr(cohort, "label_case", interrupted_on_the_third)
    assert cli.main([*inputs, "--out-dir", str(out), "-q"]) == cli.EXIT_CANCELLED
    assert "run the same command again" in capsys.readouterr().err
    rows, document = _summary(out)
    assert document["interrupted"] is True
    assert [rows[f"ct{n}"]["status"] for n in range(4)] == ["labeled", "labeled", "not run", "not run"]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]

    monkeypatch.setattr(cohort, "label_case", real)
    assert cli.main([*inputs, "--out-dir", str(out), "-q"]) == cli.EXIT_OK
    rows, document = _summary(out)
    assert [rows[f"ct{n}"]["status"] for n in range(4)] == ["done earlier", "done earlier", "labeled", "labeled"]
    assert document["interrupted"] is False


def test_a_case_that_cannot_be_written_does_not_stop_the_others(tmp_path):
    good, bad = tmp_path / "good.nii.gz", tmp_path / "blocked.nii.gz"
    sitk.WriteImage(_ct(), str(good))
    sitk.WriteImage(_ct(seed=3), str(bad))
    out = tmp_path / "results"
    out.mkdir()
    (out / "blocked.mrk.json").mkdir()  # a folder where the result file should go
    assert cli.main([str(good), str(bad), "--out-dir", str(out), "-q", "--overwrite"]) == cli.EXIT_ERROR
    rows, _ = _summary(out)
    assert rows["good"]["status"] == "labeled" and os.path.isfile(rows["good"]["output"])
    assert rows["blocked"]["status"] == "failed" and rows["blocked"]["error"]


def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_ct(), str(ct))
    (tmp_path / "taken").write_text("a file")
    assert cli.main([str(ct), "--out-dir", str(tmp_path / "taken"), "-q"]) == cli.EXIT_ERROR
    assert "is a file" in capsys.readouterr().err
    assert cli.main([str(ct), "--out-dir", str(tmp_path / "taken" / "sub"), "-q"]) == cli.EXIT_ERROR
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_ct(), str(ct))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main([str(ct), "--out-dir", str(locked), "-q"]) == cli.EXIT_ERROR
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_csv_list_names_the_cases_and_a_missing_file_is_one_failed_row(tmp_path):
    (tmp_path / "scans").mkdir()
    sitk.WriteImage(_ct(), str(tmp_path / "scans" / "a.nii.gz"))
    sitk.WriteImage(_ct(seed=1), str(tmp_path / "scans" / "b.nrrd"))
    (tmp_path / "list.csv").write_text("case,path\nsubject-01,scans/a.nii.gz\nsubject-02,scans/b.nrrd\n"
                                       "subject-03,scans/gone.nii.gz\n../../escape/me,scans/a.nii.gz\n",
                                       encoding="utf-8")
    out = tmp_path / "results"
    assert cli.main([str(tmp_path / "list.csv"), "--out-dir", str(out), "-q", "--format", "csv"]) == cli.EXIT_ERROR
    rows, _ = _summary(out)
    assert rows["subject-01"]["status"] == rows["subject-02"]["status"] == "labeled"
    assert (out / "subject-01.csv").is_file() and (out / "subject-02.csv").is_file()
    assert rows["subject-03"]["status"] == "failed" and "No such file" in rows["subject-03"]["error"]
    assert rows["escape/me"]["status"] == "labeled" and (out / "escape" / "me.csv").is_file()  # stays inside


def test_overviews_are_saved_next_to_each_result(tmp_path):
    sitk.WriteImage(_ct(), str(tmp_path / "a.nii.gz"))
    out = tmp_path / "results"
    assert cli.main([str(tmp_path / "a.nii.gz"), "--out-dir", str(out), "-q", "--overviews"]) == cli.EXIT_OK
    assert (out / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_list_without_out_dir_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "list.csv").write_text("path\nx.nii.gz\n")
    assert cli.main([str(tmp_path / "list.csv")]) == cli.EXIT_USAGE
    assert "--out-dir" in capsys.readouterr().err


def test_two_workers_load_the_model_once_each_and_label_every_case(tmp_path):
    inputs = _four_small_cts(tmp_path)
    out = tmp_path / "results"
    assert cli.main([*inputs, "--out-dir", str(out), "-q", "--jobs", "2"]) == cli.EXIT_OK
    _, document = _summary(out)
    records = document["cases"]
    assert sorted(r["case"] for r in records) == [f"ct{n}" for n in range(4)]
    assert all(r["status"] == "labeled" for r in records)
    assert {r["process"] for r in records} - {os.getpid()}, "the cases ran in worker processes"
    assert all(r["model_loads"] == 1 for r in records)


def test_shards_split_the_cases_without_overlap(tmp_path):
    cases = [cohort.Case(f"case{n:02d}", "x") for n in range(10)]
    shards = [cohort.select_shard(cases, (k, 3)) for k in (1, 2, 3)]
    names = [c.name for shard in shards for c in shard]
    assert sorted(names) == [c.name for c in cases] and len(set(names)) == 10
    with pytest.raises(ValueError):
        cohort.parse_shard("4/3")
    for n in range(3):
        sitk.WriteImage(_ct(seed=n), str(tmp_path / f"ct{n}.nii.gz"))
    out = tmp_path / "results"
    assert cli.main([str(tmp_path / f"ct{n}.nii.gz") for n in range(3)] +
                    ["--out-dir", str(out), "-q", "--shard", "2/2"]) == cli.EXIT_OK
    rows, _ = _summary(out, "summary-shard-2-of-2")
    assert list(rows) == ["ct1"]


def test_the_series_rule_prefers_axial_then_coverage_then_thin_slices(tmp_path):
    study = new_uid()
    sagittal = _ct(60, 1.0)
    sagittal.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # slices stacked left to right
    write_series(str(tmp_path / "sag"), sagittal, study_uid=study, series_number=9, description="Sag MPR",
                 image_type="DERIVED\\SECONDARY\\REFORMATTED")
    write_series(str(tmp_path / "long"), _ct(60, 3.0), study_uid=study, series_number=2, description="Long 3mm")
    write_series(str(tmp_path / "short"), _ct(40, 1.0), study_uid=study, series_number=3, description="Short 1mm")
    series, _ = dicom_series.scan_tree(str(tmp_path))
    [choice] = dicom_series.choose_per_study(series)
    assert choice.chosen.tags["series_description"] == "Long 3mm"  # 177 mm against 39 mm
    reasons = {s.tags["series_description"]: reason for s, reason in choice.skipped}
    assert reasons["Sag MPR"].startswith("not axial")
    assert reasons["Short 1mm"].startswith("covers 39 mm")


def test_names_in_latin1_and_utf8_come_out_as_text():
    assert dicom_series.decode_text("M\udcfcller^J\udcfcrgen", "ISO_IR 100") == "Müller^Jürgen"
    assert dicom_series.decode_text("山田^太郎 ", "ISO_IR 192") == "山田^太郎"
    assert dicom_series.safe_name("山田^太郎", "x") == "山田_太郎"
    assert dicom_series.safe_name("../..", "fallback") == "fallback"


def test_a_real_spine_in_a_cohort_reports_its_levels(tmp_path, sample_ct_path):
    shutil.copy(sample_ct_path, tmp_path / "sample.nii.gz")
    out = tmp_path / "results"
    assert cli.main([str(tmp_path / "sample.nii.gz"), "--out-dir", str(out), "-q", "--no-mirror"]) == cli.EXIT_OK
    rows, _ = _summary(out)
    row = rows["sample"]
    doc = json.loads((out / "sample.mrk.json").read_text(encoding="utf-8"))
    labels = [p["label"] for p in doc["markups"][0]["controlPoints"]]
    assert int(row["num_levels"]) == len(labels) >= 5  # a lumbar CT: at least the five lumbar levels
    assert row["levels"].startswith(labels[0]) and row["levels"].endswith(labels[-1])
    assert np.isfinite(float(row["seconds"]))


def test_ctrl_c_on_a_parallel_run_stops_the_workers_and_keeps_finished_results(tmp_path, sample_ct_path):
    import signal
    import subprocess
    import sys
    import time

    inputs = []
    for n in range(4):
        shutil.copy(sample_ct_path, tmp_path / f"ct{n}.nii.gz")
        inputs.append(str(tmp_path / f"ct{n}.nii.gz"))
    out = tmp_path / "results"
    command = [sys.executable, "-m", "VertebraeLabeling.VertebraeLabelingLib.cli", *inputs, "--out-dir", str(out),
               "--jobs", "2", "-q", "--no-mirror"]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    deadline = time.monotonic() + 120
    while not list(out.glob("*.mrk.json")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = run.communicate(timeout=60)
    assert run.returncode == cli.EXIT_CANCELLED, err
    rows, document = _summary(out)
    assert document["interrupted"] is True
    finished = {name for name, row in rows.items() if row["status"] == "labeled"}
    assert finished and finished == {p.name[: -len(".mrk.json")] for p in out.glob("*.mrk.json")}
    assert {row["status"] for name, row in rows.items() if name not in finished} <= {"not run"}
    time.sleep(1)
    assert {p.name[: -len(".mrk.json")] for p in out.glob("*.mrk.json")} == finished  # the workers stopped


def test_a_result_published_in_the_moment_of_ctrl_c_is_counted_as_labeled(tmp_path):
    """A worker can write its result just before Ctrl-C and not yet have told the main process: the summary
    must still list that case as labeled (its file is whole), so the table agrees with the folder."""
    for n in range(3):
        sitk.WriteImage(_ct(seed=n), str(tmp_path / f"ct{n}.nii.gz"))
    plan = cohort.collect_cases([str(tmp_path / f"ct{n}.nii.gz") for n in range(3)])
    out = tmp_path / "results"
    out.mkdir()
    closed = []

    def runner(items):
        (first, first_out), (second, second_out) = items[0], items[1]
        try:
            (out / os.path.basename(first_out)).write_text("{}", encoding="utf-8")
            yield cohort.CaseRecord(first.name, cohort.LABELED, levels="L1-L5", num_levels=5, output=first_out)
            (out / os.path.basename(second_out)).write_text("{}", encoding="utf-8")  # published, not reported
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    with pytest.raises(KeyboardInterrupt):
        cohort.run_cohort(plan, str(out), cohort.LabelOptions(), runner=runner)
    rows, document = _summary(out)
    assert document["interrupted"] is True and closed
    assert [rows[name]["status"] for name in ("ct0", "ct1", "ct2")] == ["labeled", "labeled", "not run"]
    assert "interrupted" in rows["ct1"]["review_notes"]
