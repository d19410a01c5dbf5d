"""Contact sheet: sagittal and coronal mid-slices of generated cases next to the real CT.

    python -m training.contact_sheet --n 8 --out training/docs/contact_sheet.png
    python -m training.contact_sheet --n 0 --painted 5 --out training/docs/painted_sheet.png
"""

import argparse
import os
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .reference_data import CASE_TS_EXAMPLE, DEFAULT_DIR

#: the sample CT with TotalSegmentator's label map (``python -m training.reference_data --missing-only
#: --out .cache/reference_data`` fetches it)
REAL_DIR = os.path.join(DEFAULT_DIR, CASE_TS_EXAMPLE)
WINDOW = (-200.0, 1000.0)


def _lps_array(img: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
    """Array (z, y, x) of the image re-gridded to LPS axes (no resampling)."""
    img = sitk.DICOMOrient(img, "LPS")
    return sitk.GetArrayFromImage(img), img


def _views(img: sitk.Image, centroids: dict[str, np.ndarray]):
    """Sagittal (z, y) and coronal (z, x) slices through the spine and the centroids in pixel units."""
    arr, img = _lps_array(img)
    sp = np.array(img.GetSpacing())
    org = np.array(img.GetOrigin())
    if centroids:
        c = np.median(np.array(list(centroids.values())), axis=0)
    else:
        c = org + sp * (np.array(img.GetSize()) - 1) / 2
    idx = np.round((c - org) / sp).astype(int)
    idx = np.clip(idx, 0, np.array(img.GetSize()) - 1)
    sag = arr[:, :, idx[0]]
    cor = arr[:, idx[1], :]
    pts = {n: (np.asarray(p) - org) / sp for n, p in centroids.items()}
    return sag, cor, sp, pts


def _show(ax, sl, aspect, pts, which, title):
    ax.imshow(sl, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin="lower", aspect=aspect,
              interpolation="bilinear")
    for name, p in pts.items():
        u = p[1] if which == "sag" else p[0]
        ax.plot(u, p[2], "o", ms=2.5, color="red")
        ax.text(u + 3, p[2], name, color="yellow", fontsize=5)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def real_case() -> Optional[tuple[sitk.Image, dict[str, np.ndarray]]]:
    """The sample CT with the centres of mass of TotalSegmentator's vertebra labels, LPS (None when absent)."""
    if not os.path.isdir(REAL_DIR):
        return None
    from .datasets import load_dataset

    case = load_dataset(f"labelmap:{REAL_DIR}")[0]
    return case.load_image(), case.centroids


def _span(centroids: dict[str, np.ndarray]) -> str:
    """"T12-S1": the first and last vertebra shown, for a panel title."""
    names = list(centroids)
    return f"{names[0]}-{names[-1]}" if names else "none"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="number of generated cases")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--painted", type=int, default=0,
                    help="also this many paintings of the real CT's label map (training.painted)")
    ap.add_argument("--out", default="training/docs/contact_sheet.png")
    ap.add_argument("--dpi", type=int, default=90)
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.synthetic import generate_case

    panels = []
    real = real_case()
    if real is not None:
        panels.append(("real ts_example_ct (L1-sacrum)", real[0], real[1]))
    if args.painted:
        if not os.path.isdir(REAL_DIR):
            ap.error(f"--painted paints {REAL_DIR}, which is not there: "
                     f"python -m training.reference_data --missing-only --out {DEFAULT_DIR} fetches it")
        from training.painted import paint_labelmap

        labels = sitk.ReadImage(os.path.join(REAL_DIR, "seg_total_v2_fast_forcesplit.nii.gz"))
        for s in range(args.seed, args.seed + args.painted):
            case = paint_labelmap(labels, s, ct=real[0] if real is not None else None)
            panels.append((f"painted {s}: {_span(case.centroids)} {case.meta['appearance']}", case.image,
                           case.centroids))
    for s in range(args.seed, args.seed + args.n):
        case = generate_case(s)
        extra = f" {case.meta['transitional']}" if case.meta.get("transitional") else ""
        panels.append((f"seed {s}: {_span(case.centroids)}{extra} {case.meta['appearance']}", case.image,
                       case.centroids))

    cols = 6
    rows = int(np.ceil(len(panels) * 2 / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 3.6))
    axes = np.atleast_2d(axes).ravel()
    for i, (title, img, cents) in enumerate(panels):
        sag, cor, sp, pts = _views(img, cents)
        _show(axes[2 * i], sag, sp[2] / sp[1], pts, "sag", title + " sag")
        _show(axes[2 * i + 1], cor, sp[2] / sp[0], pts, "cor", "coronal")
    for ax in axes[2 * len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
