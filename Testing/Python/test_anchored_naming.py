"""Naming the levels as a radiologist counts them: bodies along the spine, ribs beside them, one naming step.

The story: a chest CT in which the network puts its points on the right bodies but names them a level off.
The ribs say where T1 and T12 are; counting the bodies from them gives the right names, each saying how it
was reached. Where the network is sure and the ribs agree, nothing changes; where the anatomy is unusual
(13 rib-bearing vertebrae) the names come from the surest anchor and a note says what to check.
"""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib import naming
from VertebraeLabeling.VertebraeLabelingLib.aggregation import Candidate
from VertebraeLabeling.VertebraeLabelingLib.anchors import Rib, RibSurvey
from VertebraeLabeling.VertebraeLabelingLib.bodies import Body, BodyChain, choose_discs
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX, TYPICAL_SPACING_MM, VERTEBRA_NAMES

SPACING = 2.0  # mm per canonical voxel


def _chain(first: str, count: int) -> BodyChain:
    """``count`` whole bodies from ``first`` down, at the typical spacing, on a straight spine."""
    k, ks = 10.0, []
    for n in range(count):
        ks.append(k)
        k += TYPICAL_SPACING_MM[NAME_TO_INDEX[first] + n] / SPACING
    curve_k = np.arange(0.0, ks[-1] + 30.0)
    chain = BodyChain(curve_k=curve_k, curve_j=np.full_like(curve_k, 100.0), curve_i=np.full_like(curve_k, 100.0))
    edges = [ks[0] - 0.5 * (ks[1] - ks[0])] + [0.5 * (a + b) for a, b in zip(ks, ks[1:])] + \
        [ks[-1] + 0.5 * (ks[-1] - ks[-2])]
    chain.bodies = [Body(np.array([kk, 100.0, 100.0]), top, bottom) for kk, top, bottom in zip(ks, edges, edges[1:])]
    chain.discs = edges[1:-1]
    return chain


def _ribs(chain: BodyChain, bearing: dict, reach: float = 90.0) -> RibSurvey:
    """A survey with ribs at the bodies in ``bearing`` ({body: sides}) and every side seen."""
    survey = RibSurvey(state=[{"right": "none", "left": "none"} for _ in chain.bodies])
    for b, sides in bearing.items():
        for side in sides:
            survey.ribs.append(Rib(side, float(chain.bodies[b].position[0]), b, reach))
            survey.state[b][side] = "rib"
    return survey


def _network(chain: BodyChain, names: dict, confidence: float = 0.9) -> list:
    """The network's points: one per body in ``names`` ({body: name}), on the body centre."""
    return [Candidate(NAME_TO_INDEX[name], chain.bodies[b].position.copy(), confidence, 3) for b, name in names.items()]


BOTH = ("right", "left")


def test_a_chest_named_a_level_high_by_the_network_is_named_from_its_rib_pairs():
    """C6 to L2 in view (16 bodies). The network names every body one level too high and is unsure of two
    of them; the ribs sit on bodies 2-13. T1 is the body of the first rib pair, T12 of the last."""
    chain = _chain("C6", 16)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b] for b in range(16)}
    high = {b: VERTEBRA_NAMES[NAME_TO_INDEX[name] - 1] for b, name in truth.items() if b not in (6, 9)}
    points = _network(chain, high)
    points[4].confidence = 0.3  # the network is in doubt (as on real chest CTs)
    survey = _ribs(chain, {b: BOTH for b in range(2, 14)})

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is not None, "the rib anchors should have overruled the network"
    named = {lab.label: lab for lab in decision.labels}
    got = [VERTEBRA_NAMES[lab.label] for lab in sorted(decision.labels, key=lambda lab: lab.position[0])]
    assert got == list(truth.values())
    assert named[NAME_TO_INDEX["T1"]].basis == "first rib pair"
    assert named[NAME_TO_INDEX["T12"]].basis == "last rib pair"
    assert named[NAME_TO_INDEX["T6"]].basis.startswith("counted from")
    # T6 and T9 had no network point at all: found by the count, placed on their bodies
    np.testing.assert_allclose(named[NAME_TO_INDEX["T6"]].position, chain.bodies[7].position)
    assert any("1 level higher" in note for note in decision.naming.notes), decision.naming.notes


