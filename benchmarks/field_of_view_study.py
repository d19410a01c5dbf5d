"""Bad input for the anatomical anchors: fields of view that hide them, and spines that bend or carry metal.

The naming counts from anchors (the first and the last rib pair, the sacrum, C2). This study takes away what
it counts from and checks that the names are no worse than the network's alone, and that the notes say which
anchors were missing. Two parts, each named both ways from one network pass (``benchmarks.naming_study``) and
scored with the paper's criterion:

* **Real CTs cut as a scanner would** (``--data SPEC``, as ``training.evaluate``; a crop of the stored CT,
  so the cut parts are outside the image, not air):

  - ``as is``;
  - ``left ribs cut`` / ``right ribs cut``: the image ends 25 mm beside the spine on that side (the
    patient's left or right), so the ribs of one side only are in view;
  - ``150 mm field``: a 150 mm square around the spine (a spine reconstruction): no rib reaches far
    enough out to be told from a transverse process;
  - ``upper half`` / ``lower half``: the cranial or caudal half of the referenced levels, so one end's anchor
    is gone.

  Only the reference levels whose centre lies inside the cropped image, at least ``MARGIN_MM`` from its
  upper and lower edges, are scored. The crops are placed from the reference (the study's choice of a field
  of view, not something the labeler sees).
* **Generated CTs with a spine condition forced** (``--synthetic N``): ``scoliosis``, ``metal`` (pedicle
  screws and rods with streaks) and ``compression`` (wedge fractures), seeds from ``--seed0``; the generator
  has no congenital block vertebrae.

::

    R=.cache/reference_data
    PYTHONPATH=. python -m benchmarks.field_of_view_study --data verse:$R/plain_chest_ct \\
        --data verse:$R/chest_ct_lung1 --data labelmap:$R/ts_abdomen_bodies --synthetic 6 --out OUT

Prints one line per case and condition and writes ``OUT/rows.json`` and ``OUT/table.md``.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from benchmarks.naming_study import name_both_ways
from training.datasets import load_dataset
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

#: A scored level's centre lies at least this far (mm) inside the cropped image's upper and lower edges.
MARGIN_MM: float = 12.0
#: How far beside the spine (mm) a one-sided crop ends.
SIDE_CUT_MM: float = 25.0
#: Side of the square field of view around the spine (mm).
NARROW_FIELD_MM: float = 150.0

SPINE_CONDITIONS: dict[str, dict] = {
    "scoliosis": {"scoliosis_prob": 1.0},
    "metal": {"metal_prob": 1.0},
    "compression": {"compression_prob": 1.0},
}


def _axis_of(image: sitk.Image, lps_axis: int) -> int:
    """The image index axis that runs most nearly along LPS axis ``lps_axis`` (0 x: right->left, 1 y, 2 z)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return int(np.argmax(np.abs(direction[lps_axis])))


def crop_lps(image: sitk.Image, bounds: dict[int, tuple[float, float]]) -> sitk.Image:
    """The part of ``image`` whose voxels lie within ``bounds`` ({LPS axis: (low, high) mm}); physical
    positions are kept (a region of the stored grid)."""
    lo, hi = [0, 0, 0], list(image.GetSize())
    for lps_axis, (low, high) in bounds.items():
        axis = _axis_of(image, lps_axis)
        n = image.GetSize()[axis]
        index = np.zeros((n, 3))
        index[:, axis] = np.arange(n)
        coords = np.array([image.TransformContinuousIndexToPhysicalPoint(p.tolist())[lps_axis] for p in index])
        inside = np.flatnonzero((coords >= low) & (coords <= high))
        if len(inside) == 0:
            raise ValueError(f"nothing of the image lies within {low:.0f}..{high:.0f} mm on LPS axis {lps_axis}")
        lo[axis], hi[axis] = int(inside.min()), int(inside.max()) + 1
    return image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]


def z_extent(image: sitk.Image) -> tuple[float, float]:
    """Lowest and highest LPS z (mm) of the image's voxel centres."""
    size = np.asarray(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in size * np.array(b)])
               for b in np.ndindex(2, 2, 2)]
    zs = [c[2] for c in corners]
    return min(zs), max(zs)


