"""The Slicer module's Logic against REAL MRML classes (PyPI ``slicer-core``), and its worker.

MRML tests need ``slicer-core`` (Python >= 3.10, ~1.3 GB with vtk) and are skipped without it:

    python3 -m venv /work/slicer-venv
    /work/slicer-venv/bin/pip install slicer-core numpy SimpleITK pytest jsonschema
    /work/slicer-venv/bin/python -m pytest Testing/Python/test_slicer_logic.py

The worker test needs torch and runs in the main environment.

Positions come from the TotalSegmentator annotation of the shared CT (RAS world mm), so the
checks test our LPS/RAS handling against an independent source, not against our own code.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "VertebraeLabeling"
WORKER = MODULE_DIR / "Resources" / "Scripts" / "vertebrae_labeling_worker.py"
CASE = ROOT.parent / "shared" / "data" / "ts_example_ct"
CT = CASE / "ct.nii.gz" if (CASE / "ct.nii.gz").is_file() else ROOT / "Testing" / "Data" / "ts_example_ct.nii.gz"
MARKUPS_SCHEMA = ROOT.parent / "shared" / "schemas" / "markups-schema-v1.0.3.json"

sys.path.insert(0, str(MODULE_DIR))


def _annotation():
    """{name: RAS mm} of the whole (not border-touching) vertebrae that have one of our names."""
    from VertebraeLabelingLib.vertebrae import NAME_TO_INDEX

    path = CASE / "centroids_from_forcesplit.json"
    if not path.is_file():
        pytest.skip("shared annotation not available")
    data = json.loads(path.read_text())
    return {v["name"]: np.array(v["centroid_world_mm"], float) for v in data["vertebrae"]
            if v["name"] in NAME_TO_INDEX and not v["touches_border"]}


def _result_from_annotation(ann, confidence=0.9):
    """A worker result (LPS) built from the RAS annotation."""
    return {"format": "vertebrae-labeling-slicer-result", "version": 1, "coordinateSystem": "LPS",
            "vertebrae": [{"name": n, "position": [-p[0], -p[1], p[2]], "confidence": confidence}
                          for n, p in ann.items()],
            "messages": [], "modelTrained": True}


# ---------------------------------------------------------------------------------------------
# The worker script, as the module runs it (separate process), in the main environment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [[], ["--no-mirror", "--stride", "52"]], ids=["defaults", "fast"])
def test_worker_runs_the_core_and_reports_progress(tmp_path, options):
    pytest.importorskip("torch")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--lib-dir", str(MODULE_DIR), "--input", str(CT), "--output", str(out),
         "--device", "cpu", "--cancel-file", str(tmp_path / "cancel")] + options,
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    progress = [line for line in proc.stdout.splitlines() if line.startswith("PROGRESS ")]
    fractions = [float(line.split()[1]) for line in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    result = json.loads(out.read_text())
    assert result["format"] == "vertebrae-labeling-slicer-result" and result["coordinateSystem"] == "LPS"
    for v in result["vertebrae"]:
        assert len(v["position"]) == 3 and 0.0 <= v["confidence"] <= 1.0
    assert not (tmp_path / "result.json.part").exists()


def test_worker_cancel_file_and_user_errors(tmp_path):
    pytest.importorskip("torch")
    cancel = tmp_path / "cancel"
    cancel.write_text("x")
    base = [sys.executable, str(WORKER), "--lib-dir", str(MODULE_DIR), "--output", str(tmp_path / "r.json"),
            "--device", "cpu", "--cancel-file", str(cancel)]
    proc = subprocess.run(base + ["--input", str(CT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stdout
    assert not (tmp_path / "r.json").exists()
    bad = tmp_path / "not_a_ct.nii.gz"
    bad.write_bytes(b"garbage")
    proc = subprocess.run(base[:-2] + ["--input", str(bad)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert any(line.startswith("ERROR ") for line in proc.stdout.splitlines())


# ---------------------------------------------------------------------------------------------
# MRML (slicer-core)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mod():
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' package here is not slicer-core")
    import VertebraeLabeling as module

    return module


@pytest.fixture()
def scene(mod):
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)


@pytest.fixture()
def volume(scene):
    """The shared CT, read by Slicer's own volume storage node."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(CT))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), "Slicer could not read the CT"
    assert slicer.util.arrayFromVolume(node).shape == (112, 101, 122)
    return node


def _ras_by_label(logic, out):
    return {p.label: np.array(p.positionRas) for p in logic.points(out)}


def test_volume_geometry_matches_annotation_affine(volume):
    import vtk

    path = CASE / "centroids_from_forcesplit.json"
    if not path.is_file():
        pytest.skip("shared annotation not available")
    affine = np.array(json.loads(path.read_text())["affine"])
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_ras, affine, atol=1e-3)


