"""The painted (SynthSeg) route: a real TotalSegmentator label map, deformed and painted with random intensities.

The story: one real label map (TotalSegmentator's, of the sample CT: L1-S1 whole, T11-T12 cut by its own field of view) gives a new
case for every seed; the ground truth is read from the deformed map, so it follows the deformation, lies
in the vertebra it names and keeps the spine's order and spacing; ``painted:DIR`` feeds training like
``synthetic`` does.
"""

import itertools
import os

import numpy as np
import pytest
import SimpleITK as sitk

from training.datasets import label_centroids, read_image
from training.datasets.labelmap import TOTALSEGMENTATOR_V2
from training.painted import PaintedCase, paint_labelmap
from training.prepared import PreparedCase
from training.sources import CaseSource, mixed_cases, validation_cases

NAME_TO_ID = {name: label for label, name in TOTALSEGMENTATOR_V2.items()}
LUMBAR = ["L1", "L2", "L3", "L4", "L5", "S1"]
SEEDS = [0, 1, 2]  # seed 1 is a CT-like case, 0 and 2 random ones; all three cropped


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tests share the machine: SimpleITK on one thread, as a data-loading worker would run."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


@pytest.fixture(scope="module")
def source(sample_case_dir):
    """(label map, CT) of TotalSegmentator's sample case."""
    return (read_image(os.path.join(sample_case_dir, "seg_total_v2_fast_forcesplit.nii.gz")),
            read_image(os.path.join(sample_case_dir, "ct.nii.gz")))


@pytest.fixture(scope="module")
def cases(source):
    labels, ct = source
    return {seed: paint_labelmap(labels, seed, ct=ct) for seed in SEEDS}


@pytest.fixture(scope="module")
def uncropped(source):
    """A case with the whole field of view: every lumbar vertebra in it."""
    labels, ct = source
    return paint_labelmap(labels, 5, ct=ct, crop_prob=0.0)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def test_a_seed_always_paints_the_same_case(source, cases):
    labels, ct = source
    again = paint_labelmap(labels, SEEDS[0], ct=ct)
    first = cases[SEEDS[0]]
    assert isinstance(again, PaintedCase)
    assert np.array_equal(_array(again.image), _array(first.image))
    assert np.array_equal(_array(again.labels), _array(first.labels))
    assert list(again.centroids) == list(first.centroids) and again.partial == first.partial
    for name in first.centroids:
        assert np.array_equal(again.centroids[name], first.centroids[name])


def test_different_seeds_paint_different_cases(cases):
    a, b = cases[SEEDS[0]], cases[SEEDS[1]]
    assert a.image.GetSize() != b.image.GetSize() or not np.array_equal(_array(a.image), _array(b.image))
    common = set(a.centroids) & set(b.centroids)
    assert common
    assert max(np.linalg.norm(a.centroids[n] - b.centroids[n]) for n in common) > 1.0
    # Both appearances occur: CT-like and SynthSeg-style random.
    assert {c.meta["appearance"] for c in cases.values()} == {"ct", "random"}


def test_every_centroid_lies_in_the_deformed_vertebra_it_names(cases, uncropped):
    for case in [*cases.values(), uncropped]:
        image, labels = case.image, case.labels
        assert image.GetSize() == labels.GetSize()
        assert np.allclose(image.GetOrigin(), labels.GetOrigin()) and np.allclose(image.GetSpacing(), (2, 2, 2))
        arr = _array(labels)
        for name, p in case.centroids.items():
            index = np.array(labels.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p)))
            assert np.all(index >= -0.5) and np.all(index <= np.array(labels.GetSize()) - 0.5), (name, index)
            voxel = tuple(int(v) for v in np.rint(index)[::-1])
            if arr[voxel] == NAME_TO_ID[name]:
                continue
            kk, jj, ii = np.nonzero(arr == NAME_TO_ID[name])  # a cut sliver: at least inside its box
            low, high = np.array([ii.min(), jj.min(), kk.min()]), np.array([ii.max(), jj.max(), kk.max()])
            assert np.all(index >= low - 0.5) and np.all(index <= high + 0.5), (name, index, low, high)
        assert set(case.partial) <= set(case.centroids)


