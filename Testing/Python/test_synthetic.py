"""Tests of the synthetic spine CT generator (training.synthetic)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.synthetic import SyntheticCase, generate_case  # noqa: E402
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX, VERTEBRA_NAMES  # noqa: E402

# a spread of scan types; small spacing keeps the tests fast
SEEDS = [0, 1, 2, 3, 4, 7]


@pytest.fixture(scope="module")
def cases():
    return {s: generate_case(s, spacing=(2.0, 2.0, 2.5)) for s in SEEDS}


def test_determinism():
    a = generate_case(11, spacing=(2.0, 2.0, 3.0))
    b = generate_case(11, spacing=(2.0, 2.0, 3.0))
    assert isinstance(a, SyntheticCase)
    assert np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
    assert a.centroids.keys() == b.centroids.keys()
    for n in a.centroids:
        assert np.array_equal(a.centroids[n], b.centroids[n])
    c = generate_case(12, spacing=(2.0, 2.0, 3.0))
    assert sitk.GetArrayViewFromImage(a.image).shape != sitk.GetArrayViewFromImage(c.image).shape or \
        not np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(c.image))


def _value_at(img: sitk.Image, p) -> float:
    idx = img.TransformPhysicalPointToIndex(tuple(float(v) for v in p))
    return float(img[idx])


def test_image_and_labels_share_grid(cases):
    for case in cases.values():
        assert case.labels is not None
        assert case.image.GetSize() == case.labels.GetSize()
        assert np.allclose(case.image.GetDirection(), case.labels.GetDirection())
        assert np.allclose(case.image.GetOrigin(), case.labels.GetOrigin())
        assert case.image.GetPixelID() in (sitk.sitkInt16, sitk.sitkFloat32)


def test_centroids_lie_in_bone(cases):
    for s, case in cases.items():
        # the label map must hold the vertebra at its centroid (C1: the dens of C2 sits there)
        for name, p in case.centroids.items():
            lab = int(_value_at(case.labels, p))
            if name == "C1":
                assert lab in (NAME_TO_INDEX["C1"] + 1, NAME_TO_INDEX["C2"] + 1, 0)
            else:
                assert lab == NAME_TO_INDEX[name] + 1, (s, name, lab)
        if case.meta["appearance"] == "random":
            continue  # intensities are arbitrary by design
        arr = sitk.GetArrayViewFromImage(case.image)
        labs = sitk.GetArrayViewFromImage(case.labels)
        for name in case.centroids:
            if name == "C1":
                continue
            body = labs == NAME_TO_INDEX[name] + 1
            # the body's median HU (in-plane blur included) is bone-like
            assert np.median(arr[body]) > 150, (s, name, np.median(arr[body]))


def test_reported_vertebrae_are_those_in_fov(cases):
    for s, case in cases.items():
        img = case.image
        size = np.array(img.GetSize())
        present = set(np.unique(sitk.GetArrayViewFromImage(case.labels)).tolist()) - {0}
        for name, p in case.meta["all_centroids"].items():
            cidx = np.array(img.TransformPhysicalPointToContinuousIndex(tuple(p)))
            inside = bool(np.all(cidx >= -0.5) and np.all(cidx <= size - 0.5))
            if name in NAME_TO_INDEX:
                assert (name in case.centroids) == inside, (s, name, cidx, size)
                if inside:
                    assert NAME_TO_INDEX[name] + 1 in present
        assert len(case.centroids) >= 2
        assert all(v.shape == (3,) for v in case.centroids.values())


def test_centroids_ordered_and_spaced(cases):
    for s, case in cases.items():
        names = [n for n in VERTEBRA_NAMES if n in case.centroids]
        idx = [NAME_TO_INDEX[n] for n in names]
        assert idx == list(range(idx[0], idx[0] + len(idx))), (s, names)  # contiguous run
        for a, b in zip(names[:-1], names[1:]):
            pa, pb = case.centroids[a], case.centroids[b]
            if case.meta.get("transitional") and {a, b} in ({"T12", "L1"}, {"L5", "S1"}):
                continue  # the extra vertebra sits between them
            assert pa[2] > pb[2] - 5, (s, a, b)  # cranial above caudal (LPS z is superior)
            assert 10 <= np.linalg.norm(pa - pb) <= 45, (s, a, b, np.linalg.norm(pa - pb))


def test_transitional_and_orientation_variants():
    # find a transitional case and a non-LPS case among a few seeds, cheaply
    found_t, _found_o = None, None
    for s in range(400):
        case = generate_case(s, spacing=(3.0, 3.0, 5.0), transitional_prob=0.5, reorient_prob=1.0,
                             full_spine_prob=1.0, with_labels=True)
        if case.meta["transitional"]:
            found_t = case
            break
    assert found_t is not None
    extra = found_t.meta["transitional"]
    assert extra not in found_t.centroids
    assert extra in found_t.meta["extra_centroids"]
    assert found_t.meta["orientation"] != "LPS"
    # centroids still index the right vertebra after re-gridding
    for name, p in found_t.centroids.items():
        if name != "C1":
            assert int(_value_at(found_t.labels, p)) == NAME_TO_INDEX[name] + 1


def test_the_sacrum_leans_back_at_s1_and_turns_forward_below_s2():
    """A real sacrum is kyphotic: below S2 it turns down and forward again (the old generator kept it
    bending back, like a continued lordosis). S1's slope spreads over the supine range, including the
    near-horizontal S1-S2 of the shared real CT."""
    from training.synthetic.anatomy import build_spine

    slopes, turns = [], []
    for seed in range(60):
        spine = build_spine(np.random.default_rng(seed), 1.0, None, False, 0.0, 0.0, 0.0)
        descent = {n: -spine.by_name(n).frame.up for n in ("S1", "S2", "S5")}  # caudal direction, LPS
        # angle of the caudal direction behind the vertical (+P is posterior): 0 straight down, 90 straight back
        lean = {n: np.degrees(np.arctan2(d[1], -d[2])) for n, d in descent.items()}
        slopes.append(lean["S1"])
        turns.append(lean["S2"] - lean["S5"])
    assert min(turns) > 0, np.round(turns)  # S5 leans back less than S2 in every spine
    assert 30 < np.median(slopes) < 55 and max(slopes) > 55 and min(slopes) < 35, np.round(slopes)


def test_a_fixed_sacrum_shape_is_honoured_and_leaves_the_rest_of_the_spine_alone():
    from training.synthetic.anatomy import build_spine

    flat = build_spine(np.random.default_rng(3), 1.0, None, False, 0.0, 0.0, 0.0, sacrum=dict(slope=30, bend=0))
    steep = build_spine(np.random.default_rng(3), 1.0, None, False, 0.0, 0.0, 0.0, sacrum=dict(slope=60, bend=30))
    for name in ("C1", "T6", "L3"):
        assert np.allclose(flat.by_name(name).frame.origin, steep.by_name(name).frame.origin)
    lean = [np.degrees(np.arctan2(-s.by_name("S2").frame.up[1], s.by_name("S2").frame.up[2])) for s in (flat, steep)]
    assert lean[1] - lean[0] > 30, lean


def test_an_arterial_phase_ct_has_blood_brighter_than_its_vertebral_bodies():
    """A CT angiogram (the second real CT is one) fills the aorta with contrast brighter than the vertebral
    bodies; the spine must still be told from it. Same seed, same anatomy: only the blood changes."""
    kwargs = dict(spacing=(2.0, 2.0, 2.0), contrast_prob=1.0, random_appearance_prob=0.0)
    cta = generate_case(8, arterial_prob=1.0, **kwargs)
    venous = generate_case(8, arterial_prob=0.0, **kwargs)
    assert cta.meta["arterial"] and not venous.meta["arterial"]
    assert cta.centroids.keys() == venous.centroids.keys()
    a = sitk.GetArrayFromImage(cta.image).astype(float)
    b = sitk.GetArrayFromImage(venous.image).astype(float)
    blood = (a - b) > 100
    assert blood.sum() > 1000
    vertebrae = sitk.GetArrayFromImage(cta.labels) > 0
    assert not (blood & vertebrae).any()
    assert np.median(a[blood]) > 300 > np.median(b[blood])
    assert np.median(a[blood]) > np.median(a[vertebrae])


def test_the_bone_look_knobs_change_the_bone_and_nothing_else():
    """Thin shells around darker bone (how real laminae and ribs look) against solid cortex: same anatomy,
    the posterior elements and ribs only get brighter with the solid look."""
    kwargs = dict(spacing=(2.0, 2.0, 2.0), random_appearance_prob=0.0, metal_prob=0.0)
    shell = generate_case(11, arch_dense=0.0, rib_dense=0.0, **kwargs)
    solid = generate_case(11, arch_dense=1.0, rib_dense=1.0, **kwargs)
    assert shell.centroids.keys() == solid.centroids.keys()
    for name in shell.centroids:
        np.testing.assert_array_equal(shell.centroids[name], solid.centroids[name])
    a = sitk.GetArrayFromImage(shell.image).astype(float)
    b = sitk.GetArrayFromImage(solid.image).astype(float)
    changed = np.abs(a - b) > 1
    assert changed.any() and np.all(b[changed] >= a[changed])
    thick = generate_case(11, cortical_mm=(2.0, 2.0), **kwargs)
    assert thick.meta["cortical_mm"] == 2.0 and shell.meta["cortical_mm"] < 1.1


def test_a_synthetic_spec_carries_generator_options_and_refuses_unknown_ones():
    from training.sources import seeded_factory, synthetic_options

    assert synthetic_options("synthetic") == {}
    assert synthetic_options("synthetic?cortical_mm=1.0-2.0&arch_dense=0") == {"cortical_mm": (1.0, 2.0),
                                                                               "arch_dense": 0.0}
    with pytest.raises(ValueError, match="unknown synthetic option 'ribs'"):
        synthetic_options("synthetic?ribs=0")
    with pytest.raises(ValueError, match="range"):
        synthetic_options("synthetic?cortical_mm=1.5")
    assert seeded_factory("synthetic?rib_dense=0.1").keywords == {"rib_dense": 0.1}


def test_deeper_thoracic_bodies_leave_the_rest_of_the_spine_alone():
    from training.synthetic.anatomy import build_spine

    args = (1.0, None, False, 0.0, 0.0, 0.0)
    plain = build_spine(np.random.default_rng(5), *args)
    deep = build_spine(np.random.default_rng(5), *args, thoracic_depth=1.25)
    for a, b in zip(plain.levels, deep.levels):
        assert a.name == b.name and np.allclose(a.frame.origin, b.frame.origin)
        assert b.D == pytest.approx(a.D * (1.25 if a.kind == "thoracic" else 1.0))
        assert (a.H, a.W) == (b.H, b.W)
