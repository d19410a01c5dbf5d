"""A hospital's story: correct the points in Slicer, save the CT as a training case, train and evaluate on it.

The ``markups:DIR`` source reads a CT plus the ``.mrk.json`` point lists a person corrected; the Slicer
panel's "Save as training case" writes such a folder through the core's ``training_cases``.

Most tests run in the main environment. The MRML tests write their point lists with slicer-core's REAL
markups storage node and read the CT with Slicer's own volume reader; they are skipped without it (see
``test_slicer_logic.py`` for the ``.venv-slicer`` set-up):

    .venv-slicer/bin/python -m pytest -q Testing/Python/test_markups_training_cases.py

There the loader runs in a fresh interpreter: the Slicer module is imported as ``VertebraeLabeling`` (the
file), the training package imports the core as ``VertebraeLabeling.VertebraeLabelingLib`` (the folder).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "VertebraeLabeling"
SAMPLE_CT = ROOT / "Testing" / "Data" / "ts_example_ct.nii.gz"



def _slicer_core() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "vtkMRMLScene")


if _slicer_core():  # .venv-slicer: importing the package here would shadow the module file (module docstring)
    load_dataset = training_cases = None
else:
    from training.datasets import load_dataset
    from VertebraeLabeling.VertebraeLabelingLib import training_cases

needs_main_env = pytest.mark.skipif(load_dataset is None, reason="runs in the main environment (see the module docstring)")

#: Voxel indices (x, y, z) that the tests place vertebrae on, cranio-caudal.
INDICES = {"T11": (18, 20, 40), "T12": (19, 21, 30), "L1": (20, 22, 20), "L2": (21, 22, 10)}


def oblique_ct(path: Path) -> sitk.Image:
    """A small CT whose voxel axes are rotated about an oblique axis and one of them flipped (a left-handed grid),
    with a bright 3-voxel cube at each index of :data:`INDICES`, each of its own value (:func:`blob_value`);
    written to ``path``."""
    arr = np.full((52, 40, 36), -1000, dtype=np.int16)  # (z, y, x)
    arr[:, 8:32, 6:30] = 40
    for name, (x, y, z) in INDICES.items():
        arr[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] = blob_value(name)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.9, 1.5))
    image.SetOrigin((31.5, -120.25, 640.0))
    axis, angle = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0), np.deg2rad(27.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    direction = rotation @ np.diag([1.0, -1.0, 1.0])
    image.SetDirection([float(v) for v in direction.ravel()])
    sitk.WriteImage(image, str(path))
    return image


def blob_value(name: str) -> int:
    """The intensity of the cube :func:`oblique_ct` puts on vertebra ``name``: found again by value."""
    return 700 + 20 * list(INDICES).index(name)


def blob_centre_lps(image: sitk.Image, name: str) -> np.ndarray:
    """Where SimpleITK puts the centre of vertebra ``name``'s cube (from the voxels, not from :data:`INDICES`)."""
    k, j, i = np.argwhere(sitk.GetArrayViewFromImage(image) == blob_value(name)).mean(axis=0)
    return lps_of(image, (i, j, k))


def lps_of(image: sitk.Image, index) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))


