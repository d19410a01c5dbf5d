"""The Slicer module's Logic against REAL MRML classes (PyPI ``slicer-core``), and its worker.

MRML tests need ``slicer-core`` (Python >= 3.10, ~1.3 GB with vtk) and are skipped without it:

    python3 -m venv /work/slicer-venv
    /work/slicer-venv/bin/pip install slicer-core numpy SimpleITK pytest jsonschema
    /work/slicer-venv/bin/python -m pytest Testing/Python/test_slicer_logic.py

The worker test needs torch and runs in the main environment.

Positions come from the TotalSegmentator annotation of the sample CT (RAS world mm), so the
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
DATA = ROOT / "Testing" / "Data"
CT = DATA / "ts_example_ct.nii.gz"
#: TotalSegmentator's centres of mass of the sample CT's vertebrae, computed outside our code (SOURCE.txt)
ANNOTATION = DATA / "ts_example_ct" / "centroids_from_forcesplit.json"
MARKUPS_SCHEMA = DATA / "schemas" / "markups-schema-v1.0.3.json"

try:
    import slicer as _slicer

    _WITH_SLICER_CORE = hasattr(_slicer, "vtkMRMLScene")
except ImportError:
    _WITH_SLICER_CORE = False
# Inside Slicer the module's folder comes first on the path, so `import VertebraeLabeling` is the scripted module.
# Without slicer-core only VertebraeLabelingLib is needed from it: appended, it does not hide the
# VertebraeLabeling package from the tests that run after this file.
if _WITH_SLICER_CORE:
    sys.path.insert(0, str(MODULE_DIR))
else:
    sys.path.append(str(MODULE_DIR))


def _annotation():
    """{name: RAS mm} of the whole (not border-touching) vertebrae that have one of our names."""
    from VertebraeLabelingLib.vertebrae import NAME_TO_INDEX

    data = json.loads(ANNOTATION.read_text(encoding="utf-8"))
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
        assert isinstance(v["basis"], str)  # how the name was reached (may be empty)
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


# The fixtures `mod` (the Slicer module) and `scene` (a fresh MRML scene) are conftest.py's.


@pytest.fixture()
def volume(scene):
    """The sample CT, read by Slicer's own volume storage node."""
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

    affine = np.array(json.loads(ANNOTATION.read_text(encoding="utf-8"))["affine"])
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
    assert logic.sourceVolume(out) is volume
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
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads(MARKUPS_SCHEMA.read_text(encoding="utf-8")))
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


def _stuck_job(mod, tmp_path):
    """A labeling job whose worker reports progress once and then hangs."""
    script = _fake_worker(tmp_path, """
        import time
        print("PROGRESS 0.1 working", flush=True)
        time.sleep(600)
    """)
    return mod.LabelingJob([sys.executable, str(script)], str(tmp_path / "t"), str(tmp_path / "r.json"),
                           str(tmp_path / "cancel"))


def test_job_cancel_kills_a_stuck_worker(mod, tmp_path):
    import time

    job = _stuck_job(mod, tmp_path)
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


# ---------------------------------------------------------------------------------------------
# Sturdy in a real Slicer: what the panel does around a run (slicer-core where MRML is involved)
# ---------------------------------------------------------------------------------------------


def _fake_torch(tmp_path, error="OSError('[WinError 126] The specified module could not be found. "
                                "Error loading fbgemm.dll or one of its dependencies.')"):
    """A folder holding a ``torch`` package that is found but fails to import, like a broken install."""
    folder = tmp_path / "broken_torch"
    (folder / "torch").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text(f"raise {error}\n")
    return folder


