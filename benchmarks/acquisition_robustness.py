"""Do the names survive thicker slices and more noise? A real CT re-made as a thicker, noisier acquisition.

Each real CT with a reference (``--data SPEC``, as ``training.evaluate``) is re-sliced to about ``--thick`` mm
(the mean of whole groups of its slices, as a thick reconstruction of the same scan gives) and Gaussian noise of
``--noise`` HU is added per voxel of the result (seeded); then it is labeled with the bundled model, named both
ways (counted from the anchors, and the network alone) and scored with the paper's criterion::

    PYTHONPATH=. python -m benchmarks.acquisition_robustness --data verse:.cache/reference_data/plain_chest_ct \\
        --thick 0 6 --noise 0 60 120

``--thick 0`` keeps the CT's own slices. Prints one line per CT, slice thickness, noise and naming.
"""

import argparse
from collections.abc import Sequence
from typing import Optional

import numpy as np
import SimpleITK as sitk

from training import metrics
from training.datasets import load_dataset
from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model


def degrade(image: sitk.Image, thick_mm: float, noise_hu: float, seed: int = 0) -> sitk.Image:
    """``image`` with groups of slices averaged to about ``thick_mm`` (0: as it is) and ``noise_hu`` noise added."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    dz = image.GetSpacing()[2]
    group = max(1, int(np.floor(thick_mm / dz + 0.5))) if thick_mm else 1
    n = arr.shape[0] // group
    arr = arr[: n * group].reshape(n, group, *arr.shape[1:]).mean(1)
    if noise_hu:
        arr = arr + np.random.default_rng(seed).normal(0.0, noise_hu, arr.shape).astype(np.float32)
    out = sitk.GetImageFromArray(np.clip(np.round(arr), -32768, 32767).astype(np.int16))
    out.SetSpacing((image.GetSpacing()[0], image.GetSpacing()[1], dz * group))
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    # the centre of a group of slices is the mean of their centres
    out.SetOrigin(tuple(np.asarray(image.GetOrigin()) + direction[:, 2] * dz * (group - 1) / 2.0))
    out.SetDirection(image.GetDirection())
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True, help="real CTs with references (training.evaluate spec)")
    ap.add_argument("--thick", type=float, nargs="+", default=[0.0], help="slice thickness (mm; 0: the CT's own)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0], help="added noise (HU, standard deviation)")
    args = ap.parse_args(argv)
    model, _ = load_model(None, device="cpu")
    for spec in args.data:
        for case in load_dataset(spec):
            image = case.load_image()
            for thick in args.thick:
                for noise in args.noise:
                    degraded = degrade(image, thick, noise)
                    cells = []
                    for anchors in (True, False):
                        result = label_ct(degraded, model=model, device="cpu", anchors=anchors)
                        scored = metrics.evaluate_case(result.as_dict(), case.whole_centroids(), case.case_id)
                        cells.append(f"{sum(v.identified for v in scored.vertebrae)}/{len(scored.vertebrae)}")
                    print(f"{case.case_id}: slices {degraded.GetSpacing()[2]:.1f} mm, noise {noise:.0f} HU: "
                          f"anchored {cells[0]}, network alone {cells[1]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
