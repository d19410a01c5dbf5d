"""A picture of the result: sagittal and coronal views of the CT with the labeled centroids."""

from typing import Any

import numpy as np
import SimpleITK as sitk

from .outputs import atomic_output
from .preprocessing import to_canonical
from .vertebrae import REGION_COLORS, region_of


def render_overview(image: sitk.Image, result: Any, path: str, title: str = "") -> None:
    """Save a PNG with a sagittal and a coronal view (bone window) and the labeled points.

    The views are maximum-intensity slabs ±15 mm around the spine so that a curved spine stays
    visible. Needs matplotlib (``pip install vertebrae-labeling[plot]``).
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
    fig, axes = plt.subplots(1, 2, figsize=(9, 7), dpi=100)
    for ax, view, col, xlabel in ((axes[0], sag, 1, "anterior → posterior"), (axes[1], cor, 2, "right → left")):
        ax.imshow(view, cmap="gray", vmin=-200, vmax=1200, aspect="equal", interpolation="bilinear")
        for vert, p in zip(result.vertebrae, pts):
            color = REGION_COLORS[region_of(vert.name)]
            ax.plot(p[col], p[0], "o", color=color, markersize=6, markeredgecolor="k")
            ax.text(p[col] + 4, p[0], f"{vert.name} {vert.confidence:.2f}", color=color, fontsize=8,
                    va="center", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"})
        ax.set_xlabel(xlabel)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("sagittal (MIP ±15 mm)")
    axes[1].set_title("coronal (MIP ±15 mm)")
    fig.suptitle(title or f"{len(result.vertebrae)} vertebrae labeled")
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
