"""Aggregation of block votes and the anatomical-order constraint, on crafted predictions."""

import numpy as np

from VertebraeLabeling.VertebraeLabelingLib.aggregation import (
    BlockPrediction,
    Candidate,
    aggregate,
    enforce_anatomical_order,
)
from VertebraeLabeling.VertebraeLabelingLib.blocks import Block
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX, VERTEBRA_NAMES

SPACING = 2.0


def _spine(names, start_k=10.0):
    """Canonical positions of consecutive vertebrae at their typical spacing."""
    from VertebraeLabeling.VertebraeLabelingLib.aggregation import expected_distance_mm

    pos, k = {}, start_k
    for n, name in enumerate(names):
        if n:
            k += expected_distance_mm(NAME_TO_INDEX[names[n - 1]], NAME_TO_INDEX[name]) / SPACING
        pos[name] = np.array([k, 40.0, 40.0])
    return pos


def _prediction(block, truth, prob=0.95, noise=0.0, rng=None, override=None):
    probs = np.full(26, 0.02)
    coords = np.zeros((26, 3))
    for name, p in truth.items():
        i = NAME_TO_INDEX[name]
        if block.contains(p):
            probs[i] = prob
            coords[i] = p + (rng.normal(0, noise, 3) if rng is not None else 0)
    for name, (p, pr) in (override or {}).items():
        probs[NAME_TO_INDEX[name]] = pr
        coords[NAME_TO_INDEX[name]] = p
    return BlockPrediction(block, probs, coords)


def test_votes_from_overlapping_blocks_average_to_the_truth():
    rng = np.random.default_rng(1)
    truth = _spine(["T11", "T12", "L1", "L2", "L3", "L4", "L5"])
    blocks = [Block((k, 0, 0)) for k in (-20, 10, 40, 70)]
    preds = [_prediction(b, truth, noise=0.7, rng=rng) for b in blocks]
    res = aggregate(preds, SPACING, volume_shape=(200, 80, 80))
    names = [VERTEBRA_NAMES[c.label] for c in res.chosen]
    assert names == list(truth)
    for c in res.chosen:
        err_mm = np.linalg.norm(c.position - truth[VERTEBRA_NAMES[c.label]]) * SPACING
        assert err_mm < 3.0
        assert c.confidence > 0.8


def test_one_stray_block_cannot_pull_a_centroid():
    truth = _spine(["L1", "L2", "L3"], start_k=30)
    blocks = [Block((k, 0, 0)) for k in (0, 10, 20)]
    preds = [_prediction(b, truth) for b in blocks]
    # a fourth block sees "L2" 40 mm away from where the others see it
    preds.append(_prediction(Block((5, 0, 0)), truth, override={"L2": (truth["L2"] + [0, 20, 0], 0.9)}))
    res = aggregate(preds, SPACING)
    l2 = [c for c in res.chosen if VERTEBRA_NAMES[c.label] == "L2"][0]
    assert np.linalg.norm(l2.position - truth["L2"]) * SPACING < 1.0


def test_duplicates_and_out_of_order_labels_are_resolved():
    truth = _spine(["L1", "L2", "L3", "L4"], start_k=20)
    cands = [Candidate(NAME_TO_INDEX[n], p, 0.9) for n, p in truth.items()]
    # A weaker duplicate "L2" at L4's place and an "L1" below L3: both must lose.
    cands.append(Candidate(NAME_TO_INDEX["L2"], truth["L4"] + [1, 0, 0], 0.6))
    cands.append(Candidate(NAME_TO_INDEX["L1"], truth["L3"] + [8, 0, 0], 0.7))
    chosen = enforce_anatomical_order(cands, SPACING)
    assert [VERTEBRA_NAMES[c.label] for c in chosen] == ["L1", "L2", "L3", "L4"]
    ks = [c.position[0] for c in chosen]
    assert ks == sorted(ks)


def test_implausible_spacing_is_rejected():
    # "C3" 30 mm below "C2" is fine; an "L1" just 8 mm under "T12" is not (typical 31 mm).
    truth = _spine(["T11", "T12"], start_k=20)
    cands = [Candidate(NAME_TO_INDEX[n], p, 0.9) for n, p in truth.items()]
    cands.append(Candidate(NAME_TO_INDEX["L1"], truth["T12"] + [4, 0, 0], 0.8))
    chosen = enforce_anatomical_order(cands, SPACING)
    assert [VERTEBRA_NAMES[c.label] for c in chosen] == ["T11", "T12"]


def test_low_probability_votes_do_not_create_labels():
    truth = _spine(["L1", "L2"], start_k=40)
    preds = [_prediction(Block((0, 0, 0)), truth, prob=0.3)]
    assert aggregate(preds, SPACING).chosen == []


def test_a_vertebra_cut_by_the_top_slice_is_kept_but_a_vote_at_an_inner_block_face_is_not():
    """The volume's first slices are seen only by the block that starts there: its votes near that face
    count. The same vote near a face inside the volume is left to the neighbouring block."""
    truth = _spine(["T12", "L1", "L2", "L3"], start_k=2.0)  # T12's centre 4 mm below the top slice
    shape = (150, 80, 80)
    top, lower = Block((0, 0, 0)), Block((46, 0, 0))
    preds = [_prediction(top, truth), _prediction(lower, truth)]
    names = [VERTEBRA_NAMES[c.label] for c in aggregate(preds, SPACING, volume_shape=shape).chosen]
    assert names == ["T12", "L1", "L2", "L3"]

    # The same four, but the top block starts 2 slices into the volume: T12 now sits 0.5 voxels from a
    # face with image beyond it, where the soft-argmax is not trusted.
    shifted = [_prediction(Block((2, 0, 0)), {"T12": truth["T12"] + [0.5, 0, 0]}), preds[1]]
    names = [VERTEBRA_NAMES[c.label] for c in aggregate(shifted, SPACING, volume_shape=shape).chosen]
    assert "T12" not in names


def test_blocks_that_agree_outvote_an_equally_sure_block_that_places_a_vertebra_a_level_off():
    """The real sample CT's story: every block is sure L3 is present, one puts it between L2 and L3.

    Probabilities alone cannot tell the two L3 clusters apart (each voter says 1.0); the share of the
    blocks that could see the place and put L3 there can.
    """
    truth = _spine(["L1", "L2", "L3", "L4"], start_k=30)
    wrong_l3 = truth["L2"] + 0.6 * (truth["L3"] - truth["L2"])  # 60 % of the way: still a plausible chain
    blocks = [Block((k, 0, 0)) for k in (0, 26, 52)]
    preds = [_prediction(blocks[0], truth, prob=1.0, override={"L3": (wrong_l3, 1.0)})]
    preds += [_prediction(b, truth, prob=1.0) for b in blocks[1:]]
    res = aggregate(preds, SPACING, volume_shape=(300, 80, 80))
    chosen = {VERTEBRA_NAMES[c.label]: c.position for c in res.chosen}
    assert set(chosen) == set(truth)
    assert np.linalg.norm(chosen["L3"] - truth["L3"]) * SPACING < 1.0
    wrong = [c for c in res.candidates if VERTEBRA_NAMES[c.label] == "L3" and c.votes == 1]
    assert wrong and wrong[0].confidence < 0.6  # one of the two sure blocks that see it put it there
