"""After labeling, the user is told what to check: levels missing between labeled ones, unsure points."""

import os

import numpy as np
import pytest

from VertebraeLabeling.VertebraeLabelingLib.results import LabeledVertebra
from VertebraeLabeling.VertebraeLabelingLib.review import missing_levels, review_messages


def _spine(named):
    return [LabeledVertebra(n, np.array([0.0, 0.0, -25.0 * k]), c) for k, (n, c) in enumerate(named)]


def test_a_whole_confident_stretch_needs_no_message():
    assert review_messages(_spine([("L1", 1.0), ("L2", 0.9), ("L3", 0.83), ("L4", 1.0), ("L5", 1.0)])) == []


def test_levels_left_out_between_labeled_ones_are_named_as_ranges():
    # the bundled model's answer on the real chest CT angiogram
    found = _spine([("C6", 0.48), ("C7", 0.74), ("T1", 0.93), ("T2", 0.67), ("T4", 0.14), ("T6", 0.14),
                    ("T10", 0.53), ("T11", 0.5)])
    messages = review_messages(found)
    assert len(messages) == 2
    assert messages[0].startswith("No point for T3, T5, T7-T9, between labeled vertebrae")
    assert "T4 0.14, T6 0.14" in messages[1] and "T2" not in messages[1]


def test_levels_outside_the_labeled_stretch_are_not_gaps():
    """A CT that shows T10 to L2 is not missing C1-T9 or L3-S2."""
    found = _spine([("T10", 1.0), ("T11", 1.0), ("T12", 1.0), ("L1", 1.0), ("L2", 1.0)])
    assert missing_levels(found) == []
    assert review_messages(found[:1]) == [] and review_messages([]) == []


def test_the_messages_reach_the_user_of_label_ct(sample_ct_path):
    """On the real sample CT nothing stands out; on its copy with L3 blanked to soft tissue either L3 is gone
    (a gap is reported) or a point is unsure, and the result says so."""
    import SimpleITK as sitk

    from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
    from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

    if not os.path.exists(sample_ct_path):
        pytest.skip("no sample CT")
    model, _ = load_model()
    image = read_image(sample_ct_path)
    result = label_ct(image, model=model, device="cpu")
    assert not [m for m in result.messages if "Check" in m], result.messages
    l3 = result.as_dict()["L3"]
    arr = sitk.GetArrayFromImage(image)
    zz = np.arange(arr.shape[0])
    z_mm = np.array([image.TransformIndexToPhysicalPoint((0, 0, int(k)))[2] for k in zz])
    blank = np.abs(z_mm - l3[2]) < 12.0
    edited = arr.copy()
    edited[blank] = np.where(edited[blank] > 100, 40, edited[blank])
    copy = sitk.GetImageFromArray(edited)
    copy.CopyInformation(image)
    damaged = label_ct(copy, model=model, device="cpu")
    assert [m for m in damaged.messages if "Check" in m], (damaged.as_dict().keys(), damaged.messages)
