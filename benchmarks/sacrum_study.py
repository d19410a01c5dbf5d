"""How well body centres are found at the sacrum: by the label-map estimator, and by the network.

``--part truth`` (no network): the generator knows each body centre exactly; its label maps, with S1 cut
to its body and arch as TotalSegmentator labels it, go through ``datasets.labelmap.body_centres`` with
axial cuts only and with cuts across the canal. ``--turn DEG`` turns each label map about the left-right
axis first (a whole spine leaning like a sacrum). Prints the distance to the truth per vertebra::

    python -m benchmarks.sacrum_study --part truth --cases 40 --seed0 910000 --spacing 3
    python -m benchmarks.sacrum_study --part truth --cases 8 --seed0 910000 --spacing 1.5 --turn 45

``--part model``: the bundled (or ``--model``) network on generated CTs whose sacrum is fixed at a few
shapes (slope, S1-to-S2 bend; ``anatomy.sacral_angles``), the rest of each case random::

    python -m benchmarks.sacrum_study --part model --cases 40 --seed0 910000
"""

import argparse
import sys
from typing import Optional

import numpy as np
import SimpleITK as sitk

from training.datasets.labelmap import body_centres
from training.synthetic import generate_case
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX

TRUTH_LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")
SHAPES = {"slope 45, bend 0": dict(slope=45, bend=0), "slope 45, bend 10": dict(slope=45, bend=10),
          "slope 45, bend 30": dict(slope=45, bend=30), "slope 28, bend 10": dict(slope=28, bend=10),
          "slope 60, bend 10": dict(slope=60, bend=10)}


def s1_without_alae(labels: sitk.Image, s1_lps: np.ndarray, half_width_mm: float = 26.0) -> sitk.Image:
    """The label map with S1 cut to its body and arch (the generator paints S1's alae with its label)."""
    lps = sitk.DICOMOrient(labels, "LPS")
    arr = sitk.GetArrayFromImage(lps)
    x = lps.GetOrigin()[0] + lps.GetSpacing()[0] * np.arange(arr.shape[2])
    arr[(arr == NAME_TO_INDEX["S1"] + 1) & (np.abs(x - s1_lps[0]) > half_width_mm)[None, None, :]] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(lps)
    return out


def turned(labels: sitk.Image, centroids: dict[str, np.ndarray], degrees: float):
    """Label map and truth turned by ``degrees`` about the left-right axis through the image centre."""
    lps = sitk.DICOMOrient(labels, "LPS")
    size = np.array(lps.GetSize())
    centre = np.array(lps.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2]))
    turn = sitk.Euler3DTransform()
    turn.SetCenter([float(v) for v in centre])
    turn.SetRotation(np.deg2rad(degrees), 0.0, 0.0)
    out_size = [int(v * 1.4) for v in size]
    origin = centre - (np.array(out_size) - 1) / 2 * np.array(lps.GetSpacing())
    image = sitk.Resample(lps, out_size, turn, sitk.sitkNearestNeighbor, [float(v) for v in origin],
                          lps.GetSpacing(), (1, 0, 0, 0, 1, 0, 0, 0, 1), 0)
    back = turn.GetInverse()  # the resampler maps output points into the input
    return image, {n: np.array(back.TransformPoint([float(v) for v in p])) for n, p in centroids.items()}


def truth_part(cases: int, seed0: int, spacing: float, turn: float) -> None:
    errors: dict[str, dict[str, list[float]]] = {m: {n: [] for n in TRUTH_LEVELS} for m in ("axial", "across")}
    for seed in range(seed0, seed0 + cases):
        case = generate_case(seed, full_spine_prob=0.0, spacing=(spacing, spacing, spacing))
        labels, truth = case.labels, case.centroids
        if "S1" in truth:
            labels = s1_without_alae(labels, truth["S1"])
        if turn:
            labels, truth = turned(labels, truth, turn)
        wanted = [n for n in TRUTH_LEVELS if n in truth]
        for method, follow in (("axial", False), ("across", True)):
            got = body_centres(labels, [NAME_TO_INDEX[n] + 1 for n in wanted], follow_canal=follow)
            for n in wanted:
                found = got.get(NAME_TO_INDEX[n] + 1)
                errors[method][n].append(np.nan if found is None else float(np.linalg.norm(found - truth[n])))
    for method, per in errors.items():
        print(f"{method}:")
        for n, e in per.items():
            e = np.array(e)
            if np.isfinite(e).any():
                print(f"  {n:4s} found {np.isfinite(e).sum():3d}/{len(e):3d}  median {np.nanmedian(e):4.1f} mm  "
                      f"p90 {np.nanpercentile(e, 90):4.1f}  max {np.nanmax(e):4.1f}")
            elif e.size:
                print(f"  {n:4s} found   0/{e.size:3d}")


def model_part(cases: int, seed0: int, model_path: Optional[str]) -> None:
    from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
    from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

    model, _ = load_model(model_path, device="cpu")
    for shape, fixed in SHAPES.items():
        errors: dict[str, list[float]] = {"L5": [], "S1": [], "S2": []}
        for seed in range(seed0, seed0 + cases):
            case = generate_case(seed, full_spine_prob=0.0, sacrum=fixed)
            if "S1" not in case.centroids:
                continue
            found = label_ct(case.image, model=model, device="cpu").as_dict()
            for n, e in errors.items():
                if n in case.centroids:
                    e.append(float(np.linalg.norm(found[n] - case.centroids[n])) if n in found else np.nan)
        print(f"{shape}: " + "  ".join(
            f"{n} n={len(e)} mean {np.nanmean(e):.1f} mm, >5 mm {int(np.sum(np.array(e) > 5))}, missed "
            f"{int(np.isnan(e).sum())}" for n, e in errors.items() if e))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("truth", "model"), default="truth")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed0", type=int, default=910000)
    ap.add_argument("--spacing", type=float, default=3.0, help="label-map voxel size (truth part), mm")
    ap.add_argument("--turn", type=float, default=0.0, help="turn the label maps by this many degrees first")
    ap.add_argument("--model", help="weights file (model part; default: the bundled model)")
    args = ap.parse_args(argv)
    if args.part == "truth":
        truth_part(args.cases, args.seed0, args.spacing, args.turn)
    else:
        model_part(args.cases, args.seed0, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
