"""Real thoracic spines next to generated ones: sagittal 3 mm slabs, same window, same scale.

    PYTHONPATH=. python -m benchmarks.thoracic_look --reference .cache/reference_data \
        --seeds 800003 800029 800036 800041 --out training/docs/real_vs_generated_thoracic.png

The real panels are the plain chest CT (T5-T10, centred on our by-eye T7/T8) and the chest CTA (centred
100 mm above TotalSegmentator's T12); the generated ones are centred between T6 and T8. Generator options
(``--options "cortical_mm=1.0-2.0&arch_dense=0"``) show a variant next to the default look.
"""

import argparse
import json
import os

import numpy as np
import SimpleITK as sitk


def sagittal_slab(image: sitk.Image, centre, half=(110.0, 60.0), thickness: int = 3) -> np.ndarray:
    """Mean of ``thickness`` 1 mm sagittal planes through ``centre`` (LPS), head up, anterior left."""
    planes = []
    for dx in np.arange(thickness) - thickness // 2:
        ref = sitk.Image(1, int(2 * half[1]), int(2 * half[0]), sitk.sitkFloat32)
        ref.SetOrigin((centre[0] + dx, centre[1] - half[1], centre[2] - half[0]))
        planes.append(sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1000.0))[:, :, 0])
    return np.mean(planes, axis=0)[::-1]


def _mask_centre(path: str) -> np.ndarray:
    mask = sitk.ReadImage(path)
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0).mean(0)[::-1]
    return np.array(mask.TransformContinuousIndexToPhysicalPoint(idx.tolist()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=".cache/reference_data", help="training.reference_data's folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[800003, 800029, 800036, 800041])
    ap.add_argument("--options", default="", help="generator options as in a 'synthetic?...' spec")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from training.reference_data import CASE_CHEST, CASE_PLAIN_CHEST, PLAIN_CHEST_IMAGE, PLAIN_CHEST_TRUTH
    from training.sources import synthetic_options
    from training.synthetic import generate_case

    panels = []
    with open(PLAIN_CHEST_TRUTH) as f:
        truth = json.load(f)["centroids_lps_mm"]
    plain = sitk.ReadImage(os.path.join(args.reference, CASE_PLAIN_CHEST, PLAIN_CHEST_IMAGE))
    panels.append((sagittal_slab(plain, np.mean([truth["T7"], truth["T8"]], axis=0)), "real plain chest CT"))
    t12 = _mask_centre(os.path.join(args.reference, CASE_CHEST, "seg_t12.nii.gz"))
    cta = sitk.ReadImage(os.path.join(args.reference, CASE_CHEST, "ct.nii.gz"))
    panels.append((sagittal_slab(cta, t12 + np.array([0.0, -8.0, 100.0])), "real chest CTA"))
    options = synthetic_options("synthetic?" + args.options) if args.options else {}
    for seed in args.seeds:
        case = generate_case(seed, **options)
        c = case.centroids
        if "T6" not in c or "T8" not in c:
            continue
        panels.append((sagittal_slab(case.image, np.mean([c["T6"], c["T8"]], axis=0)),
                       f"generated {seed}" + (", variant" if args.options else "")))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 7))
    for ax, (slab, title) in zip(np.atleast_1d(axs), panels):
        ax.imshow(np.clip(slab, -200, 1000), cmap="gray", vmin=-200, vmax=1000)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if args.options:
        fig.suptitle(f"variant: {args.options}", fontsize=10)
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