def test_the_image_shows_bone_where_the_ct_like_case_puts_a_vertebra(cases):
    case = next(c for c in cases.values() if c.meta["appearance"] == "ct")
    arr = _array(case.image)
    for name, p in case.centroids.items():
        if name in case.partial:
            continue
        k, j, i = np.rint(case.image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p)))[::-1]
        # Cancellous bone (150-450 HU), blurred and noisy, against soft tissue below 150 and air.
        assert 100.0 < arr[int(k), int(j), int(i)] < 600.0, (name, arr[int(k), int(j), int(i)])


def test_centroids_move_with_the_transform_not_copied_from_the_source(source):
    labels, ct = source
    before, _ = label_centroids(labels, centre="body")
    # Without the elastic part, the affine alone must carry each painted centroid back onto the source's.
    case = paint_labelmap(labels, 3, ct=ct, crop_prob=0.0, max_elastic_mm=0.0)
    a, c, t = (np.asarray(case.meta[k]) for k in ("affine_matrix", "affine_centre", "translation_mm"))
    moved = [n for n in LUMBAR if n in case.centroids]
    assert len(moved) == 6
    shift = np.median([np.linalg.norm(case.centroids[n] - before[n]) for n in moved])
    back = np.median([np.linalg.norm(a @ (case.centroids[n] - c) + c + t - before[n]) for n in moved])
    assert shift > 3.0, "the drawn transform should move the spine by more than the check's tolerance"
    assert back < 1.5, (back, shift)


def test_the_lumbar_spine_is_whole_in_order_and_plausibly_spaced(uncropped):
    case = uncropped
    assert all(n in case.centroids and n not in case.partial for n in LUMBAR)
    # The source map's own field of view cuts T12 (most of it shows: kept, flagged) and T11 (a sliver: left out).
    assert "T12" in case.partial and "T11" not in case.centroids
    z = [case.centroids[n][2] for n in LUMBAR]
    assert all(upper > lower for upper, lower in zip(z, z[1:]))  # LPS: +z is superior, L1 on top
    gaps = [np.linalg.norm(case.centroids[a] - case.centroids[b]) for a, b in zip(LUMBAR, LUMBAR[1:])]
    assert all(25.0 < g < 45.0 for g in gaps), gaps


def test_the_crop_keeps_at_least_three_vertebrae_and_flags_the_cut_ones(cases, uncropped):
    full_slices = uncropped.image.GetSize()[2]
    assert any(c.image.GetSize()[2] < full_slices for c in cases.values())
    for case in cases.values():
        assert len(case.centroids) >= 3
        arr = _array(case.labels)
        edges = set(np.unique(arr[[0, -1]]).tolist())
        for name in case.centroids:
            if NAME_TO_ID[name] in edges:
                assert name in case.partial, name


def test_a_painted_data_spec_feeds_training(sample_case_dir):
    with pytest.raises(ValueError):
        CaseSource(f"painted:{sample_case_dir}?colour=red", seed=0, stream_id=0, num_streams=1)
    case = next(iter(CaseSource(f"painted:{sample_case_dir}", seed=0, stream_id=0, num_streams=1)))
    assert isinstance(case, PreparedCase) and case.case_id.startswith("painted-ts_example_ct-")
    assert case.volume.dtype == np.float16 and np.isfinite(case.volume).all()
    assert case.present.sum() >= 3
    assert np.all((case.centroids[case.present] >= 0) & (case.centroids[case.present] < case.volume.shape))


def test_painted_and_synthetic_cases_mix_in_turn_and_reproducibly(sample_case_dir):
    """``--data synthetic painted:DIR`` trains on both routes: one case from each, in turn, seeded."""
    specs = ["synthetic", f"painted:{sample_case_dir}"]
    ids = [case.case_id for case in itertools.islice(mixed_cases(specs, seed=3, stream_id=0, num_streams=1), 4)]
    assert [i.split("-")[0] for i in ids] == ["synthetic", "painted", "synthetic", "painted"]
    assert len(set(ids)) == 4
    again = next(mixed_cases(specs, seed=3, stream_id=0, num_streams=1))
    assert again.case_id == ids[0]
    # validation splits its count over the specs, in the order given
    val = validation_cases(specs, 2)
    assert [c.case_id.split("-")[0] for c in val] == ["synthetic", "painted"]
