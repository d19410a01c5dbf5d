"""Semi-automatic vertebral body centres of a CT without labels, for a by-eye reference.

How the by-eye references of ``training/reference_truth/`` were made (no expert annotation exists for those
CTs; this is the next best thing, and it is written down so it can be checked and redone):

1. a smooth spine curve x(z), y(z) is fitted through rough points on the vertebral bodies (any labeler's
   output, names ignored);
2. the mean HU in a 6 mm disc around the curve, sampled every millimetre from head to feet, dips at every
   intervertebral disc: the dips are the disc levels;
3. each body centre lies half-way between two consecutive discs (cranio-caudally) and, in-plane, in the
   middle of the body's bone (>= ``--bone-hu``) front to back and side to side through the curve
   (:func:`body_centre`);
4. **naming is by eye**, from anatomy the CT shows: the first segment under the dips whose name you give
   with ``--names`` (e.g. ``C7:L1`` after checking in the picture that the uppermost rib pair sits on the
   second segment and the lowest on the second to last). The picture (``OUT.png``) shows the profile, the
   dips and a coronal slab through the rib necks to check that.

    PYTHONPATH=. python -m benchmarks.disc_profile CT ROUGH_POINTS.csv OUT [--names C7:L1] [--skip-top N]

Writes ``OUT.png`` and, with ``--names``, ``OUT.json``: ``{name: [x, y, z] LPS mm}``.
"""

import argparse
import csv
import json

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter1d, map_coordinates
from scipy.signal import find_peaks

from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX, VERTEBRA_NAMES