def field_conditions(truth: dict[str, np.ndarray]) -> dict[str, Optional[dict[int, tuple[float, float]]]]:
    """The crops of a real CT, placed from its reference centroids ({name: LPS mm}); None: the CT as it is."""
    centre = np.mean(np.array(list(truth.values())), axis=0)
    zs = sorted(p[2] for p in truth.values())  # LPS z grows towards the head
    middle = 0.5 * (zs[0] + zs[-1])
    half = 0.5 * NARROW_FIELD_MM
    big = 1e6
    return {
        "as is": None,
        "left ribs cut": {0: (-big, centre[0] + SIDE_CUT_MM)},   # LPS x grows towards the patient's left
        "right ribs cut": {0: (centre[0] - SIDE_CUT_MM, big)},
        "150 mm field": {0: (centre[0] - half, centre[0] + half), 1: (centre[1] - half, centre[1] + half)},
        "upper half": {2: (middle, big)},
        "lower half": {2: (-big, middle)},
    }


def levels_in_view(truth: dict[str, np.ndarray], image: sitk.Image) -> dict[str, np.ndarray]:
    """The reference levels whose centre lies inside ``image``, ``MARGIN_MM`` from its upper and lower edges."""
    z_lo, z_hi = z_extent(image)
    out = {}
    for name, p in truth.items():
        index = image.TransformPhysicalPointToContinuousIndex([float(v) for v in p])
        inside = all(-0.5 <= i <= s - 0.5 for i, s in zip(index, image.GetSize()))
        if inside and z_lo + MARGIN_MM <= p[2] <= z_hi - MARGIN_MM:
            out[name] = p
    return out


def _row(case: str, condition: str, rows: list[dict]) -> dict:
    by_arm = {r["arm"]: r for r in rows}
    return dict(case=case, condition=condition,
                network=[by_arm["network"]["identified"], by_arm["network"]["total"]],
                anchored=[by_arm["anchored"]["identified"], by_arm["anchored"]["total"]],
                refused=by_arm["anchored"]["refused"], notes=by_arm["anchored"]["notes"],
                basis=by_arm["anchored"].get("basis", []))


def real_rows(model, specs: Sequence[str], report: Callable[[dict], None]) -> list[dict]:
    out = []
    for spec in specs:
        for case in load_dataset(spec):
            image = case.load_image()
            truth = {n: np.asarray(p, float) for n, p in case.whole_centroids().items()}
            for condition, bounds in field_conditions(truth).items():
                cropped = image if bounds is None else crop_lps(image, bounds)
                scored = levels_in_view(truth, cropped)
                if not scored:
                    continue
                row = _row(case.case_id, condition, name_both_ways(model, case.case_id, cropped, scored))
                out.append(row)
                report(row)
    return out


def synthetic_rows(model, cases: int, seed0: int, report: Callable[[dict], None]) -> list[dict]:
    from training.synthetic import generate_case

    out = []
    for condition, options in SPINE_CONDITIONS.items():
        for seed in range(seed0, seed0 + cases):
            made = generate_case(seed, **options)
            row = _row(f"synthetic_{seed}", condition, name_both_ways(model, f"synthetic_{seed}", made.image,
                                                                      dict(made.centroids)))
            out.append(row)
            report(row)
    return out


def table(rows: list[dict]) -> str:
    """Per condition: identified of the levels in view, network alone against anchored, and how many cases'
    notes name a missing anchor."""
    lines = ["| condition | cases | network alone | counted from anchors | anchored worse in | notes say no anchor / "
             "anchors disagree |", "|---|---:|---:|---:|---:|---:|"]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        sel = [r for r in rows if r["condition"] == condition]
        net = [sum(r["network"][0] for r in sel), sum(r["network"][1] for r in sel)]
        anc = [sum(r["anchored"][0] for r in sel), sum(r["anchored"][1] for r in sel)]
        worse = sum(r["anchored"][0] < r["network"][0] for r in sel)
        said = sum(("No anatomical anchor" in r["notes"]) or ("anchors disagree" in r["notes"]) for r in sel)
        lines.append(f"| {condition} | {len(sel)} | {net[0]}/{net[1]} | {anc[0]}/{anc[1]} | {worse} | {said} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=[], help="real CTs with references (training.evaluate spec)")
    ap.add_argument("--synthetic", type=int, default=0, help="generated CTs per spine condition")
    ap.add_argument("--seed0", type=int, default=930000)
    ap.add_argument("--model", default=None, help="weights (default: the bundled model)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    model, _ = load_model(args.model, device="cpu")

    def report(row: dict) -> None:
        print(f"{row['case']} [{row['condition']}]: network {row['network'][0]}/{row['network'][1]}, anchored "
              f"{row['anchored'][0]}/{row['anchored'][1]}; {row['notes'][:160]}", flush=True)

    rows = real_rows(model, args.data, report) + synthetic_rows(model, args.synthetic, args.seed0, report)
    text = table(rows)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rows.json"), "w", encoding="utf-8") as handle:
        json.dump({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "rows": rows}, handle, indent=1)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
