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


# ---------------------------------------------------------------- transitional anatomy
# Full spine, plain CT look, no scoliosis, LPS grid, 3 mm voxels: every level in view, bone brighter than
# 200 HU, world x = the patient's right-left axis; a case takes about 0.3 s.
_ANATOMY = dict(spacing=(3.0, 3.0, 3.0), full_spine_prob=1.0, random_appearance_prob=0.0, contrast_prob=0.0,
                metal_prob=0.0, reorient_prob=0.0, scoliosis_prob=0.0)


def _in_frame_of(case, name, mask):
    """(height, left, back) mm of the voxels of ``mask`` in vertebra ``name``'s own frame: its centre, ``up``
    from the centre below it to the one above, ``left`` the LPS x axis made square to ``up``."""
    centres = case.meta["all_centroids"]
    names = list(centres)
    i = names.index(name)
    centre = np.asarray(centres[name])
    up = np.asarray(centres[names[i - 1]]) - np.asarray(centres[names[i + 1]])
    up /= np.linalg.norm(up)
    left = np.array([1.0, 0.0, 0.0]) - up[0] * up
    left /= np.linalg.norm(left)
    back = np.cross(up, left)  # LPS: z cross x = y, posterior
    # the grid is LPS-aligned (reorient_prob=0): voxel (z, y, x) sits at origin + spacing * (x, y, z)
    p = np.argwhere(mask)[:, ::-1] * np.array(case.image.GetSpacing()) + np.array(case.image.GetOrigin()) - centre
    return p @ up, p @ left, p @ back


def _bone_beside(case, name, beyond_mm, side=None, half_mm=8.0, ap_band=(-50.0, 50.0), mask=None):
    """Voxels brighter than 200 HU (or of ``mask``) at vertebra ``name``'s level (within ``half_mm`` of its
    centre's height), more than ``beyond_mm`` from its centre to the side (+1 patient left, -1 right, None
    either) and within ``ap_band`` mm of it front to back (negative is in front)."""
    if mask is None:
        mask = sitk.GetArrayFromImage(case.image) > 200
    height, left, back = _in_frame_of(case, name, mask)
    lateral = np.abs(left) > beyond_mm if side is None else side * left > beyond_mm
    return int((lateral & (np.abs(height) <= half_mm) & (back > ap_band[0]) & (back < ap_band[1])).sum())


def _labels_touching(case, upper, lower, beyond_mm, side):
    """Voxels of ``upper``'s label next to ``lower``'s label more than ``beyond_mm`` to one side of ``upper``."""
    lab = sitk.GetArrayViewFromImage(case.labels)
    a, b = lab == NAME_TO_INDEX[upper] + 1, lab == NAME_TO_INDEX[lower] + 1
    near_b = np.zeros_like(b)
    for axis in range(3):
        for shift in (-1, 1):
            near_b |= np.roll(b, shift, axis=axis)
    x = case.labels.GetOrigin()[0] + case.labels.GetSpacing()[0] * np.argwhere(a & near_b)[:, 2]
    return int((side * (x - case.meta["all_centroids"][upper][0]) > beyond_mm).sum())


def test_variant_names_and_their_spellings():
    from training.synthetic.variants import VARIANTS, parse_variant

    assert parse_variant("13_ribs") == parse_variant("13ribs") == parse_variant("lumbar-rib") == ("13_ribs", None)
    assert parse_variant("cervical_rib_left") == ("cervical_rib", "left")
    assert parse_variant("4_lumbar") == ("sacralised_l5", None)
    assert parse_variant("L6") == ("6_lumbar", None) and parse_variant("T13") == ("13_thoracic", None)
    assert all(parse_variant(v)[0] == v for v in VARIANTS)
    with pytest.raises(ValueError, match="unknown synthetic variant"):
        parse_variant("14_ribs")
    with pytest.raises(ValueError, match="takes no side"):
        parse_variant("13_ribs_left")


def test_a_plain_spine_has_twelve_rib_pairs_from_t1_to_t12_and_five_lumbar_vertebrae():
    case = generate_case(5, variant="none", **_ANATOMY)
    meta = case.meta
    assert meta["variant"] is None and meta["rib_pairs"] == 12 and meta["lumbar_count"] == 5
    assert meta["rib_bearing"] == [f"T{i}" for i in range(1, 13)]
    assert meta["cervical_rib"] is None and meta["sacralised_l5"] is None and not meta["lumbar_rib"]
    assert meta["extra_lumbar_centroid_lps"] is None and meta["extra_thoracic_centroid_lps"] is None
    assert _bone_beside(case, "T12", 60) > 20  # the 12th ribs
    # nothing beside L1 or C7 (a stray bright voxel of cartilage or noise at most)
    assert _bone_beside(case, "L1", 55) <= 2 and _bone_beside(case, "C7", 32, ap_band=(-40, 10)) <= 2