def test_written_volume_has_the_same_physical_frame(mod, volume, tmp_path):
    """What the worker reads (Slicer's NRRD) is in the same LPS frame as the original file."""
    import SimpleITK as sitk

    path = str(tmp_path / "input.nrrd")
    mod.VertebraeLabelingLogic().writeVolume(volume, path)
    a, b = sitk.ReadImage(str(CT)), sitk.ReadImage(path)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert a.GetSize() == b.GetSize()


def test_result_to_region_point_lists(mod, scene, volume):
    from VertebraeLabelingLib.vertebrae import REGION_COLORS, region_of

    ann = _annotation()
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result_from_annotation(ann))
    pts = logic.points(out)
    assert sorted(p.label for p in pts) == sorted(ann)
    # Cranio-caudal order, and every position equals the annotation's RAS centroid.
    zs = [p.positionRas[2] for p in pts]
    assert zs == sorted(zs, reverse=True)
    for p in pts:
        np.testing.assert_allclose(p.positionRas, ann[p.label], atol=1e-3)
        world = [0.0, 0.0, 0.0]
        p.node.GetNthControlPointPositionWorld(p.index, world)
        np.testing.assert_allclose(world, ann[p.label], atol=1e-3)
        assert p.confidence == pytest.approx(0.9)
        # One list per region, coloured by region, points unlocked for dragging.
        region = region_of(p.label)
        assert p.node.GetAttribute(mod.ATTR_REGION) == region
        np.testing.assert_allclose(p.node.GetDisplayNode().GetSelectedColor(), REGION_COLORS[region], atol=1e-6)
        assert not p.node.GetNthControlPointLocked(p.index) and not p.node.GetLocked()
    regions = {region_of(n) for n in ann}
    assert set(logic.regionNodes(out)) == regions
    assert out.GetAttribute(mod.ATTR_SOURCE_VOLUME) == volume.GetID()
    assert not logic.isEdited(out)


def test_result_follows_the_volume_transform(mod, scene, volume):
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(m)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    ann = _annotation()
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result_from_annotation(ann))
    for p in logic.points(out):
        assert p.node.GetTransformNodeID() == transform.GetID()
        world = [0.0, 0.0, 0.0]
        p.node.GetNthControlPointPositionWorld(p.index, world)
        np.testing.assert_allclose(world, ann[p.label] + [10.0, 0, 0], atol=1e-3)


def test_renumber_from_point_and_rerun_protection(mod, scene, volume):
    ann = _annotation()
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result_from_annotation(ann))
    before = _ras_by_label(logic, out)
    l1 = next(p for p in logic.points(out) if p.label == "L1")
    logic.renamePoint(out, l1, "t12", renumber=True)  # "this is T12, not L1": everything shifts up one
    after = _ras_by_label(logic, out)
    shift = {"L1": "T12", "L2": "L1", "L3": "L2", "L4": "L3", "L5": "L4", "S1": "L5"}
    for old, new in shift.items():
        if old in before:
            np.testing.assert_allclose(after[new], before[old])
    # The renamed point moved to the thoracic list (its colour follows its name).
    t12 = next(p for p in logic.points(out) if p.label == "T12")
    assert t12.node.GetAttribute(mod.ATTR_REGION) == "thoracic"
    assert logic.isEdited(out)
    with pytest.raises(ValueError):
        logic.process(volume, out)  # refuses before starting anything
    with pytest.raises(ValueError):
        logic.renamePoint(out, t12, "T13", renumber=True)
    # A plain rename touches one point only.
    logic.renamePoint(out, t12, "L1", renumber=False)
    assert [p.label for p in logic.points(out)].count("L1") == 2


def test_edit_detection(mod, scene, volume):
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    assert not logic.isEdited(out)
    out.AddControlPoint(0.0, 0.0, 0.0, "F-1")
    assert logic.isEdited(out)  # points the module never wrote are the user's
    logic.setResult(out, volume, _result_from_annotation(_annotation()))
    assert not logic.isEdited(out) and all(p.label != "F-1" for p in logic.points(out))
    p = logic.points(out)[0]
    p.node.SetNthControlPointPosition(p.index, p.positionRas[0] + 3.0, p.positionRas[1], p.positionRas[2])
    assert logic.isEdited(out)
    logic.markAsUnedited(out)
    assert not logic.isEdited(out)
    q = logic.points(out)[-1]
    q.node.RemoveNthControlPoint(q.index)
    assert logic.isEdited(out)