def test_a_missed_twelfth_rib_does_not_pull_the_count_a_level_up():
    """The same chest, but the short 12th rib is not found (as on a noisy CT): the last rib pair found is on
    T11, 11 bodies below the first. Counted down from the first rib pair, every name is still right, and the
    note says to check the lower thoracic levels (11 rib pairs would be named right the same way). The
    network is unsure of the middle thoracic levels, as on real chest CTs."""
    chain = _chain("C6", 16)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b] for b in range(16)}
    high = {b: VERTEBRA_NAMES[NAME_TO_INDEX[name] - 1] for b, name in truth.items() if b not in (6, 9)}
    points = _network(chain, high)
    for point in points:
        if NAME_TO_INDEX["T2"] <= point.label <= NAME_TO_INDEX["T11"]:
            point.confidence = 0.3
    survey = _ribs(chain, {b: BOTH for b in range(2, 13)})  # T1 .. T11: T12 (body 13) shows no rib

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is not None, "the first rib pair should have overruled the network"
    got = [VERTEBRA_NAMES[lab.label] for lab in sorted(decision.labels, key=lambda lab: lab.position[0])]
    assert got == list(truth.values())
    assert "last rib pair" not in decision.naming.anchor_bodies
    assert any("only 11 vertebrae below the first" in note for note in decision.naming.notes), decision.naming.notes
    assert naming.short_rib_span(2, 12) and not naming.short_rib_span(2, 13) and not naming.short_rib_span(None, 12)


def test_a_sure_complete_network_is_not_overruled_by_a_short_one_sided_rib():
    """The network names C6-L2 right and sure; a short bony bar on one side of C7 (a cervical rib, or a
    transverse process the rib finder took for a rib) makes C7 the 'first rib-bearing' body."""
    chain = _chain("C6", 16)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b] for b in range(16)}
    points = _network(chain, truth, confidence=0.99)
    bearing = {b: BOTH for b in range(2, 14)}
    bearing[1] = ("left",)
    survey = _ribs(chain, bearing, reach=90.0)
    survey.ribs = [r if not (r.body == 1) else Rib("left", r.k, 1, 64.0) for r in survey.ribs]

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is None  # the network's names stand
    assert decision.network_basis.startswith("network; agrees with")


def test_thirteen_rib_bearing_vertebrae_leave_the_network_s_names_and_say_what_to_check():
    """T1-T12 plus a rib pair on L1 (13 pairs), whole spine in view with the sacrum. The first and the last rib
    pair are 13 vertebrae apart: the anchors contradict each other (transitional anatomy, or a bony bar taken
    for a rib), so no count overrules the network; the notes name the count and what to check."""
    chain = _chain("C6", 21)  # C6 .. S1
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b] for b in range(21)}
    points = _network(chain, {b: n for b, n in truth.items() if b not in (9, 10)})
    points[0].confidence = 0.35
    survey = _ribs(chain, {b: BOTH for b in range(2, 15)})  # T1 .. L1

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is None  # the network's names stand
    notes = " ".join(decision.naming.notes)
    assert "13 rib-bearing vertebrae" in notes and "T13 or a lumbar rib" in notes, notes
    assert "Check T1-L1" in notes, notes


def test_without_an_anchor_in_view_the_network_decides_and_says_so():
    """A lumbar crop: no ribs, no sacrum, no C2 in view."""
    chain = _chain("L2", 3)
    points = _network(chain, {0: "L2", 1: "L3", 2: "L4"})
    survey = _ribs(chain, {})

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is None and decision.network_basis == "network only"
    assert decision.naming.notes == [naming.NO_ANCHOR_NOTE]


