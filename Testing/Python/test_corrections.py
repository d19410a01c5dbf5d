"""Tests of the Slicer-free correction rules behind "Renumber from this point"."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "VertebraeLabeling"))

from VertebraeLabelingLib import corrections as c
from VertebraeLabelingLib.vertebrae import VERTEBRA_NAMES


def _spine(names, z0=300.0, step=-30.0):
    """Points along z (head up) named ``names`` from top to bottom."""
    return list(names), [(1.0, 2.0, z0 + i * step) for i in range(len(names))]


@pytest.mark.parametrize("text,expected", [("L1", "L1"), (" l1 ", "L1"), ("T 12", "T12"), ("s2", "S2"),
                                           ("T13", None), ("L6", None), ("C0", None), ("", None), ("X1", None)])
def test_normalize_name(text, expected):
    assert c.normalize_name(text) == expected


def test_order_along_spine_head_first_and_stable():
    pts = [(0, 0, 10.0), (0, 0, 50.0), (0, 0, 30.0), (5, 5, 30.0)]
    assert c.order_along_spine(pts) == [1, 2, 3, 0]


def test_renumber_shifts_all_points_consistently():
    # The network called the lowest lumbar-looking vertebra T12; the user says it is L1.
    labels, pos = _spine(["T10", "T11", "T12", "L1", "L2"])
    new = c.renumber_points(labels, pos, 2, "L1")
    assert new == ["T11", "T12", "L1", "L2", "L3"]


def test_renumber_keeps_input_order_of_points():
    labels, pos = _spine(["L1", "L2", "L3", "L4"])
    perm = [2, 0, 3, 1]
    labels_p = [labels[i] for i in perm]
    pos_p = [pos[i] for i in perm]
    # point 0 of the permuted list is the original L3; rename it L4
    new = c.renumber_points(labels_p, pos_p, 0, "l4")
    assert new == ["L4", "L2", "L5", "L3"]


def test_renumber_past_the_ends_gives_unnamed():
    labels, pos = _spine(["L4", "L5", "S1", "S2"])
    assert c.renumber_points(labels, pos, 0, "L5") == ["L5", "S1", "S2", c.UNNAMED_LABEL]
    assert c.renumber_points(labels, pos, 1, "C1") == [c.UNNAMED_LABEL, "C1", "C2", "C3"]


def test_renumber_whole_range():
    _, pos = _spine(VERTEBRA_NAMES)
    assert c.renumber_points(["?"] * 26, pos, 25, "S2") == VERTEBRA_NAMES


@pytest.mark.parametrize("bad", ["T13", "foo", ""])
def test_renumber_rejects_bad_name(bad):
    labels, pos = _spine(["L1", "L2"])
    with pytest.raises(ValueError):
        c.renumber_points(labels, pos, 0, bad)


def test_renumber_rejects_bad_index():
    labels, pos = _spine(["L1", "L2"])
    with pytest.raises(ValueError):
        c.renumber_points(labels, pos, 2, "L1")
    with pytest.raises(ValueError):
        c.renumber_points(labels, pos[:1], 0, "L1")


def test_fingerprint_detects_edits_but_not_noise_or_order():
    labels, pos = _spine(["L1", "L2", "L3"])
    fp = c.labels_fingerprint(labels, pos)
    assert c.labels_fingerprint(labels[::-1], pos[::-1]) == fp
    noisy = [(x + 1e-4, y - 1e-4, z) for x, y, z in pos]
    assert c.labels_fingerprint(labels, noisy) == fp
    moved = [pos[0], (pos[1][0] + 2.0, pos[1][1], pos[1][2]), pos[2]]
    assert c.labels_fingerprint(labels, moved) != fp
    assert c.labels_fingerprint(["L1", "L2", "L4"], pos) != fp
    assert c.labels_fingerprint(labels[:2], pos[:2]) != fp


def test_low_confidence_and_duplicates_and_sort():
    assert c.is_low_confidence(0.2, 0.5)
    assert not c.is_low_confidence(0.7, 0.5)
    assert c.is_low_confidence(None, 0.5)
    assert c.is_low_confidence(float("nan"), 0.5)
    assert c.duplicate_names(["L1", "L2", "L1", "L1"]) == ["L1"]
    assert sorted(["S1", "?", "C2", "L1"], key=c.sort_key) == ["C2", "L1", "S1", "?"]
