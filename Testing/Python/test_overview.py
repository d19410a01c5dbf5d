"""The overview picture a user opens after labeling a chest or whole-spine CT: every label legible, none
on top of another, each still next to its vertebra."""

import numpy as np
import pytest
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib.overview import (
    LABEL_FONT_PT,
    MIN_PANEL_HEIGHT_PX,
    overview_figure,
    render_overview,
    spread_labels,
)
from VertebraeLabeling.VertebraeLabelingLib.results import LabeledVertebra, LabelingResult
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import VERTEBRA_NAMES

matplotlib = pytest.importorskip("matplotlib")


def whole_spine_ct():
    """A 700 mm tall trunk (LPS, 1.5 × 1.5 × 2.5 mm) with a bone column in the back half: a whole-spine CT's
    field of view, cheap to resample."""
    shape = (280, 160, 200)  # z, y, x
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    arr = np.full(shape, -1000.0, dtype=np.float32)
    arr[((y - 80) / 70.0) ** 2 + ((x - 100) / 95.0) ** 2 < 1] = 40.0
    arr[((y - 110) ** 2 + (x - 100) ** 2) < 12 ** 2] = 500.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.5, 1.5, 2.5))
    image.SetOrigin((-150.0, -120.0, -700.0))
    return image


def crowded_result():
    """All 26 names C1–S2 down the column, 25 mm apart, except where a real result crowds them: C1–C3 and
    T5–T6 only 7–9 mm apart (what the labeler gave on a real plain chest CT at C5–C6 and T5–T6)."""
    z = -20.0 - 25.0 * np.arange(len(VERTEBRA_NAMES))
    z[1:3] = z[0] - np.array([8.0, 16.0])
    t5 = VERTEBRA_NAMES.index("T5")
    z[t5 + 1] = z[t5] - 7.0
    return LabelingResult(vertebrae=[
        LabeledVertebra(name, np.array([0.0, -120.0 + 1.5 * 110, zz]), 0.9)
        for name, zz in zip(VERTEBRA_NAMES, z)])


def test_labels_keep_their_order_and_a_minimum_gap():
    y = np.array([10.0, 12.0, 13.0, 40.0, 41.0, 100.0])
    out = spread_labels(y, 5.0)
    assert np.all(np.diff(out) >= 5.0 - 1e-9)
    assert np.argsort(out).tolist() == list(range(6))
    # labels with room stay where their points are
    assert out[-1] == pytest.approx(100.0)
    # a crowded pair is spread evenly about its middle (least squares), not only pushed one way
    assert out[3] + out[4] == pytest.approx(81.0)


def test_labels_already_apart_are_not_moved_and_bounds_hold_where_they_fit():
    y = np.array([30.0, 0.0, 60.0])  # any input order
    assert spread_labels(y, 10.0) == pytest.approx(y)
    crowded = spread_labels(np.array([0.0, 1.0, 2.0]), 10.0, low=0.0, high=100.0)
    assert crowded.min() >= 0.0 and crowded.max() <= 100.0
    assert np.all(np.diff(np.sort(crowded)) >= 10.0 - 1e-9)
    assert spread_labels([], 3.0).shape == (0,)


def test_a_whole_spine_overview_has_legible_labels_none_overlapping():
    result = crowded_result()
    fig = overview_figure(whole_spine_ct(), result, "whole spine")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        fig_box = fig.bbox
        assert fig_box.height >= MIN_PANEL_HEIGHT_PX, "the views are tall enough to read"
        views = [ax for ax in fig.axes if ax.images]
        assert len(views) == 2
        for ax in views:
            labels = [t for t in ax.texts if t.get_text()]
            assert [t.get_text().split()[0] for t in labels] == list(VERTEBRA_NAMES)
            assert all(t.get_fontsize() >= LABEL_FONT_PT for t in labels)
            boxes = [t.get_window_extent(renderer) for t in labels]
            for i, a in enumerate(boxes):
                assert fig_box.x0 <= a.x0 and a.x1 <= fig_box.x1 and fig_box.y0 <= a.y0 and a.y1 <= fig_box.y1, \
                    f"{labels[i].get_text()} is cut off by the picture's edge"
                for j in range(i + 1, len(boxes)):
                    assert not a.overlaps(boxes[j]), f"{labels[i].get_text()} overlaps {labels[j].get_text()}"
            # top to bottom in the picture as down the spine
            heights = [b.y0 for b in boxes]
            assert heights == sorted(heights, reverse=True)
            # a label stays near its vertebra: the crowded ones move apart, by less than two label heights
            markers = [line for line in ax.lines if len(line.get_xdata()) == 1]
            assert len(markers) == len(labels)
            for label, marker in zip(labels, markers):
                _, point_y = ax.transData.transform((marker.get_xdata()[0], marker.get_ydata()[0]))
                _, label_y = ax.transData.transform(label.get_position())
                assert abs(label_y - point_y) < 34, f"{label.get_text()} is {abs(label_y - point_y):.0f} px away"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_the_overview_is_written_as_a_png(tmp_path):
    path = tmp_path / "overview.png"
    render_overview(whole_spine_ct(), crowded_result(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
