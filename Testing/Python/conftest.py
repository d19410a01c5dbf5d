"""Shared fixtures: paths to the bundled sample CT and its annotation, small synthetic images."""

import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SAMPLE_CT = os.path.join(REPO, "Testing", "Data", "ts_example_ct.nii.gz")
SHARED = os.path.join(os.path.dirname(REPO), "shared")
SHARED_CASE = os.path.join(SHARED, "data", "ts_example_ct")


@pytest.fixture(scope="session")
def sample_ct_path() -> str:
    return SAMPLE_CT


@pytest.fixture(scope="session")
def sample_annotation_lps():
    """Whole vertebrae of the sample CT (TotalSegmentator centres of mass), LPS mm; skip without ../shared."""
    path = os.path.join(SHARED_CASE, "centroids_from_forcesplit.json")
    if not os.path.exists(path):
        pytest.skip("../shared is not available")
    data = json.load(open(path))
    out = {}
    for v in data["vertebrae"]:
        if v["touches_border"] or v["name"] == "sacrum":
            continue
        x, y, z = v["centroid_world_mm"]
        out[v["name"]] = np.array([-x, -y, z])  # RAS (nibabel) → LPS
    return out


@pytest.fixture(scope="session")
def sample_body_centres_lps():
    """Whole vertebrae of the sample CT at their vertebral *body* centres (the convention the network is
    trained on, VerSe's and CSI's), estimated from the TotalSegmentator label map; LPS mm."""
    if not os.path.isdir(SHARED_CASE):
        pytest.skip("../shared is not available")
    from training.datasets import load_dataset

    case = load_dataset(f"labelmap:{SHARED_CASE}?centre=body")[0]
    return case.whole_centroids()


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