def test_a_lone_bony_bar_among_rib_free_vertebrae_is_not_a_rib_pair_anchor():
    """C6 to L2 in view, named right by the network; the rib finder misses the ribs (as on some generated CTs)
    and reports one bar beside T9 only. Taken for the first rib pair, it would rename the whole spine eight
    levels off; a rib pair bounds a rib cage, so the vertebrae below it must carry ribs too."""
    chain = _chain("C6", 16)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b] for b in range(16)}
    points = _network(chain, truth, confidence=0.9)
    survey = _ribs(chain, {10: ("left",)})  # T9 (body 10): one bar; every other vertebra seen without a rib

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is None  # the network's names stand
    assert "first rib pair" not in decision.naming.anchor_bodies and "last rib pair" not in decision.naming.anchor_bodies
    assert naming.rib_boundaries(survey, 16)[:2] == (None, None)
    # The same bar with ribs below it (the top of a real rib cage) is the first rib pair.
    cage = _ribs(chain, {b: BOTH for b in range(10, 16)})
    assert naming.rib_boundaries(cage, 16)[0] == 10


def test_a_mid_thoracic_stretch_without_an_anchor_warns_that_its_names_are_a_guess():
    """T4-T8 in view, a rib on every body: no rib-free vertebra beside either end, so no rib pair is an anchor.
    The network's thoracic names stand, and the reader is told how little they are worth on real CTs."""
    chain = _chain("T4", 5)
    points = _network(chain, {b: f"T{4 + b}" for b in range(5)})
    survey = _ribs(chain, {b: BOTH for b in range(5)})

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is None and decision.network_basis == "network only"
    assert decision.naming.notes == [naming.NO_ANCHOR_NOTE, naming.UNANCHORED_THORACIC_NOTE]


def test_a_body_the_network_left_out_is_added_where_the_count_agrees_with_it():
    """The sample CT's story: the last rib pair on a partly seen T12 above the network's L1-S1."""
    chain = _chain("T12", 7)  # T12 .. S1
    chain.bodies[0].partial = True
    points = _network(chain, {1: "L1", 2: "L2", 3: "L3", 4: "L4", 5: "L5", 6: "S1"}, confidence=0.99)
    survey = _ribs(chain, {0: BOTH})

    decision = naming.decide_names(chain, survey, points, points, SPACING)

    assert decision.labels is None
    assert [VERTEBRA_NAMES[lab.label] for lab in decision.added] == ["T12"]
    assert decision.added[0].basis == "last rib pair"


def test_the_disc_finder_leaves_out_a_dip_inside_a_body_and_bridges_a_missed_disc():
    """Dips every 10 voxels (20 mm, the typical thoracic step), one weak dip half-way inside a body, and
    one disc the profile missed (a 40-voxel gap)."""
    real = [10.0, 20.0, 30.0, 40.0, 60.0, 70.0]
    dips = np.array(sorted(real + [45.0 + 0.0, 34.0]))
    strength = np.array([1.0 if k in real else 0.4 for k in dips])
    expected = np.full(len(dips), 10.0)

    discs = choose_discs(dips, strength, expected)

    assert [k for k, _ in discs] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    assert [k for k, bridged in discs if bridged] == [50.0]


@pytest.mark.parametrize("shift", [-1, 1])
def test_the_certainty_drops_where_the_network_and_the_ribs_pull_apart(shift):
    chain = _chain("C7", 15)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C7"] + b] for b in range(15)}
    agreeing = _network(chain, truth, confidence=0.9)
    shifted = _network(chain, {b: VERTEBRA_NAMES[NAME_TO_INDEX[n] + shift] for b, n in truth.items()},
                       confidence=0.9)
    survey = _ribs(chain, {b: BOTH for b in range(1, 13)})
    calm = naming.name_chain(chain, agreeing, SPACING, survey)
    torn = naming.name_chain(chain, shifted, SPACING, survey)
    assert calm.certainty > 0.95
    assert torn.certainty < calm.certainty


SAMPLE_CT = os.path.join(os.path.dirname(__file__), "..", "Data", "ts_example_ct.nii.gz")


@pytest.mark.parametrize("axis, says", [(0, "upside down"), (1, "front-to-back reversed")],
                         ids=["upside-down", "front-to-back"])
