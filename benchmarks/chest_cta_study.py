"""Why the bundled model mislabels the real chest CT angiogram: the same CT, edited, labelled again.

The chest CTA (``python -m training.reference_data --out .cache/reference_data``) shows C6 to T12; only T12
is labelled (TotalSegmentator). Each variant removes one suspect and reports which label lands nearest
T12's body centre, and every label with its height (z, LPS mm):

* ``as is``;
* ``contrast dimmed``: outside a 45 x 40 mm (left-right x front-back) elliptic cylinder around the spine,
  everything above 150 HU is set to 150 HU, so the arterial contrast (400-900 HU) and the stent graft no
  longer outshine the vertebral bodies (ribs and sternum are dimmed too);
* ``spine only``: outside that cylinder, everything is 40 HU: no heart, lungs, vessels or ribs beyond it;
* ``spine only, scaled 1.15``: the same, every length times 1.15 (a larger person's spine).

    PYTHONPATH=. python -m benchmarks.chest_cta_study
"""

import argparse
import os

import numpy as np
import SimpleITK as sitk

from training.datasets import load_dataset
from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

from .size_study import nearest_label, scaled


def outside_spine(image: sitk.Image, centre_lps: np.ndarray, half_lr: float = 45.0, half_ap: float = 40.0):
    """Mask (array order z, y, x) of the voxels outside an elliptic cylinder around the spine's axis.

    ``centre_lps`` is a point of the axis; its front-back position is moved 10 mm back from the body centre
    so that the cylinder holds body and arch."""
    size = image.GetSize()
    jj, ii = np.mgrid[: size[1], : size[0]]
    index = np.stack([ii, jj, np.zeros_like(ii)], -1) * np.asarray(image.GetSpacing())
    pts = np.asarray(image.GetOrigin()) + index @ np.asarray(image.GetDirection()).reshape(3, 3).T
    dx = (pts[..., 0] - centre_lps[0]) / half_lr
    dy = (pts[..., 1] - (centre_lps[1] + 10.0)) / half_ap
    return np.broadcast_to((dx ** 2 + dy ** 2 > 1.0)[None], (size[2], size[1], size[0]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default=os.path.join(".cache", "reference_data"))
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    case = load_dataset(f"labelmap:{os.path.join(args.reference, 'ts_chest_cta')}?centre=body")[0]
    t12 = case.centroids["T12"]
    image = sitk.ReadImage(case.image_path)
    hu = sitk.GetArrayFromImage(image).astype(np.int16)
    outside = outside_spine(image, t12)

    def edited(arr: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(image)
        return out

    variants = [("as is", image, 1.0),
                ("contrast dimmed", edited(np.where(outside & (hu > 150), np.int16(150), hu)), 1.0),
                ("spine only", edited(np.where(outside, np.int16(40), hu)), 1.0)]
    variants.append(("spine only, scaled 1.15", scaled(variants[-1][1], 1.15), 1.15))
    model, _ = load_model(args.model)
    print(f"T12 body centre (TotalSegmentator mask, our body-centre estimate): z = {t12[2]:.0f} mm")
    for name, img, s in variants:
        result = label_ct(img, model=model, device="cpu")
        found = result.as_dict()
        near, dist = nearest_label(found, t12 * s)
        labels = " ".join(f"{v.name}@{v.position_lps[2] / s:.0f}({v.confidence:.2f})" for v in result.vertebrae)
        print(f"{name:24s} nearest T12: {near} at {dist:.1f} mm | {labels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