def test_thirteen_rib_pairs_put_a_short_rib_pair_on_l1_and_change_nothing_else():
    """A lumbar rib: L1 carries a short rib pair, so there are 13 rib pairs on 12 thoracic vertebrae. The
    vertebrae keep their names (counting from C1) and the rest of the case is the very same CT."""
    plain = generate_case(5, variant="none", **_ANATOMY)
    ribbed = generate_case(5, variant="13_ribs", **_ANATOMY)
    meta = ribbed.meta
    assert meta["variant"] == "13_ribs" and meta["rib_pairs"] == 13 and meta["lumbar_rib"]
    assert meta["rib_bearing"][0] == "T1" and meta["rib_bearing"][-2:] == ["T12", "L1"]
    assert meta["lumbar_count"] == 5
    # rib bone beside L1, on both sides, beyond its transverse processes; nothing new at L2's level
    for side in (-1, 1):
        assert _bone_beside(ribbed, "L1", 55, side=side) > _bone_beside(plain, "L1", 55, side=side) + 10
    assert _bone_beside(ribbed, "L2", 55) == _bone_beside(plain, "L2", 55)
    # same names, same centres, same label map, and the CT differs only around L1
    assert ribbed.centroids.keys() == plain.centroids.keys()
    for name in plain.centroids:
        np.testing.assert_array_equal(ribbed.centroids[name], plain.centroids[name])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ribbed.labels), sitk.GetArrayFromImage(plain.labels))
    new_bone = sitk.GetArrayFromImage(ribbed.image).astype(float) - sitk.GetArrayFromImage(plain.image) != 0
    height, _, _ = _in_frame_of(ribbed, "L1", new_bone)
    assert len(height) > 20 and np.all(np.abs(height) < 20)


def test_eleven_rib_pairs_leave_t12_without_ribs():
    eleven = generate_case(5, variant="11_ribs", **_ANATOMY)
    meta = eleven.meta
    assert meta["variant"] == "11_ribs" and meta["eleven_ribs"] and meta["rib_pairs"] == 11
    assert meta["rib_bearing"][-1] == "T11" and "T12" in eleven.centroids  # T12 keeps its name
    assert _bone_beside(eleven, "T12", 60) <= 2  # no rib beside T12 (a stray bright voxel at most) ...
    assert _bone_beside(eleven, "T11", 60) > 20  # ... but beside T11


def test_a_cervical_rib_grows_from_c7_on_the_side_asked_for():
    plain = generate_case(5, variant="none", **_ANATOMY)
    left = generate_case(5, variant="cervical_rib_left", **_ANATOMY)
    assert left.meta["variant"] == "cervical_rib" and left.meta["cervical_rib"] == "left"
    assert left.meta["rib_bearing"][:2] == ["C7", "T1"] and left.meta["rib_pairs"] == 12
    beside_c7 = dict(beyond_mm=32, half_mm=6, ap_band=(-40, 10))  # behind the clavicles, above the 1st rib
    assert _bone_beside(left, "C7", side=1, **beside_c7) > _bone_beside(plain, "C7", side=1, **beside_c7) + 5
    assert _bone_beside(left, "C7", side=-1, **beside_c7) == _bone_beside(plain, "C7", side=-1, **beside_c7)
    both = generate_case(5, variant="cervical_rib_both", **_ANATOMY)
    assert both.meta["cervical_rib"] == "both"
    assert all(_bone_beside(both, "C7", side=s, **beside_c7) > 5 for s in (-1, 1))


def test_six_lumbar_vertebrae_put_the_sacrum_one_level_lower():
    """An extra lumbar vertebra between L5 and the sacrum has no name among the 26: it is in the image and
    the label map (27) but not in the truth; counting from C1, the vertebra below L5 is still L6's and S1
    is the sacrum, one level further down."""
    plain = generate_case(5, variant="none", **_ANATOMY)
    six = generate_case(5, variant="6_lumbar", **_ANATOMY)
    meta = six.meta
    assert meta["variant"] == "6_lumbar" and meta["lumbar_count"] == 6 and meta["rib_pairs"] == 12
    assert "L6" not in six.centroids and {"L5", "S1"} <= set(six.centroids)
    l6 = np.asarray(meta["extra_lumbar_centroid_lps"])
    np.testing.assert_allclose(l6, meta["extra_centroids"]["L6"])
    assert int(_value_at(six.labels, l6)) == 27
    assert int(_value_at(six.labels, six.centroids["S1"])) == NAME_TO_INDEX["S1"] + 1

    def below_t12(case):  # vertebrae from T12 down to the sacrum, by their truth
        names = list(case.meta["all_centroids"])
        return names[names.index("T12") + 1:names.index("S1")]

    assert below_t12(plain) == ["L1", "L2", "L3", "L4", "L5"]
    assert below_t12(six) == ["L1", "L2", "L3", "L4", "L5", "L6"]
    # and in millimetres: the sacrum lies two steps below L5, not one
    step = np.linalg.norm(six.centroids["L5"] - six.centroids["L4"])
    assert np.linalg.norm(six.centroids["S1"] - six.centroids["L5"]) > 1.6 * step
    assert np.linalg.norm(plain.centroids["S1"] - plain.centroids["L5"]) < 1.4 * step


