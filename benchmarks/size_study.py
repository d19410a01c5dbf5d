"""Does the network name thoracic vertebrae by their absolute size?

Generated CTs whose field of view lies in the thorax (no C7/T1 or T12/L1 transition in most blocks) are
labelled as generated, and again with every length scaled by ``s`` (the image spacing and origin are
multiplied by ``s``, so the spine looks like a smaller or larger person's: the same shapes, the same
intensities). If the network counted on the surrounding anatomy, the id rate would not depend on ``s``;
a network that reads the level from the size names a scaled vertebra after its neighbour.

    PYTHONPATH=. python -m benchmarks.size_study --cases 24 --scales 0.85 1.0 1.15

It also reports the real chest CTA's T12 (``training.reference_data``), scaled the same way.
"""

import argparse
import os

import numpy as np
import SimpleITK as sitk

from training.metrics import evaluate_case
from training.synthetic.generator import generate_case
from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import NAME_TO_INDEX


def scaled(image: sitk.Image, s: float) -> sitk.Image:
    out = sitk.Image(image)
    out.SetSpacing([v * s for v in image.GetSpacing()])
    out.SetOrigin([v * s for v in image.GetOrigin()])
    return out


def nearest_label(found: dict[str, np.ndarray], point: np.ndarray) -> tuple[str | None, float]:
    """The label whose point is nearest ``point`` (LPS mm) and its distance; (None, nan) if none."""
    if not found:
        return None, float("nan")
    name = min(found, key=lambda n: np.linalg.norm(found[n] - point))
    return name, float(np.linalg.norm(found[name] - point))


def thoracic_cases(n: int, seed0: int):
    """Generated cases with at least 6 vertebrae, all thoracic (T2..T11 inside, no cervical or lumbar)."""
    seed = seed0
    while n > 0:
        case = generate_case(seed, spacing=(2.0, 2.0, 2.0), with_labels=False)
        names = list(case.centroids)
        if len(names) >= 6 and all(nm.startswith("T") for nm in names):
            n -= 1
            yield seed, case
        seed += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed0", type=int, default=920000)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.85, 1.0, 1.15])
    parser.add_argument("--model", default=None)
    parser.add_argument("--reference", default=os.path.join(".cache", "reference_data"),
                        help="folder written by training.reference_data (for the real chest CTA)")
    args = parser.parse_args(argv)
    model, _ = load_model(args.model)
    hits: dict[float, list] = {s: [] for s in args.scales}
    shifts: dict[float, list] = {s: [] for s in args.scales}
    for seed, case in thoracic_cases(args.cases, args.seed0):
        for s in args.scales:
            found = label_ct(scaled(case.image, s), model=model, device="cpu").as_dict()
            truth = {n: np.asarray(p) * s for n, p in case.centroids.items()}
            result = evaluate_case(found, truth, str(seed))
            hits[s] += [v.identified for v in result.vertebrae]
            # level shift of the closest prediction, for each truth vertebra that has one within 20 mm
            shifts[s] += [NAME_TO_INDEX[v.closest_name] - NAME_TO_INDEX[v.name] for v in result.vertebrae
                          if v.closest_name is not None and v.closest_distance_mm < 20.0]
        print(f"seed {seed}: " + ", ".join(f"s={s}: {np.mean(hits[s][-len(case.centroids):]) * 100:.0f} %"
                                           for s in args.scales), flush=True)
    print("\nscale  id rate   closest prediction's level minus the true level (-1 = named one level up)")
    for s in args.scales:
        sh = np.asarray(shifts[s])
        print(f"{s:5.2f}  {np.mean(hits[s]) * 100:5.1f} %  mean {sh.mean():+.2f}, "
              + ", ".join(f"{k:+d}: {np.mean(sh == k) * 100:.0f} %" for k in (-2, -1, 0, 1, 2)))
    chest = os.path.join(args.reference, "ts_chest_cta")
    if os.path.isdir(chest):
        from training.datasets import load_dataset

        real = load_dataset(f"labelmap:{chest}?centre=body")[0]
        image = sitk.ReadImage(real.image_path)
        print("\nreal chest CTA, T12 (TotalSegmentator):")
        for s in args.scales:
            found = label_ct(scaled(image, s), model=model, device="cpu").as_dict()
            name, dist = nearest_label(found, real.centroids["T12"] * s)
            print(f"  s={s:.2f}: closest label {name} at {dist:.1f} mm; labels: {' '.join(found)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
