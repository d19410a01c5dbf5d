"""Write generated CTs with transitional anatomy (and their truth) to a folder, N cases per variant.

Every variant gets the same seeds, so the cases pair up: ``13_ribs`` and ``cervical_rib`` are the ``none``
case of the same seed plus the extra rib, bit for bit (``training.synthetic.variants``). By default every
field of view runs from C1 to the sacrum, so all the anchors of a level count (C2, the first and last rib
pair, the sacrum) are in view::

    python -m benchmarks.anomaly_cases --out eval/anomaly_cases --cases 5 --seed0 910000
    python -m benchmarks.anomaly_cases --out /tmp/ribs --cases 2 --variants 13_ribs cervical_rib_left --spacing 2

The folder has the VerSe subject-based layout, so the labeler can be measured on it directly::

    python -m training.evaluate --data verse:eval/anomaly_cases --out eval/anomaly_cases_eval

(``python -m training.evaluate --synthetic 20 --seed0 910000 --synthetic-variant 13_ribs --out DIR`` does the
same without writing the CTs.) Per case ``sub-ID`` (ID = variant without underscores + seed, e.g.
``13ribs910000``):

* ``rawdata/sub-ID/sub-ID_ct.nii.gz``: the CT (int16 HU);
* ``derivatives/sub-ID/sub-ID_seg-subreg_ctd.json``: VerSe centroids (voxel units, with ``direction``);
* ``derivatives/sub-ID/sub-ID_seg-vert_msk.nii.gz``: the label map (1..26 = vertebra index + 1, 27 = L6,
  28 = T13), with ``--labels``;
* ``derivatives/sub-ID/sub-ID_truth.json``: ``centroids_lps`` ({name: [x, y, z]} LPS mm, the names counted
  from C1; an L6 or T13 is not among them), ``variant``, ``seed`` and the generator's whole ``meta`` (keys
  ``rib_pairs``, ``rib_bearing``, ``cervical_rib``, ``lumbar_count``, ``sacralised_l5``,
  ``extra_lumbar_centroid_lps``, ...).

``index.json`` at the top lists every case with its variant and seed.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np
import SimpleITK as sitk

from training.datasets.verse import write_verse_centroids
from training.synthetic import generate_case
from training.synthetic.variants import VARIANTS, parse_variant

DEFAULT_VARIANTS = ("none", "11_ribs", "13_ribs", "cervical_rib", "6_lumbar", "sacralised_l5", "13_thoracic")


def _jsonable(value):
    """numpy scalars and arrays as plain JSON values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def case_id(variant: str, seed: int) -> str:
    """``13ribs910000``: a VerSe-style subject id without underscores."""
    return f"{variant.replace('_', '').replace('-', '')}{seed}"


def write_case(out: str, variant: str, seed: int, spacing: Optional[Sequence[float]] = None,
               labels: bool = False, full_spine_prob: float = 1.0) -> dict:
    """Generate one case with ``variant`` forced and write it (see the module docstring); returns its index row."""
    case = generate_case(seed, variant=variant, spacing=spacing, with_labels=labels,
                         full_spine_prob=full_spine_prob)
    cid = case_id(variant, seed)
    raw = os.path.join(out, "rawdata", f"sub-{cid}")
    der = os.path.join(out, "derivatives", f"sub-{cid}")
    os.makedirs(raw, exist_ok=True)
    os.makedirs(der, exist_ok=True)
    image_path = os.path.join(raw, f"sub-{cid}_ct.nii.gz")
    sitk.WriteImage(case.image, image_path, useCompression=True)
    write_verse_centroids(os.path.join(der, f"sub-{cid}_seg-subreg_ctd.json"), case.centroids, case.image)
    if labels and case.labels is not None:
        sitk.WriteImage(case.labels, os.path.join(der, f"sub-{cid}_seg-vert_msk.nii.gz"), useCompression=True)
    truth = {"case_id": cid, "seed": int(seed), "variant": variant,
             "centroids_lps": {n: [round(float(v), 3) for v in p] for n, p in case.centroids.items()},
             "meta": case.meta}
    with open(os.path.join(der, f"sub-{cid}_truth.json"), "w", encoding="utf-8") as f:
        json.dump(truth, f, indent=1, default=_jsonable)
    return {"case_id": cid, "seed": int(seed), "variant": variant, "meta_variant": case.meta["variant"],
            "rib_pairs": case.meta["rib_pairs"], "lumbar_count": case.meta["lumbar_count"],
            "cervical_rib": case.meta["cervical_rib"], "n_vertebrae": len(case.centroids),
            "image": os.path.relpath(image_path, out)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anomaly_cases", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (VerSe subject-based layout)")
    parser.add_argument("--cases", type=int, default=5, help="cases per variant (seeds seed0 .. seed0 + N - 1)")
    parser.add_argument("--seed0", type=int, default=910_000, help="first seed (hold-out range: 900000 +)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME",
                        help=f"variants to force (default: all); known: {', '.join(VARIANTS)}, "
                             "cervical_rib and sacralised_l5 also with _left / _right / _both")
    parser.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                        help="fixed output spacing (one value or x y z); default the realistic random grid")
    parser.add_argument("--labels", action="store_true", help="also write the label maps")
    parser.add_argument("--full-spine-prob", type=float, default=1.0,
                        help="share of C1-to-S2 fields of view (default 1: every anchor in view; 0.1 is the "
                             "generator's own mix of abdomen, thorax, neck, lumbar and random windows)")
    args = parser.parse_args(argv)
    for v in args.variants:
        try:
            parse_variant(v)
        except ValueError as exc:
            parser.error(str(exc))
    spacing = None
    if args.spacing:
        if len(args.spacing) not in (1, 3):
            parser.error("--spacing takes one value or three")
        spacing = tuple(args.spacing * 3 if len(args.spacing) == 1 else args.spacing)

    os.makedirs(args.out, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for variant in args.variants:
        for seed in range(args.seed0, args.seed0 + args.cases):
            row = write_case(args.out, variant, seed, spacing=spacing, labels=args.labels,
                             full_spine_prob=args.full_spine_prob)
            rows.append(row)
            print(f"{row['case_id']:>24}  variant {row['meta_variant']}  rib pairs {row['rib_pairs']}  "
                  f"lumbar {row['lumbar_count']}  cervical rib {row['cervical_rib']}  "
                  f"{row['n_vertebrae']} vertebrae", flush=True)
    with open(os.path.join(args.out, "index.json"), "w", encoding="utf-8") as f:
        json.dump({"seed0": args.seed0, "cases_per_variant": args.cases, "variants": args.variants,
                   "spacing": spacing, "full_spine_prob": args.full_spine_prob, "cases": rows}, f, indent=1)
    print(f"{len(rows)} cases in {time.perf_counter() - t0:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