def markups_file(path: Path, points, coordinate_system="LPS", schema_version="1.0.3", **markup):
    """A ``.mrk.json`` as the schema describes it; ``points`` are dicts merged into each control point."""
    doc = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                      f"Resources/Schema/markups-schema-v{schema_version}.json#",
           "markups": [dict({"type": "Fiducial", "coordinateSystem": coordinate_system, "coordinateUnits": "mm",
                             "controlPoints": [dict({"id": str(i + 1), "positionStatus": "defined"}, **p)
                                               for i, p in enumerate(points)]}, **markup)]}
    if coordinate_system is None:
        del doc["markups"][0]["coordinateSystem"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Point labels and the reader, in the main environment
# ---------------------------------------------------------------------------------------------


@needs_main_env
@pytest.mark.parametrize("label, name", [
    ("L5", "L5"), ("l5", "L5"), ("T 12", "T12"), ("t12", "T12"), ("L5 (corrected)", "L5"), ("L5_center", "L5"),
    ("S1: checked", "S1"), ("C1", "C1"),
    ("", None), ("?", None), ("L5?", None), ("F-1", None), ("Vertebrae-3", None), ("L6", None), ("T13", None),
    ("L5-S1", None), ("T12 or L1", None), ("coccyx", None), ("L51", None),
])
def test_a_point_label_names_a_vertebra_only_when_it_is_unambiguous(label, name):
    got, why = training_cases.vertebra_name_from_label(label)
    assert got == name
    assert bool(why) == (name is None)  # every refusal says why


@needs_main_env
def test_lps_ras_and_unstated_frames_give_the_same_centroids_on_an_oblique_ct(tmp_path):
    image = oblique_ct(tmp_path / "ct.nii.gz")
    lps = {n: lps_of(image, i) for n, i in INDICES.items()}
    for system in ("LPS", "RAS", None):  # Slicer reads a file without coordinateSystem as LPS
        case = tmp_path / f"case_{system}"
        case.mkdir()
        os.link(tmp_path / "ct.nii.gz", case / "ct.nii.gz")
        flip = np.array([-1.0, -1.0, 1.0]) if system == "RAS" else np.ones(3)
        markups_file(case / "points.mrk.json", [{"label": n, "position": list(p * flip)} for n, p in lps.items()],
                     coordinate_system=system)
        (loaded,) = load_dataset(f"markups:{case}")
        assert loaded.case_id == case.name and loaded.source == "markups"
        assert list(loaded.centroids) == ["T11", "T12", "L1", "L2"]
        reread = sitk.ReadImage(loaded.image_path)
        for name, index in INDICES.items():
            np.testing.assert_allclose(reread.TransformPhysicalPointToContinuousIndex(loaded.centroids[name]),
                                       index, atol=1e-6)


@needs_main_env
def test_unnamed_deleted_and_uncertain_points_are_left_out_with_a_note(tmp_path):
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / "ct.nii.gz"))
    markups_file(tmp_path / "v.mrk.json", [
        {"label": "L1", "position": [1, 2, 3]},
        {"label": "", "position": [1, 2, 4]},
        {"label": "pts-3", "position": [1, 2, 5]},
        {"label": "L2?", "position": [1, 2, 6]},
        {"label": "L3", "position": "", "positionStatus": "undefined"},
        {"label": "L4", "position": [1, 2, 7], "positionStatus": "preview"},
        {"label": "L5 (corrected)", "position": [1, 2, 8]},
        {"label": "L6", "position": [1, 2, 9]},
    ], name="Vertebrae")
    (case,) = load_dataset(f"markups:{tmp_path}")
    assert list(case.centroids) == ["L1", "L5"]
    notes = "\n".join(case.notes)
    for expected in ("point 2 (no label) ignored: unnamed", "'pts-3') ignored: not a vertebra name",
                     "'L2?') ignored: marked as uncertain", "'L3') ignored: position deleted",
                     "'L4') ignored: position preview", "'L6') ignored: not one of the 26"):
        assert expected in notes, notes


@needs_main_env
def test_a_set_split_over_region_lists_is_merged_and_contradictions_are_left_out(tmp_path):
    """A Slicer scene saved by hand: the CT as NRRD and one list per region, next to a merged export."""
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / "CT.nrrd"))
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(tmp_path / "CT segmentation.seg.nrrd"))
    markups_file(tmp_path / "CT vertebrae.mrk.json",
                 [{"label": "T12", "position": [0, 0, 30]}, {"label": "L1", "position": [0, 0, 20]}])
    markups_file(tmp_path / "CT vertebrae lumbar.mrk.json",
                 [{"label": "L1", "position": [0, 0, 20.05]}, {"label": "L2", "position": [0, 0, 10]},
                  {"label": "L3", "position": [0, 0, 0]}])
    markups_file(tmp_path / "CT vertebrae second look.mrk.json", [{"label": "L3", "position": [0, 0, -9]}])
    (case,) = load_dataset(f"markups:{tmp_path}")
    assert case.image_path.endswith("CT.nrrd")  # not the segmentation
    assert list(case.centroids) == ["T12", "L1", "L2"]
    assert any(n.startswith("L3 ignored: 2 points name it, up to 9.0 mm apart") for n in case.notes), case.notes