def test_worker_reports_a_torch_that_cannot_be_loaded(tmp_path):
    """A broken PyTorch (a DLL that does not load on Windows) reaches the user as a message, not a traceback."""
    env = dict(os.environ, PYTHONPATH=str(_fake_torch(tmp_path)))
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--lib-dir", str(MODULE_DIR), "--input", str(tmp_path / "ct.nrrd"),
         "--output", str(tmp_path / "r.json"), "--device", "cpu"], capture_output=True, text=True, env=env,
        timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 1 and "could not be loaded" in errors[0] and "fbgemm.dll" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_worker_passes_how_each_name_was_reached(tmp_path):
    """The worker copies ``basis`` from the core's result into the result file (empty stays empty)."""
    import dataclasses

    from VertebraeLabelingLib.results import LabeledVertebra

    assert "basis" in {f.name for f in dataclasses.fields(LabeledVertebra)}  # the field the fake core fills
    lib = tmp_path / "lib" / "VertebraeLabelingLib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "errors.py").write_text("class VertebraeLabelingError(Exception): pass\n"
                                   "class CancelledError(VertebraeLabelingError): pass\n")
    (lib / "image_io.py").write_text("def read_image(path): return path\n")
    (lib / "inference.py").write_text(textwrap.dedent("""
        from types import SimpleNamespace as NS
        def label_ct(image, **kwargs):
            vertebrae = [NS(name="T12", position_lps=[1.0, 2.0, 3.0], confidence=0.93, basis="last rib pair"),
                         NS(name="L1", position_lps=[1.0, 2.0, -27.0], confidence=0.5, basis="")]
            return NS(vertebrae=vertebrae, messages=[], model_trained=True, timings={})
    """))
    fake_torch = tmp_path / "torch_ok"
    (fake_torch / "torch").mkdir(parents=True)
    (fake_torch / "torch" / "__init__.py").write_text("")
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--lib-dir", str(lib.parent), "--input", "ct.nrrd", "--output", str(out)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(fake_torch)), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    vertebrae = json.loads(out.read_text())["vertebrae"]
    assert [(v["name"], v["basis"]) for v in vertebrae] == [("T12", "last rib pair"), ("L1", "")]


def _small_volume(scene, name="ct"):
    """A small CT-like volume (1 mm voxels, LPS/RAS identity frame), made in memory."""
    import slicer
    import vtk

    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 8)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    slicer.util.updateVolumeFromArray(node, np.full((8, 8, 8), -1000, np.int16))
    return node


def _result(entries):
    """A worker result from [(name, RAS position, confidence, basis)]."""
    return {"format": "vertebrae-labeling-slicer-result", "version": 1, "coordinateSystem": "LPS",
            "vertebrae": [{"name": n, "position": [-p[0], -p[1], p[2]], "confidence": c, "basis": b}
                          for n, p, c, b in entries], "messages": [], "modelTrained": True}


LUMBAR = [("T12", (0.0, 0.0, 90.0), 0.93, "last rib pair"),
          ("L1", (0.0, 0.0, 60.0), 0.91, "last rib pair"),
          ("L2", (0.0, 0.0, 30.0), 0.35, "counted from the sacrum"),
          ("L3", (0.0, 0.0, 0.0), 0.88, "")]


def _markups_logic_rules(scene):
    """What Slicer's markups logic does to every markups node added to the scene outside an import or
    batch (vtkSlicerMarkupsLogic::OnMRMLSceneNodeAdded): give it a display node, make it the active place
    list. slicer-core has no application logic, so the tests add these rules; returns the selection node."""
    import slicer
    import vtk

    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_node_added(caller, event, node):
        if not node.IsA("vtkMRMLMarkupsNode") or scene.IsImporting() or scene.IsBatchProcessing():
            return
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetReferenceActivePlaceNodeID(node.GetID())

    scene.AddObserver(scene.NodeAddedEvent, on_node_added)
    return selection


def test_table_and_points_say_how_each_name_was_reached(mod, scene):
    """Each point's description holds its confidence and how it was named; the panel reads both back."""
    volume = _small_volume(scene)
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result(LUMBAR))
    pts = logic.points(out)
    assert [(p.label, p.basis) for p in pts] == [(n, b) for n, _p, _c, b in LUMBAR]
    descriptions = {p.label: p.node.GetNthControlPointDescription(p.index) for p in pts}
    assert descriptions["T12"] == "confidence 0.93; last rib pair"
    assert descriptions["L2"] == "confidence 0.35; counted from the sacrum"
    assert descriptions["L3"] == "confidence 0.88"  # no basis: nothing after the confidence
    assert [p.confidence for p in pts] == pytest.approx([c for _n, _p, c, _b in LUMBAR])

    # "This is L1, not T12": the renamed point was named by hand, the others follow from it.
    t12 = pts[0]
    logic.renamePoint(out, t12, "L1", renumber=True)
    assert [(p.label, p.basis) for p in logic.points(out)] == [
        ("L1", "named by hand"), ("L2", "renumbered from L1"), ("L3", "renumbered from L1"),
        ("L4", "renumbered from L1")]
    # A rename that changes nothing keeps what the point said.
    l2 = logic.points(out)[1]
    logic.renamePoint(out, l2, "L2", renumber=False)
    assert logic.points(out)[1].basis == "renumbered from L1"