def test_exports(mod, scene, volume, tmp_path):
    import SimpleITK as sitk
    import slicer
    from VertebraeLabelingLib import outputs
    from VertebraeLabelingLib.vertebrae import VERSE_ID

    ann = _annotation()
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result_from_annotation(ann, confidence=0.75))

    mrk = tmp_path / "v.mrk.json"
    logic.exportMarkupsJson(out, str(mrk))
    data = json.loads(mrk.read_text())
    if MARKUPS_SCHEMA.is_file():
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(data, json.loads(MARKUPS_SCHEMA.read_text()))
    reread = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()  # not registered with a bare scene
    scene.AddNode(storage)
    storage.SetFileName(str(mrk))
    assert storage.ReadData(reread)
    assert reread.GetNumberOfControlPoints() == len(ann)
    for i in range(reread.GetNumberOfControlPoints()):
        pos = [0.0, 0.0, 0.0]
        reread.GetNthControlPointPosition(i, pos)
        np.testing.assert_allclose(pos, ann[reread.GetNthControlPointLabel(i)], atol=1e-3)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsJsonStorageNode") == 1  # the export's temp node is gone

    verse = tmp_path / "v_ctd.json"
    logic.exportVerseJson(out, volume, str(verse))
    entries = json.loads(verse.read_text())
    image = sitk.ReadImage(str(CT))
    by_id = {e["label"]: e for e in entries[1:]}
    for name, ras in ann.items():
        if name in VERSE_ID:
            e = by_id[VERSE_ID[name]]
            lps = outputs.verse_to_lps([e["X"], e["Y"], e["Z"]], image)
            np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=0.05)

    csv_path = tmp_path / "v.csv"
    logic.exportCsv(out, str(csv_path))
    rows = list(csv.DictReader(csv_path.open()))
    assert {r["name"] for r in rows} == set(ann)
    for r in rows:
        np.testing.assert_allclose([float(r["x_ras_mm"]), float(r["y_ras_mm"]), float(r["z_lps_mm"])],
                                   ann[r["name"]], atol=0.01)
        assert float(r["confidence"]) == pytest.approx(0.75)


def _fake_worker(tmp_path, body):
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent(body))
    return script


def test_job_progress_and_finish(mod, scene, volume, tmp_path):
    ann = _annotation()
    logic = mod.VertebraeLabelingLogic()
    result_json = json.dumps(_result_from_annotation(ann))
    script = _fake_worker(tmp_path, f"""
        import sys, json, os
        out = sys.argv[sys.argv.index("--output") + 1]
        for f in (0.0, 0.5, 1.0):
            print(f"PROGRESS {{f}} step {{f}}", flush=True)
        print("a log line", flush=True)
        open(out + ".part", "w").write({result_json!r}); os.replace(out + ".part", out)
    """)
    seen = []
    job = logic.startLabeling(volume, "cpu", command=[sys.executable, str(script)])
    assert os.path.getsize(os.path.join(job.tempDir, "input.nrrd")) > 1e6  # the CT was written for it
    assert job.command[job.command.index("--device") + 1] == "cpu"
    assert "--no-mirror" not in job.command  # the core's default: the mirrored second look is on
    assert "--no-mirror" in logic.buildCommand("in.nrrd", "out.json", "cancel", "cpu", mirror=False)
    job.onProgress = lambda f, m: seen.append((f, m))
    assert job.wait(timeout=60) == 0
    assert [f for f, _ in seen] == [0.0, 0.5, 1.0]
    assert job.logLines == ["a log line"]
    out = logic.finishLabeling(job, volume)
    assert sorted(p.label for p in logic.points(out)) == sorted(ann)
    job.cleanup()
    assert not os.path.exists(job.tempDir)


def test_job_cancel_kills_a_stuck_worker(mod, tmp_path):
    import time

    script = _fake_worker(tmp_path, """
        import time
        print("PROGRESS 0.1 working", flush=True)
        time.sleep(600)
    """)
    job = mod.LabelingJob([sys.executable, str(script)], str(tmp_path / "t"), str(tmp_path / "r.json"),
                          str(tmp_path / "cancel"))
    job.KILL_AFTER_S = 0.5
    job.start()
    t0 = time.monotonic()
    while job.progress < 0.1 and time.monotonic() - t0 < 30:
        job.poll()
        time.sleep(0.05)
    job.cancel()
    assert os.path.exists(job.cancelFile)
    job.wait(timeout=30)
    assert job.cancelled and not job.succeeded
    assert time.monotonic() - t0 < 20
    logic = mod.VertebraeLabelingLogic()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finishLabeling(job, None)


def test_failed_job_reports_worker_message(mod, tmp_path):
    script = _fake_worker(tmp_path, """
        import sys
        print("ERROR The image is not a CT.", flush=True)
        sys.exit(2)
    """)
    job = mod.LabelingJob([sys.executable, str(script)], str(tmp_path / "t"), str(tmp_path / "r.json"),
                          str(tmp_path / "cancel"))
    job.start()
    assert job.wait(timeout=60) == 2
    with pytest.raises(RuntimeError, match="not a CT"):
        mod.VertebraeLabelingLogic().finishLabeling(job, None)


@pytest.mark.parametrize("line,expected", [("PROGRESS 0.25 block 1/4", (0.25, "block 1/4")),
                                           ("PROGRESS 1 done", (1.0, "done")),
                                           ("PROGRESS 1.7 x", (1.0, "x")),
                                           ("progress 0.5", None), ("Found 3", None)])
def test_parse_progress_line(mod, line, expected):
    assert mod.parseProgressLine(line) == expected


def test_read_result_file_rejects_foreign_json(mod, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError):
        mod.VertebraeLabelingLogic.readResultFile(str(path))