@needs_main_env
def test_pairs_by_name_nested_folders_and_unfinished_saves(tmp_path):
    for stem in ("a", "a_b"):
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / f"{stem}.nii.gz"))
    markups_file(tmp_path / "a.mrk.json", [{"label": "L1", "position": [0, 0, 1]}])
    markups_file(tmp_path / "a_b corrected.mrk.json", [{"label": "L2", "position": [0, 0, 2]}])
    markups_file(tmp_path / "orphan.mrk.json", [{"label": "L3", "position": [0, 0, 3]}])
    nested = tmp_path / "hospital" / "case7"
    nested.mkdir(parents=True)
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(nested / "ct.nii.gz"))
    markups_file(nested / "vertebrae.mrk.json", [{"label": "S1", "position": [0, 0, 4]}])
    staging = tmp_path / ".tmp-case8-x"  # a save that never finished
    staging.mkdir()
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(staging / "ct.nii.gz"))
    markups_file(staging / "vertebrae.mrk.json", [{"label": "S2", "position": [0, 0, 5]}])

    cases = {c.case_id: c for c in load_dataset(f"markups:{tmp_path}")}
    assert {n: list(c.centroids) for n, c in cases.items()} == {"a": ["L1"], "a_b": ["L2"], "case7": ["S1"]}
    (single,) = load_dataset(f"markups:{tmp_path / 'a_b corrected.mrk.json'}")
    assert single.case_id == "a_b" and list(single.centroids) == ["L2"]


@needs_main_env
@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON file"),
    (json.dumps({"markups": []}), "not a Slicer markups file"),
    (json.dumps([{"label": 20, "X": 1, "Y": 2, "Z": 3}]), "not a Slicer markups file"),  # a VerSe file renamed
])
def test_a_file_that_is_not_a_slicer_point_list_is_named_in_the_error(tmp_path, content, message):
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "bad.mrk.json").write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset(f"markups:{tmp_path}")
    assert "bad.mrk.json" in str(err.value)