def test_a_ct_whose_header_contradicts_its_spine_is_refused_and_nothing_is_written(tmp_path, capsys, axis, says):
    """The sample CT with its pixels flipped but its header kept: the network alone labeled the upside-down
    copy T12-L5 ("L3 0.83"). The ribs rise instead of falling / the spine lies in the front half of the body:
    the command line says so and writes nothing."""
    from VertebraeLabeling.VertebraeLabelingLib import cli

    image = sitk.ReadImage(SAMPLE_CT)
    flipped = sitk.GetImageFromArray(np.flip(sitk.GetArrayFromImage(image), axis).copy())
    flipped.CopyInformation(image)
    path = str(tmp_path / "flipped.nii.gz")
    sitk.WriteImage(flipped, path)
    out = tmp_path / "flipped.mrk.json"

    code = cli.main([path, "-o", str(out), "--device", "cpu", "-q"])

    assert code == 1 and not out.exists()
    err = capsys.readouterr().err
    assert says in err and "nothing was labeled" in err, err


def test_a_network_sure_of_every_level_but_a_level_high_gives_way_to_both_rib_pairs():
    """The network's result reads as one plausible spine (sure, complete, evenly spaced) and is one level
    high throughout, as on real plain chest CTs; the first and the last rib pair are in view. The count from
    the ribs wins; with only one rib pair in view and a few bodies, the sure network stands."""
    chain = _chain("C6", 16)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b] for b in range(16)}
    high = {b: VERTEBRA_NAMES[NAME_TO_INDEX[name] - 1] for b, name in truth.items()}
    points = _network(chain, high, confidence=0.95)

    both = naming.decide_names(chain, _ribs(chain, {b: BOTH for b in range(2, 14)}), points, points, SPACING)
    assert both.labels is not None
    assert {VERTEBRA_NAMES[lab.label]: lab.basis for lab in both.labels}["T12"] == "last rib pair"

    short = _chain("C6", 5)  # C6 .. T3, the first rib pair on body 2
    few = _network(short, {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b - 1] for b in range(5)}, confidence=0.95)
    one = naming.decide_names(short, _ribs(short, {b: BOTH for b in range(2, 5)}), few, few, SPACING)
    assert one.labels is None and not one.naming.notes  # sure of every level: the ribs are the likelier error
    # Unsure of one level (as on real chest CTs), the names still stand, but the reader is told that the
    # first rib pair in view counts otherwise.
    few[4].confidence = 0.4
    unsure = naming.decide_names(short, _ribs(short, {b: BOTH for b in range(2, 5)}), few, few, SPACING)
    assert unsure.labels is None and unsure.network_basis == "network only"
    assert any("do not follow the count from the first rib pair" in note for note in unsure.naming.notes), \
        unsure.naming.notes


def _rib_cage_volume(chain: BodyChain, bridge_bodies: range = range(0)) -> np.ndarray:
    """A canonical HU volume (soft tissue) with one bony rib per side at each body of ``chain``: a bar 6 mm
    tall running out sideways from 16 to 86 mm beside the spine curve, 10 mm behind the body centre. Where
    ``bridge_bodies`` is given, a bony column 6 mm thick 22 mm right of the curve joins the right ribs of
    those bodies, as bridging osteophytes along the side of the thoracic spine do."""
    hu = np.zeros((int(chain.curve_k[-1]) + 20, 200, 200), np.float32)
    j = int(100 + 10 / SPACING)
    for body in chain.bodies:
        k = int(round(body.position[0]))
        for sign in (-1, 1):
            i0, i1 = sorted((int(100 + sign * 16 / SPACING), int(100 + sign * 86 / SPACING)))
            hu[k - 1:k + 2, j - 1:j + 2, i0:i1 + 1] = 600.0
    if len(bridge_bodies):
        k0 = int(chain.bodies[bridge_bodies[0]].position[0])
        k1 = int(chain.bodies[bridge_bodies[-1]].position[0])
        i = int(100 - 22 / SPACING)
        hu[k0:k1 + 1, j - 1:j + 2, i - 1:i + 2] = 600.0
    return hu