def _sample(volume: np.ndarray, origin: np.ndarray, spacing: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Linear interpolation of an LPS-oriented (z, y, x) array at LPS points (N, 3)."""
    idx = ((xyz - origin) / spacing)[:, ::-1].T
    return map_coordinates(volume, idx, order=1, mode="nearest")


def disc_levels(volume, origin, spacing, rough: np.ndarray, disc_radius: float = 6.0):
    """(z of the discs, x(z) and y(z) polynomials, z grid, profile) along the curve through ``rough``."""
    rough = rough[np.argsort(-rough[:, 2])]
    z_top = min(rough[:, 2].max() + 15, origin[2] + spacing[2] * (volume.shape[0] - 2))
    z_bottom = max(rough[:, 2].min() - 15, origin[2] + spacing[2])
    zs = np.arange(z_top, z_bottom, -1.0)
    cx = np.polyfit(rough[:, 2], rough[:, 0], 3)
    cy = np.polyfit(rough[:, 2], rough[:, 1], 4)
    grid = np.mgrid[-disc_radius:disc_radius + 0.1:2, -disc_radius:disc_radius + 0.1:2].reshape(2, -1)
    grid = grid[:, (grid ** 2).sum(0) <= disc_radius ** 2]
    profile = []
    for z in zs:
        pts = np.stack([np.polyval(cx, z) + grid[0], np.polyval(cy, z) + grid[1], np.full(grid.shape[1], z)], 1)
        profile.append(_sample(volume, origin, spacing, pts).mean())
    profile = gaussian_filter1d(np.array(profile), 1.5)
    dips, _ = find_peaks(-profile, distance=11, prominence=15)
    return zs[dips], cx, cy, zs, profile


def _run_middle(values: np.ndarray, start: int, threshold: float) -> float:
    """Middle index of the run of ``values >= threshold`` that holds ``start`` (``start`` if it is not bone)."""
    if values[start] < threshold:
        return float(start)
    lo = start
    while lo > 0 and values[lo - 1] >= threshold:
        lo -= 1
    hi = start
    while hi < len(values) - 1 and values[hi + 1] >= threshold:
        hi += 1
    return 0.5 * (lo + hi)


def body_centre(volume, origin, spacing, x, y, z, radius: float, bone_hu: float) -> np.ndarray:
    """In-plane middle of the vertebral body on the axial plane z, from a start (x, y) inside it.

    The bone (>= ``bone_hu`` after a 1.5 mm smoothing) is followed front to back through (x, y), then right
    to left through the new y; the middles of those runs are the new start; three rounds. Runs are looked for
    within ``radius`` + 20 mm, so a body up to that size is measured whole (the canal stops the run at the
    back; the body's sides are free of the ribs half-way between two discs).
    """
    reach = radius + 20.0
    offsets = np.arange(-reach, reach + 0.5, 0.5)
    mid = len(offsets) // 2
    for _ in range(3):
        line_y = np.stack([np.full_like(offsets, x), y + offsets, np.full_like(offsets, z)], 1)
        y = y + offsets[0] + 0.5 * _run_middle(gaussian_filter1d(_sample(volume, origin, spacing, line_y), 3), mid,
                                                bone_hu)
        line_x = np.stack([x + offsets, np.full_like(offsets, y), np.full_like(offsets, z)], 1)
        x = x + offsets[0] + 0.5 * _run_middle(gaussian_filter1d(_sample(volume, origin, spacing, line_x), 3), mid,
                                                bone_hu)
    return np.array([x, y, z])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ct")
    ap.add_argument("rough", help="CSV with x_lps_mm, y_lps_mm, z_lps_mm columns (e.g. vertebrae-labeling --format csv)")
    ap.add_argument("out", help="output path without extension")
    ap.add_argument("--names", help="FIRST:LAST, the names of the segments between the dips, head to feet")
    ap.add_argument("--skip-top", type=int, default=0, help="segments at the top to leave out before FIRST")
    ap.add_argument("--radius", type=float, default=10.0)
    ap.add_argument("--bone-hu", type=float, default=120.0)
    ap.add_argument("--rib-slab", type=float, nargs=2, default=(10.0, 45.0),
                    help="coronal slab for the picture, mm behind the curve (through the rib necks)")
    args = ap.parse_args(argv)

    img = sitk.DICOMOrient(sitk.ReadImage(args.ct), "LPS")
    volume = sitk.GetArrayFromImage(img).astype(np.float32)
    origin, spacing = np.array(img.GetOrigin()), np.array(img.GetSpacing())
    with open(args.rough) as f:
        rough = np.array([[float(r["x_lps_mm"]), float(r["y_lps_mm"]), float(r["z_lps_mm"])] for r in csv.DictReader(f)])
    dips, cx, cy, zs, profile = disc_levels(volume, origin, spacing, rough)
    print("disc levels (z mm):", " ".join(f"{z:.0f}" for z in dips))
    segments = [(a, b) for a, b in zip(dips, dips[1:])][args.skip_top:]

    centres = {}
    if args.names:
        first, last = args.names.split(":")
        names = VERTEBRA_NAMES[NAME_TO_INDEX[first]:NAME_TO_INDEX[last] + 1]
        if len(names) > len(segments):
            raise SystemExit(f"{len(names)} names for {len(segments)} segments")
        for name, (a, b) in zip(names, segments):
            z = 0.5 * (a + b)
            centres[name] = body_centre(volume, origin, spacing, np.polyval(cx, z), np.polyval(cy, z), z,
                                        args.radius, args.bone_hu).round(1).tolist()
            print(f"{name}: z {a:.0f}..{b:.0f} -> {centres[name]}")
        with open(args.out + ".json", "w") as f:
            json.dump(centres, f, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 12), gridspec_kw={"width_ratios": [0.6, 1, 1]})
    ax1.plot(profile, zs)
    ax1.plot(np.interp(dips, zs[::-1], profile[::-1]), dips, "ro")
    ax1.set_title("HU along the spine curve; dips = discs")
    extent_cor = [origin[0], origin[0] + spacing[0] * volume.shape[2], origin[2], origin[2] + spacing[2] * volume.shape[0]]
    y0 = int((np.median(rough[:, 1]) + args.rib_slab[0] - origin[1]) / spacing[1])
    y1 = int((np.median(rough[:, 1]) + args.rib_slab[1] - origin[1]) / spacing[1])
    ax2.imshow(np.clip(volume[:, max(y0, 0):max(y1, y0 + 1), :].max(1), 0, 1000), cmap="gray", origin="lower",
               extent=extent_cor, aspect="equal")
    ax2.set_xlim(np.median(rough[:, 0]) - 90, np.median(rough[:, 0]) + 90)
    ax2.set_title("coronal slab through the rib necks")
    ix = int((np.median(rough[:, 0]) - origin[0]) / spacing[0])
    extent_sag = [origin[1], origin[1] + spacing[1] * volume.shape[1], origin[2], origin[2] + spacing[2] * volume.shape[0]]
    ax3.imshow(np.clip(volume[:, :, max(ix - 2, 0):ix + 3].mean(2), -200, 1000), cmap="gray", origin="lower",
               extent=extent_sag, aspect="equal")
    ax3.set_xlim(np.median(rough[:, 1]) - 60, np.median(rough[:, 1]) + 80)
    ax3.set_title("sagittal")
    for ax in (ax1, ax2, ax3):
        ax.set_ylim(zs.min(), zs.max())
        for z in dips:
            ax.axhline(z, color="r", lw=0.5)
    for name, c in centres.items():
        for ax, h in ((ax2, c[0]), (ax3, c[1])):
            ax.plot(h, c[2], "y+")
            ax.text(h + 4, c[2], name, color="yellow", fontsize=8)
    fig.savefig(args.out + ".png", dpi=60, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