@needs_main_env
def test_files_slicer_would_refuse_are_refused_and_empty_cases_say_why(tmp_path):
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / "ct.nii.gz"))
    markups_file(tmp_path / "v.mrk.json", [{"label": "L1", "position": [0, 0, 0]}], coordinate_system="IJK")
    with pytest.raises(ValueError, match="coordinateSystem 'IJK' is neither LPS nor RAS"):
        load_dataset(f"markups:{tmp_path}")
    markups_file(tmp_path / "v.mrk.json", [{"label": "L1", "position": [0, 0, 0]}], coordinateUnits="um")
    with pytest.raises(ValueError, match="only millimetres"):
        load_dataset(f"markups:{tmp_path}")
    markups_file(tmp_path / "v.mrk.json", [{"label": "?", "position": [0, 0, 0]}])
    with pytest.raises(ValueError, match="no point names a vertebra.*'\\?'\\) ignored: marked as uncertain"):
        load_dataset(f"markups:{tmp_path}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no CT with a .mrk.json point list found"):
        load_dataset(f"markups:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset(f"markups:{tmp_path}?frame=ras")


# ---------------------------------------------------------------------------------------------
# Saving a training case (the core the panel calls), in the main environment
# ---------------------------------------------------------------------------------------------


@needs_main_env
def test_a_saved_case_reads_back_with_the_same_centroids(tmp_path):
    image = oblique_ct(tmp_path / "scan.nii.gz")
    points = [(n, lps_of(image, i), "named by hand") for n, i in INDICES.items()]
    points += [("?", (0.0, 0.0, 0.0)), ("L3 (corrected)", lps_of(image, (22, 22, 2)))]
    root = tmp_path / "cases"
    saved = training_cases.save_training_case(str(root), training_cases.case_name_for("CT: abdomen 2/3"),
                                              image, points)
    assert Path(saved.folder) == root / "CT_abdomen_2_3"
    assert sorted(os.listdir(saved.folder)) == ["ct.nii.gz", "vertebrae.mrk.json"]
    assert saved.names == ["T11", "T12", "L1", "L2", "L3"] and saved.skipped == ["'?': marked as uncertain ('?')"]
    jsonschema = pytest.importorskip("jsonschema")
    schema = ROOT / "Testing" / "Data" / "schemas" / "markups-schema-v1.0.3.json"  # Slicer's, with its origin
    jsonschema.validate(json.loads(Path(saved.points_path).read_text(encoding="utf-8")),
                        json.loads(schema.read_text(encoding="utf-8")))
    (case,) = load_dataset(f"markups:{root}")
    assert case.case_id == "CT_abdomen_2_3"
    for name, pos, *_ in points:
        got = training_cases.vertebra_name_from_label(name)[0]
        if got:
            assert np.max(np.abs(case.centroids[got] - np.asarray(pos))) < 0.01
    reread = sitk.ReadImage(case.image_path)
    assert reread.GetSize() == image.GetSize()
    np.testing.assert_allclose(reread.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(reread.GetOrigin(), image.GetOrigin(), atol=1e-4)


@needs_main_env
def test_an_existing_case_is_never_overwritten_without_asking(tmp_path):
    image = sitk.Image(8, 8, 8, sitk.sitkInt16)
    first = training_cases.save_training_case(str(tmp_path), "case", image, [("L1", (1.0, 1.0, 1.0))])
    before = {n: Path(first.folder, n).read_bytes() for n in os.listdir(first.folder)}
    with pytest.raises(training_cases.CaseExistsError, match="'case' already exists"):
        training_cases.save_training_case(str(tmp_path), "case", image, [("L2", (1.0, 1.0, 2.0))])
    # Bad input leaves the folder as it was, too.
    with pytest.raises(ValueError, match="More than one point names the same vertebra: L2"):
        training_cases.save_training_case(str(tmp_path), "case", image, [("L2", (0, 0, 0)), ("l2", (0, 0, 1))],
                                          overwrite=True)
    with pytest.raises(ValueError, match="No point names a vertebra"):
        training_cases.save_training_case(str(tmp_path), "case", image, [("?", (0, 0, 0))], overwrite=True)

    def broken_writer(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        training_cases.save_training_case(str(tmp_path), "case", broken_writer, [("L2", (0, 0, 0))], overwrite=True)
    assert {n: Path(first.folder, n).read_bytes() for n in os.listdir(first.folder)} == before
    assert sorted(os.listdir(tmp_path)) == ["case"]  # no half-written case, no hidden leftovers

    assert training_cases.free_case_name(str(tmp_path), "case") == "case_2"
    replaced = training_cases.save_training_case(str(tmp_path), "case", image, [("L2", (1.0, 1.0, 2.0))],
                                                 overwrite=True)
    assert list(load_dataset(f"markups:{replaced.folder}")[0].centroids) == ["L2"]
    assert sorted(os.listdir(tmp_path)) == ["case"]
    with pytest.raises(ValueError, match="not a usable case name"):
        training_cases.save_training_case(str(tmp_path), "../elsewhere", image, [("L1", (0, 0, 0))])


@needs_main_env
def test_points_outside_the_ct_are_saved_with_a_warning(tmp_path):
    image = sitk.Image(8, 8, 8, sitk.sitkInt16)
    saved = training_cases.save_training_case(str(tmp_path), "c", image, [("L1", (3.0, 3.0, 3.0)),
                                                                           ("L2", (3.0, 3.0, -40.0))])
    assert saved.warnings == ["L2 lies outside the CT"]


# ---------------------------------------------------------------------------------------------
# Training and evaluation read the folder (main environment, torch)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_case_folder(tmp_path_factory):
    """The bundled abdominal CT saved as a training case, with four points on its lumbar spine."""
    if load_dataset is None:
        pytest.skip("runs in the main environment")
    root = tmp_path_factory.mktemp("hospital_cases")
    image = sitk.ReadImage(str(SAMPLE_CT))
    size = np.array(image.GetSize())
    # Points along the image's cranio-caudal axis through its centre: enough for the data path (which
    # vertebra sits where does not matter to a smoke run); the positions are checked back by index.
    points = [(name, lps_of(image, (size[0] / 2, size[1] / 2, size[2] * f)))
              for name, f in (("L1", 0.8), ("L2", 0.6), ("L3", 0.4), ("L4", 0.2))]
    training_cases.save_training_case(str(root), "abdomen", str(SAMPLE_CT), points)
    return root


def test_training_runs_on_a_markups_folder(tmp_path, sample_case_folder):
    pytest.importorskip("torch")
    from training import train as train_cli

    run = tmp_path / "run"
    assert train_cli.main(["--data", f"markups:{sample_case_folder}", "--widths", "4,8,8,16", "--crop", "32,24,24",
                           "--workers", "0", "--pool-size", "1", "--refresh-every", "1000", "--val-cases", "1",
                           "--threads", "1", "--run-dir", str(run), "--steps", "2", "--val-every", "2",
                           "--save-every", "2"]) == 0
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) >= 2 and (run / "last.pt").is_file()


def test_evaluation_reads_a_markups_folder(tmp_path, sample_case_folder):
    """The points are only placed along the image's axis, so the errors mean nothing: what is checked is that
    every saved point is scored as a truth of its case."""
    pytest.importorskip("torch")
    import csv

    from training import evaluate as evaluate_cli

    out = tmp_path / "evaluation"
    assert evaluate_cli.main(["--data", f"markups:{sample_case_folder}", "--device", "cpu", "--no-progress",
                              "--out", str(out)]) == 0
    (row,) = list(csv.DictReader((out / "cases.csv").open(encoding="utf-8")))
    assert row["case_id"] == "abdomen" and row["n_truth"] == "4"
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["data"] == [f"markups:{sample_case_folder}"]


# ---------------------------------------------------------------------------------------------
# Slicer's own files: slicer-core's storage nodes (skipped without slicer-core)
# ---------------------------------------------------------------------------------------------


# The fixtures `mod` (the Slicer module) and `scene` (a fresh MRML scene) are conftest.py's.


def _slicer_volume(scene, path: Path):
    """The CT read by Slicer's own volume reader (its geometry is Slicer's, not ours)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), "Slicer could not read the CT"
    return node


def _ras_of_index(volume, index) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return np.array(m.MultiplyPoint([float(v) for v in index] + [1.0])[:3])


def _slicer_blob_ras(volume, name: str) -> np.ndarray:
    """Where Slicer puts the centre of vertebra ``name``'s cube, found by its value in Slicer's own voxel array.

    Slicer's voxel order may differ from the file's (it reads a left-handed grid with one axis reversed), so
    the cube is looked up, not its file index.
    """
    import slicer.util

    k, j, i = np.argwhere(slicer.util.arrayFromVolume(volume) == blob_value(name)).mean(axis=0)
    return _ras_of_index(volume, (i, j, k))


def _load_elsewhere(spec: str) -> list:
    """``load_dataset(spec)`` in a fresh interpreter of this environment (module docstring), as plain JSON."""
    code = ("import json, sys; from training.datasets import load_dataset; print(json.dumps([{'id': c.case_id, "
            "'image': c.image_path, 'centroids': {n: [float(v) for v in p] for n, p in c.centroids.items()}, "
            "'notes': c.notes} for c in load_dataset(sys.argv[1])]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, spec], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_a_point_list_written_by_slicer_reads_back_onto_the_same_voxels(mod, scene, tmp_path, system):
    import slicer

    case = tmp_path / "case"
    case.mkdir()
    oblique_ct(case / "ct.nii.gz")
    volume = _slicer_volume(scene, case / "ct.nii.gz")
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Vertebrae")
    labels = {"T11": "T11", "T12": "t 12", "L1": "L1 (corrected)", "L2": "L2"}
    for name in INDICES:
        points.AddControlPoint(*_slicer_blob_ras(volume, name), labels[name])
    unnamed = points.AddControlPoint(5.0, 5.0, 5.0, "")  # Slicer names it "Vertebrae-5"
    cleared = points.AddControlPoint(6.0, 6.0, 6.0, "x")
    points.SetNthControlPointLabel(cleared, "")
    deleted = points.AddControlPoint(7.0, 7.0, 7.0, "L3")
    points.UnsetNthControlPointPosition(deleted)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetCoordinateSystem(getattr(slicer.vtkMRMLStorageNode, f"CoordinateSystem{system}"))
    storage.SetFileName(str(case / "vertebrae.mrk.json"))
    assert storage.WriteData(points)
    written = json.loads((case / "vertebrae.mrk.json").read_text())
    assert written["markups"][0]["coordinateSystem"] == system

    (loaded,) = _load_elsewhere(f"markups:{tmp_path}")
    assert list(loaded["centroids"]) == ["T11", "T12", "L1", "L2"]
    image = sitk.ReadImage(loaded["image"])  # SimpleITK's reading of the file: independent of Slicer's
    for name, index in INDICES.items():
        np.testing.assert_allclose(image.TransformPhysicalPointToContinuousIndex(loaded["centroids"][name]),
                                   index, atol=1e-3)
    notes = "\n".join(loaded["notes"])
    assert f"point {unnamed + 1} ('Vertebrae-{unnamed + 1}') ignored: not a vertebra name" in notes
    assert f"point {cleared + 1} (no label) ignored: unnamed" in notes
    assert f"point {deleted + 1} ('L3') ignored: position deleted" in notes


def test_save_as_training_case_round_trip(mod, scene, tmp_path):
    """Label, correct (drag, rename, unset, move a list out of the CT's transform), save, read back."""
    import vtk

    oblique_ct(tmp_path / "scan.nii.gz")
    volume = _slicer_volume(scene, tmp_path / "scan.nii.gz")
    volume.SetName("Patient 12: CT abdomen")
    # The CT sits under a rigid transform (registered to something): the saved case must still match.
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    rigid = vtk.vtkTransform()
    rigid.Translate(12.0, -7.0, 30.0)
    rigid.RotateWXYZ(20.0, 0.3, 1.0, 0.2)
    matrix.DeepCopy(rigid.GetMatrix())
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    to_parent = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    extra = {"S1": (22, 23, 3), "T10": (17, 20, 48)}
    result = {"format": "vertebrae-labeling-slicer-result", "version": 1, "coordinateSystem": "LPS",
              "vertebrae": [{"name": n, "position": list(ras * [-1, -1, 1]), "confidence": 0.8}
                            for n, ras in {**{n: _slicer_blob_ras(volume, n) for n in INDICES},
                                           **{n: _ras_of_index(volume, i) for n, i in extra.items()}}.items()],
              "messages": []}
    logic.setResult(out, volume, result)
    pts = {p.label: p for p in logic.points(out)}
    # The user's corrections: drag T11 by 2 mm, call S1 "?" (not sure), unset T10's position.
    p = pts["T11"]
    dragged = np.array(p.positionRas) + [0.0, 0.0, 2.0]
    p.node.SetNthControlPointPosition(p.index, *dragged)
    pts["S1"].node.SetNthControlPointLabel(pts["S1"].index, "?")
    pts["T10"].node.UnsetNthControlPointPosition(pts["T10"].index)
    # The lumbar list is taken out from under the transform: its points now sit where they were in world.
    lumbar = pts["L1"].node
    assert pts["L2"].node is lumbar
    world_before = {}
    for name in ("L1", "L2"):
        w = [0.0, 0.0, 0.0]
        lumbar.GetNthControlPointPositionWorld(pts[name].index, w)
        world_before[name] = np.array(w)
    lumbar.SetAndObserveTransformNodeID(None)
    for name in ("L1", "L2"):
        lumbar.SetNthControlPointPositionWorld(pts[name].index, *world_before[name])

    folder = tmp_path / "training cases"
    saved = logic.saveAsTrainingCase(out, volume, str(folder))
    assert Path(saved.folder) == folder / "Patient_12_CT_abdomen"
    assert saved.names == ["T11", "T12", "L1", "L2"]
    assert saved.skipped == ["'T10': position not set", "'?': marked as uncertain ('?')"]

    # Expected, in the CT file's frame: the voxel's RAS in the volume's own frame (T11 dragged by 2 mm).
    expected_ras = {n: _slicer_blob_ras(volume, n) for n in INDICES}
    expected_ras["T11"] = dragged
    inverse = np.linalg.inv(to_parent)
    for name in ("L1", "L2"):  # world -> the volume's frame, by the matrix this test set
        expected_ras[name] = (inverse @ np.append(world_before[name], 1.0))[:3]
    (loaded,) = _load_elsewhere(f"markups:{folder}")
    assert loaded["id"] == "Patient_12_CT_abdomen"
    assert list(loaded["centroids"]) == ["T11", "T12", "L1", "L2"]
    for name, ras in expected_ras.items():
        assert np.max(np.abs(np.array(loaded["centroids"][name]) - ras * [-1, -1, 1])) < 0.01, name
    # The CT Slicer saved shows the same anatomy at the same place as the file it read (SimpleITK's reading).
    original, copy = sitk.ReadImage(str(tmp_path / "scan.nii.gz")), sitk.ReadImage(saved.ct_path)
    for name in INDICES:
        assert np.max(np.abs(blob_centre_lps(copy, name) - blob_centre_lps(original, name))) < 0.01, name
    # And the untouched points land on their cubes there.
    for name in ("T12", "L1", "L2"):
        assert np.max(np.abs(np.array(loaded["centroids"][name]) - blob_centre_lps(copy, name))) < 0.01, name

    # Slicer opens the saved points again (to review a case) where they were saved.
    import slicer

    reread = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(saved.points_path)
    assert storage.ReadData(reread) and reread.GetNumberOfControlPoints() == 4
    for i in range(reread.GetNumberOfControlPoints()):
        pos = [0.0, 0.0, 0.0]
        reread.GetNthControlPointPosition(i, pos)
        assert np.max(np.abs(np.array(pos) - expected_ras[reread.GetNthControlPointLabel(i)])) < 0.01

    # Saving again under the same name asks first: the Logic refuses, the files stay as they were.
    before = {n: (Path(saved.folder) / n).read_bytes() for n in os.listdir(saved.folder)}
    from VertebraeLabelingLib import training_cases as core

    with pytest.raises(core.CaseExistsError):
        logic.saveAsTrainingCase(out, volume, str(folder))
    assert {n: (Path(saved.folder) / n).read_bytes() for n in os.listdir(saved.folder)} == before
    again = logic.saveAsTrainingCase(out, volume, str(folder), core.free_case_name(str(folder), "Patient_12_CT_abdomen"))
    assert Path(again.folder).name == "Patient_12_CT_abdomen_2"
    with pytest.raises(ValueError, match="Select the CT"):
        logic.saveAsTrainingCase(out, None, str(folder))


class _FakeQt:
    """The few Qt classes the panel's "Save as training case" uses, answering as a user would (slicer-core has no Qt)."""

    def __init__(self, folder: str, answers: list):
        self.asked: list = []
        fake = self

        class QSettings:
            stored: dict = {}

            def value(self, key, default=None):
                return self.stored.get(key, default)

            def setValue(self, key, value):  # noqa: N802 - Qt's name
                self.stored[key] = value

        class QFileDialog:
            @staticmethod
            def getExistingDirectory(parent, caption, start):  # noqa: N802
                return folder

        class QMessageBox:
            Question = DestructiveRole = AcceptRole = Cancel = object()

            def __init__(self, parent=None):
                self.buttons, self.clicked = [], None

            def setIcon(self, icon):  # noqa: N802
                pass

            def setWindowTitle(self, title):  # noqa: N802
                pass

            def setText(self, text):  # noqa: N802
                fake.asked.append(text)

            def addButton(self, text, role=None):  # noqa: N802
                button = text if isinstance(text, str) else "Cancel"
                self.buttons.append(button)
                return button

            def exec_(self):
                answer = answers.pop(0)
                self.clicked = next(b for b in self.buttons if b.startswith(answer))

            def clickedButton(self):  # noqa: N802
                return self.clicked

            def deleteLater(self):  # noqa: N802
                pass

        self.QSettings, self.QFileDialog, self.QMessageBox = QSettings, QFileDialog, QMessageBox


def test_the_panel_asks_before_replacing_a_saved_case(mod, scene, tmp_path, monkeypatch):
    import types

    import slicer

    oblique_ct(tmp_path / "scan.nii.gz")
    volume = _slicer_volume(scene, tmp_path / "scan.nii.gz")
    logic = mod.VertebraeLabelingLogic()
    out = logic.createOutputNode(volume)
    logic.setResult(out, volume, {"vertebrae": [{"name": n, "position": list(_slicer_blob_ras(volume, n) * [-1, -1, 1]),
                                                 "confidence": 0.9} for n in INDICES]})
    folder = tmp_path / "cases"
    answers: list = []
    fake_qt = _FakeQt(str(folder), answers)
    shown, errors, log = [], [], []
    monkeypatch.setattr(mod, "qt", fake_qt, raising=False)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None, raising=False)
    monkeypatch.setattr(slicer.util, "infoDisplay", lambda text, **kw: shown.append(text), raising=False)
    widget = mod.VertebraeLabelingWidget.__new__(mod.VertebraeLabelingWidget)
    widget.logic, widget.parent = logic, None
    widget._parameterNode = types.SimpleNamespace(outputMarkups=out, inputVolume=volume)
    widget.ui = types.SimpleNamespace(logTextEdit=types.SimpleNamespace(appendPlainText=log.append))
    widget._run = lambda message, func, **kw: mod.callReportingErrors(func, lambda t, d: errors.append(t), message)

    widget.onSaveTrainingCase()
    case = folder / "scan"
    assert sorted(os.listdir(case)) == ["ct.nii.gz", "vertebrae.mrk.json"] and not fake_qt.asked and not errors
    assert shown[-1].startswith(f"Saved the CT and 4 vertebrae (T11 to L2) to {case}.")
    assert f"--data markups:{folder}" in shown[-1]
    before = {n: (case / n).read_bytes() for n in os.listdir(case)}

    # The user moves a point and saves again: asked first; Cancel changes nothing.
    p = logic.points(out)[0]
    p.node.SetNthControlPointPosition(p.index, *(np.array(p.positionRas) + [0, 0, 5.0]))
    answers.append("Cancel")
    widget.onSaveTrainingCase()
    assert fake_qt.asked[-1] == f"A training case named 'scan' already exists in {folder}. Replace it?"
    assert {n: (case / n).read_bytes() for n in os.listdir(case)} == before and len(shown) == 1
    # "Save as 'scan_2'" keeps both.
    answers.append("Save as 'scan_2'")
    widget.onSaveTrainingCase()
    assert sorted(os.listdir(folder)) == ["scan", "scan_2"]
    assert {n: (case / n).read_bytes() for n in os.listdir(case)} == before
    # "Replace" replaces.
    answers.append("Replace")
    widget.onSaveTrainingCase()
    assert sorted(os.listdir(folder)) == ["scan", "scan_2"]
    assert (case / "vertebrae.mrk.json").read_bytes() != before["vertebrae.mrk.json"]
    assert not errors and not answers