def test_export_leaves_the_scene_as_it_was(mod, scene, tmp_path):
    """Exporting adds no node (no stray display node) and does not change the active place list."""
    selection = _markups_logic_rules(scene)
    volume = _small_volume(scene)
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result(LUMBAR))
    mine = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")  # now the active list
    nodes = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    logic.exportMarkupsJson(out, str(tmp_path / "v.mrk.json"))
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == nodes
    assert selection.GetActivePlaceNodeID() == mine.GetID()
    data = json.loads((tmp_path / "v.mrk.json").read_text())
    points = data["markups"][0]["controlPoints"]
    assert [(p["label"], p["description"]) for p in points][:2] == [
        ("T12", "confidence 0.93; last rib pair"), ("L1", "confidence 0.91; last rib pair")]


def test_a_run_keeps_the_users_active_place_list(mod, scene):
    """After a run (new output list, one list per region) and a renumbering that creates a region list,
    "place point" still adds to the list the user had chosen."""
    selection = _markups_logic_rules(scene)
    volume = _small_volume(scene)
    mine = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
    assert selection.GetActivePlaceNodeID() == mine.GetID()
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result(LUMBAR))
    assert len(logic.regionNodes(out)) == 2  # thoracic + lumbar lists were added
    l1 = next(p for p in logic.points(out) if p.label == "L1")
    logic.renamePoint(out, l1, "S1", renumber=True)  # creates the sacral list
    assert "sacral" in logic.regionNodes(out)
    assert selection.GetActivePlaceNodeID() == mine.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"
    # The lists still got their display nodes and colours.
    assert all(n.GetDisplayNode() is not None for n in logic.allNodes(out))


def test_output_selector_hides_the_region_lists(mod, scene):
    volume = _small_volume(scene)
    logic = mod.VertebraeLabelingLogic()
    mine = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result(LUMBAR))
    regions = [n.GetID() for n in logic.allNodes(out) if n is not out]
    assert regions and sorted(logic.regionListIDs()) == sorted(regions)
    assert out.GetID() not in logic.regionListIDs() and mine.GetID() not in logic.regionListIDs()


def test_source_volume_survives_importing_a_scene_with_clashing_ids(mod, scene):
    """A saved result imported into a scene that already uses its node IDs still knows its CT."""
    import slicer

    other = slicer.vtkMRMLScene()
    slicer.mrmlScene = other
    volume = _small_volume(other, "imported ct")
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, _result(LUMBAR))
    other.SetSaveToXMLString(1)
    other.Commit()
    xml = other.GetSceneXMLString()

    slicer.mrmlScene = scene
    already_here = _small_volume(scene, "ct already here")  # takes the imported CT's ID
    assert already_here.GetID() == volume.GetID()
    scene.SetLoadFromXMLString(1)
    scene.SetSceneXMLString(xml)
    scene.Import()
    imported = scene.GetFirstNodeByName(out.GetName())
    assert imported is not None and imported is not out
    assert logic.sourceVolume(imported).GetName() == "imported ct"


def test_a_run_whose_ct_was_removed_places_no_points(mod, scene, tmp_path):
    """Closing the scene (or deleting the CT) during a run: when the job ends, nothing is written into
    the scene that is there now."""
    import slicer

    volume = _small_volume(scene)
    logic = mod.VertebraeLabelingLogic()
    result_json = json.dumps(_result(LUMBAR))
    script = _fake_worker(tmp_path, f"""
        import sys, os
        out = sys.argv[sys.argv.index("--output") + 1]
        open(out + ".part", "w").write({result_json!r}); os.replace(out + ".part", out)
    """)
    job = logic.startLabeling(volume, "cpu", command=[sys.executable, str(script)])
    scene.Clear(0)  # File > Close Scene while the worker runs
    assert job.wait(timeout=60) == 0
    with pytest.raises(RuntimeError, match="removed"):
        logic.finishLabeling(job, volume)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0
    job.cleanup()

    # The CT is still there but the output list was deleted: the points go to a new list.
    volume = _small_volume(scene)
    out = logic.createOutputNode(volume)
    job = logic.startLabeling(volume, "cpu", command=[sys.executable, str(script)])
    scene.RemoveNode(out)
    assert job.wait(timeout=60) == 0
    new = logic.finishLabeling(job, volume, out)
    assert new is not out and logic.isInScene(new) and len(logic.points(new)) == len(LUMBAR)
    job.cleanup()
    assert slicer.mrmlScene is scene