def test_ribs_joined_beside_the_spine_by_bridging_bone_are_still_found_one_by_one():
    from VertebraeLabeling.VertebraeLabelingLib.anchors import find_ribs, survey_ribs

    chain = _chain("T1", 12)
    bridged = range(5, 9)  # T6-T9 on the right, where bridging osteophytes are commonest
    hu = _rib_cage_volume(chain, bridged)
    survey = survey_ribs(hu.shape, SPACING, chain, find_ribs(hu, SPACING, chain))
    right_bodies = sorted(r.body for r in survey.ribs if r.side == "right")
    assert right_bodies == list(range(12)), "the joined right ribs of T6-T9 are each found at their own body"
    assert all(state == {"right": "rib", "left": "rib"} for state in survey.state)


def test_a_rib_between_two_of_the_other_side_pairs_with_the_nearer_one():
    from VertebraeLabeling.VertebraeLabelingLib.anchors import rib_levels

    # A left bar at 20 mm (a transverse process or a cervical rib), the right first rib at 28 mm and the left
    # one at 33 mm, on 2 mm slices: the right rib belongs with the left one 5 mm away, not the one 8 mm away.
    ribs = [Rib("left", 10.0, None, 80.0), Rib("right", 14.0, None, 80.0), Rib("left", 16.5, None, 80.0)]
    assert rib_levels(ribs, spacing_k=18.0 / SPACING) == [[0], [1, 2]]


def test_a_rib_on_one_side_of_c7_is_taken_for_a_cervical_rib_and_the_count_starts_below_it():
    """A chest CT from C6 down (as on real chest CTs): the network names C6-T1 right and sure, and the
    thoracic bodies below one level high and unsure. A bony bar reaches out on the left of C7 only (a
    cervical rib, or a long C7 transverse process); the first rib *pair* is on the body below. Counted from
    that pair every name is right, and a note says what was set aside."""
    chain = _chain("C6", 16)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C6"] + b] for b in range(16)}
    names = {b: (name if b <= 2 else VERTEBRA_NAMES[NAME_TO_INDEX[name] - 1]) for b, name in truth.items()
             if b not in (6, 9)}
    points = _network(chain, names, confidence=0.99)
    for point in points:
        if NAME_TO_INDEX["T2"] <= point.label <= NAME_TO_INDEX["T11"]:
            point.confidence = 0.3
    bearing = {b: BOTH for b in range(2, 14)}
    bearing[1] = ("left",)

    decision = naming.decide_names(chain, _ribs(chain, bearing), points, points, SPACING)

    assert decision.labels is not None, "the first rib pair should have overruled the network"
    got = [VERTEBRA_NAMES[lab.label] for lab in sorted(decision.labels, key=lambda lab: lab.position[0])]
    assert got == list(truth.values())
    assert decision.naming.anchor_bodies["first rib pair"] == (2, NAME_TO_INDEX["T1"])
    assert naming.CERVICAL_RIB_NOTE in decision.naming.notes


def test_a_first_rib_missed_on_one_side_of_t1_is_not_taken_for_a_cervical_rib():
    """The other reading of the same ribs: the network is sure the one-sided vertebra is T1 (its other
    first rib was missed). The rib stays, and the count starts there."""
    chain = _chain("C7", 15)
    truth = {b: VERTEBRA_NAMES[NAME_TO_INDEX["C7"] + b] for b in range(15)}
    points = _network(chain, {b: truth[b] for b in (0, 1)}, confidence=0.99)
    bearing = {b: BOTH for b in range(2, 13)}
    bearing[1] = ("left",)
    survey = _ribs(chain, bearing)

    assert naming.set_aside_cervical_rib(chain, survey, points, SPACING) is None
    decision = naming.decide_names(chain, survey, points, points, SPACING)
    assert naming.CERVICAL_RIB_NOTE not in decision.naming.notes
    assert "first rib pair: T1 at body 2 of 15" in decision.naming.anchors