def test_a_sacralised_l5_is_fused_to_the_sacrum_on_the_side_asked_for():
    """A sacralised L5 keeps its name but is no longer free: its transverse process reaches down and fuses
    with the sacral ala (the label maps of L5 and S1 touch beside the spine) and its disc is narrow."""
    plain = generate_case(5, variant="none", **_ANATOMY)
    fused = generate_case(5, variant="sacralised_l5_left", **_ANATOMY)
    meta = fused.meta
    assert meta["variant"] == "sacralised_l5" and meta["sacralised_l5"] == "left" and meta["lumbar_count"] == 4
    assert fused.centroids.keys() == plain.centroids.keys()
    touching = {(c.meta["variant"], side): _labels_touching(c, "L5", "S1", 28, side)
                for c in (plain, fused) for side in (-1, 1)}
    assert touching["sacralised_l5", 1] > max(10, 2 * touching["sacralised_l5", -1])  # fused on the left
    assert touching["sacralised_l5", 1] > touching[None, 1] + 10
    gap = {c.meta["variant"]: np.linalg.norm(c.centroids["S1"] - c.centroids["L5"]) for c in (plain, fused)}
    assert gap["sacralised_l5"] < gap[None] - 1  # the narrow disc


def test_new_variants_are_rare_and_cases_without_one_are_as_before():
    from training.synthetic.variants import plan_variant

    seeds = range(4000)
    names = [plan_variant(s, None, False, None, 0.025, 0.01, 0.025).name for s in seeds]
    share = {v: names.count(v) / len(names) for v in ("13_ribs", "cervical_rib", "sacralised_l5")}
    assert 0.015 < share["13_ribs"] < 0.035 and 0.004 < share["cervical_rib"] < 0.018, share
    assert 0.015 < share["sacralised_l5"] < 0.035, share
    # an older variant drawn from the main stream is never combined with a newer one
    assert all(plan_variant(s, "L6", False, None, 1.0, 0.0, 0.0).name == "6_lumbar" for s in range(20))
    # a seed without a variant is the same case whether or not "none" is forced; one with a variant is not
    kwargs = dict(spacing=(3.0, 3.0, 3.0))
    drawn, forced = generate_case(3, **kwargs), generate_case(3, variant="none", **kwargs)
    assert drawn.meta["variant"] is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(drawn.image), sitk.GetArrayFromImage(forced.image))
    assert generate_case(0, **kwargs).meta["variant"] == "sacralised_l5"  # seed 0 draws one
    assert generate_case(0, variant="none", **kwargs).meta["variant"] is None


def test_a_synthetic_spec_and_the_evaluation_can_ask_for_a_variant(tmp_path, monkeypatch):
    from training import evaluate
    from training.sources import seeded_factory, synthetic_options

    assert synthetic_options("synthetic?variant=13_ribs&cervical_rib_prob=0.1") == {"variant": "13_ribs",
                                                                                      "cervical_rib_prob": 0.1}
    with pytest.raises(ValueError, match="unknown synthetic variant"):
        synthetic_options("synthetic?variant=7_lumbar")
    assert seeded_factory("synthetic?variant=6_lumbar").keywords == {"variant": "6_lumbar"}

    case = next(evaluate.synthetic_cases(1, 910000, variant="6_lumbar"))
    assert "L6" not in case.centroids and any(n.startswith("variant 6_lumbar") for n in case.notes)

    seen = []
    monkeypatch.setattr(evaluate, "core_labeler", lambda *a, **k: (lambda image: seen.append(image) or ({}, {}), {}))
    out = tmp_path / "eval"
    evaluate.main(["--synthetic", "1", "--seed0", "910000", "--synthetic-variant", "13_ribs", "--out", str(out),
                   "--no-progress"])
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert len(seen) == 1 and json.dumps(summary).count('"13_ribs"') >= 1
    with pytest.raises(SystemExit):
        evaluate.main(["--synthetic", "1", "--synthetic-variant", "14_ribs"])


def test_the_anomaly_case_writer_leaves_a_folder_the_verse_reader_and_the_evaluation_can_read(tmp_path):
    import json

    from benchmarks.anomaly_cases import main as write_cases
    from training.datasets import load_dataset

    assert write_cases(["--out", str(tmp_path), "--cases", "1", "--seed0", "910000", "--spacing", "3",
                        "--variants", "6_lumbar", "cervical_rib_left"]) == 0
    cases = {c.case_id: c for c in load_dataset(f"verse:{tmp_path}")}
    assert set(cases) == {"6lumbar910000", "cervicalribleft910000"}
    truth = json.loads((tmp_path / "derivatives" / "sub-6lumbar910000" / "sub-6lumbar910000_truth.json").read_text())
    assert truth["meta"]["lumbar_count"] == 6 and "L6" not in truth["centroids_lps"]
    assert truth["meta"]["extra_lumbar_centroid_lps"] is not None
    for name, p in cases["6lumbar910000"].centroids.items():  # VerSe has no S2: the rest agree
        np.testing.assert_allclose(p, truth["centroids_lps"][name], atol=0.05)