def test_cancel_kills_a_stubborn_worker_once(mod, tmp_path, monkeypatch):
    """After the grace period the process tree is killed once, not at every poll while it goes down
    (on Windows each kill is a taskkill run)."""
    import signal
    import time

    job = _stuck_job(mod, tmp_path)
    job.KILL_AFTER_S = 0.0
    job.start()
    kills = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: kills.append(pgid))  # a process slow to go
    try:
        job.cancel()
        for _ in range(20):
            job.poll()
            time.sleep(0.01)
        assert len(kills) == 1
    finally:
        monkeypatch.undo()
        os.killpg(os.getpgid(job.proc.pid), signal.SIGKILL)
        job.wait(timeout=30)


def test_windows_kill_opens_no_console_window(mod, tmp_path, monkeypatch):
    import subprocess as sp

    script = _fake_worker(tmp_path, """
        import time
        time.sleep(600)
    """)
    job = mod.LabelingJob([sys.executable, str(script)], str(tmp_path / "t"), str(tmp_path / "r.json"),
                          str(tmp_path / "cancel"))
    job.start()
    runs = []
    real_run = sp.run
    monkeypatch.setattr(mod, "_IS_WINDOWS", True)
    monkeypatch.setattr(sp, "run", lambda args, **kw: runs.append((args, kw)) or sp.CompletedProcess(args, 0))
    try:
        job.kill()
        job.kill()  # the process has not gone yet (taskkill was a stand-in): no second taskkill
    finally:
        monkeypatch.undo()
        job.proc.kill()
        job.wait(timeout=30)
    assert sp.run is real_run
    assert len(runs) == 1
    args, kw = runs[0]
    assert args[:1] == ["taskkill"] and "/T" in args and str(job.proc.pid) in args
    assert kw.get("creationflags", 0) & 0x08000000  # CREATE_NO_WINDOW


def test_torch_check_does_not_import_torch(mod, tmp_path, monkeypatch):
    """The panel's check finds a broken torch without importing it (no freeze, no escaping OSError)."""
    import importlib

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.syspath_prepend(str(_fake_torch(tmp_path)))
    importlib.invalidate_caches()
    installed, _version = mod.torchStatus()
    assert installed
    assert "torch" not in sys.modules


def test_sample_data_is_registered_with_its_checksum(mod, monkeypatch):
    """With a checksum, an updated sample CT replaces the copy cached by an earlier version."""
    import hashlib
    import types

    calls = []
    fake = types.ModuleType("SampleData")
    fake.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    mod.registerSampleData()
    assert len(calls) == 1
    path = Path(calls[0]["uris"].replace("file://", ""))
    assert path.is_file()
    assert calls[0]["checksums"] == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failure_is_reported_once_and_the_panel_goes_on(mod):
    reports = []

    def start():
        raise ValueError("Select a CT volume first.")

    ok, value = mod.callReportingErrors(start, lambda text, details: reports.append((text, details)),
                                        "Failed to start labeling.")
    assert (ok, value) == (False, None)
    assert len(reports) == 1
    assert reports[0][0] == "Failed to start labeling.\n\nSelect a CT volume first."
    assert "ValueError" in reports[0][1]  # the traceback, behind "Show details"
    assert mod.callReportingErrors(lambda: 42, reports.append, "x") == (True, 42)


class _Slicer56Wrapper:
    """The parameter node wrapper of Slicer 5.6/5.8: connectGui returns None; disconnectGui(tag) needs the tag."""

    def __init__(self):
        self._parameterGUIs = {}
        self._next = 0

    def connectGui(self, gui):
        self._parameterGUIs[self._next] = gui
        self._next += 1

    def disconnectGui(self, tag):
        self._parameterGUIs.pop(tag, None)


def test_entering_the_module_again_does_not_stack_gui_connections(mod):
    wrapper = _Slicer56Wrapper()
    for _ in range(3):  # enter(), exit(), enter(), exit(), ...
        tag = mod.connectGuiReturningTag(wrapper, "ui")
        wrapper.disconnectGui(tag)
    tag = mod.connectGuiReturningTag(wrapper, "ui")
    assert len(wrapper._parameterGUIs) == 1 and tag == 3
