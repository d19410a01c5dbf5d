"""A picture of the result: sagittal and coronal views of the CT with the labeled centroids."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from .outputs import atomic_output
from .preprocessing import to_canonical
from .vertebrae import REGION_COLORS, region_of

#: Label text size. At :data:`DPI` a 9 pt label is 12.5 pixels tall: legible on a screen and in a report.
LABEL_FONT_PT = 9.0
DPI = 100
#: Vertical room one label takes, in pixels (text plus its dark box), so neighbours never touch.
LABEL_PITCH_PX = 17.0
#: Height of each view, in pixels: chest and whole-spine CTs (150–400 rows on the 2 mm grid) get 2.5–4 pixels
#: per 2 mm voxel, so 26 labels fit without being pushed far from their vertebrae.
MIN_PANEL_HEIGHT_PX = 640
MAX_PANEL_HEIGHT_PX = 1000
#: A label needs about this much width (name, confidence, box); it sits this far beside the spine.
LABEL_WIDTH_PX = 78.0
LABEL_OFFSET_MM = 12.0
_MARGIN_PX = {"left": 16, "right": 16, "between": 36, "top": 64, "bottom": 34}


def spread_labels(positions: Sequence[float], min_gap: float, low: float = -np.inf,
                  high: float = np.inf) -> np.ndarray:
    """Label heights as close as possible to ``positions`` with at least ``min_gap`` between neighbours.

    Least squares under the spacing constraint: with ``z_i - i * gap`` non-decreasing (in sorted order) this is
    an isotonic regression, solved exactly by pooling adjacent violators. The result is then kept inside
    ``[low, high]`` where all labels fit in it. Returned in the input's order; labels keep their order.
    """
    y = np.asarray(positions, dtype=float)
    n = len(y)
    if n == 0:
        return y.copy()
    order = np.argsort(y, kind="stable")
    offsets = np.arange(n) * float(min_gap)
    target = y[order] - offsets
    # pool adjacent violators: blocks of (mean, weight), merged while a block's mean exceeds the next one's
    means: list = []
    weights: list = []
    for value in target:
        means.append(float(value))
        weights.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            w = weights[-2] + weights[-1]
            m = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            means[-2:] = [m]
            weights[-2:] = [w]
    fitted = np.repeat(means, weights)
    # clipping an isotonic fit to bounds keeps it isotonic and optimal for the bounded problem
    top = high - offsets[-1]
    if top >= low:
        fitted = np.clip(fitted, low, top)
    out = np.empty(n)
    out[order] = fitted + offsets
    return out


def overview_figure(image: sitk.Image, result: Any, title: str = "") -> Any:
    """A matplotlib figure with a sagittal and a coronal view (bone window) and the labeled points.

    The views are maximum-intensity slabs ±15 mm around the spine so that a curved spine stays visible. Each
    label sits in a column beside the spine with a thin line to its point, spread so that no two overlap
    (a chest or whole-spine CT has 17–26 labels, some only 10–15 mm apart). Needs matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("--overview needs matplotlib: pip install matplotlib") from exc

    vol = to_canonical(image)
    hu = vol.hu
    pts = np.array([vol.lps_to_index(v.position_lps) for v in result.vertebrae]) if result.vertebrae else np.zeros((0, 3))
    if len(pts):
        jc, ic = int(np.median(pts[:, 1])), int(np.median(pts[:, 2]))
    else:
        jc, ic = hu.shape[1] // 2, hu.shape[2] // 2
    half = int(15 / vol.spacing)
    sag = hu[:, :, max(0, ic - half): ic + half + 1].max(axis=2)  # (k, j): cranio-caudal × antero-posterior
    cor = hu[:, max(0, jc - half): jc + half + 1, :].max(axis=1)  # (k, i): cranio-caudal × right-left

    rows = hu.shape[0]
    panel_h = float(np.clip(rows * 4.0, MIN_PANEL_HEIGHT_PX, MAX_PANEL_HEIGHT_PX))
    scale = panel_h / rows  # pixels per voxel, the same in both views and both directions
    label_offset = LABEL_OFFSET_MM / vol.spacing
    views = []
    for view, col, name, xlabel in ((sag, 1, "sagittal", "anterior → posterior"),
                                    (cor, 2, "coronal", "right → left")):
        label_x = (pts[:, col].max() if len(pts) else view.shape[1] / 2) + label_offset
        right = max(view.shape[1] - 0.5, label_x + LABEL_WIDTH_PX / scale)  # room for labels beyond the image
        views.append((view, col, name, xlabel, label_x, right))
    widths = [(right + 0.5) * scale for *_, right in views]
    m = _MARGIN_PX
    fig_w = m["left"] + sum(widths) + m["between"] + m["right"]
    fig_h = m["top"] + panel_h + m["bottom"]
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    x0 = m["left"]
    gap = LABEL_PITCH_PX / scale  # in voxels
    ys = spread_labels(pts[:, 0], gap, low=gap / 2, high=rows - 1 - gap / 2) if len(pts) else np.zeros(0)
    for (view, col, name, xlabel, label_x, right), width in zip(views, widths):
        ax = fig.add_axes((x0 / fig_w, m["bottom"] / fig_h, width / fig_w, panel_h / fig_h))
        x0 += width + m["between"]
        ax.set_facecolor("black")
        ax.imshow(view, cmap="gray", vmin=-200, vmax=1200, aspect="equal", interpolation="bilinear")
        for vert, p, y in zip(result.vertebrae, pts, ys):
            color = REGION_COLORS[region_of(vert.name)]
            ax.plot([p[col], label_x - 1], [p[0], y], "-", color=color, linewidth=0.8, alpha=0.9)
            ax.plot(p[col], p[0], "o", color=color, markersize=5, markeredgecolor="k", markeredgewidth=0.6)
            ax.text(label_x, y, f"{vert.name} {vert.confidence:.2f}", color=color, fontsize=LABEL_FONT_PT,
                    va="center", ha="left",
                    bbox={"facecolor": "black", "alpha": 0.7, "pad": 1.5, "edgecolor": "none"})
        ax.set_xlim(-0.5, right)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_xlabel(xlabel)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name} (MIP ±15 mm)")
    fig.suptitle(title or f"{len(result.vertebrae)} vertebrae labeled", y=1 - 14 / fig_h, va="top")
    return fig


def render_overview(image: sitk.Image, result: Any, path: str, title: str = "") -> None:
    """Save :func:`overview_figure` as a PNG at ``path`` (written atomically). Needs matplotlib
    (``pip install vertebrae-labeling[plot]``)."""
    fig = overview_figure(image, result, title)
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
