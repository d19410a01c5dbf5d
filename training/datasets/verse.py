"""VerSe 2019 / 2020 centroid files (``*_ctd.json``): reading, writing, finding cases.

Three coordinate conventions exist in the wild; the reader tells them apart by content and
file name, and converts all of them to LPS mm with the image header.

1. **Subject-based release** (``sub-verse004_seg-subreg_ctd.json``; the layout the VerSe
   authors recommend, used for both VerSe'19 and VerSe'20 in ``rawdata/`` + ``derivatives/``
   folders). The first list element is ``{"direction": ["P", "I", "R"]}``: nibabel axis codes,
   each letter naming the direction in which a voxel index *increases*. The other elements are
   ``{"label": id, "X": .., "Y": .., "Z": ..}`` in **voxel units** (0-based, voxel centres at
   integers) of the image reoriented to those codes, i.e. X indexes the first reoriented axis.
   In the published data the codes are the image's own axis codes, so X, Y, Z are plainly the
   continuous voxel index; when they differ, a flipped axis of n voxels maps c -> n - 1 - c
   (what nibabel's reorientation does).
2. **MICCAI 2019 challenge release** (``verse004_ctd.json``, no ``direction`` element):
   **millimetres**, origin at the Superior-Right-Anterior corner, X: S->I, Y: A->P, Z: R->L.
3. **MICCAI 2020 challenge release** (``GL017_CT_ax_iso-ctd.json`` /
   ``verse512_CT-iso_iso-ctd.json``, no ``direction`` element): **millimetres**, origin at the
   Anterior-Superior-Left corner, X: A->P, Y: S->I, Z: L->R.

For the two mm conventions the distance runs from voxel 0 along an axis that points the same
way, and from the far edge (``size * spacing - mm``) along an axis that points the other way:
the organisers' own ``reorient_centroids_to`` flips with ``size - c``, and the published
challenge code that converts these files to world coordinates does the same. This is the one
convention detail public sources leave open to about one voxel.

Label ids: 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 27 coccyx, 28 T13.
VerSe's sacrum (26) becomes our S1 (the core writes S1 as 26 too); L6, T13 and the coccyx are
not network labels and are dropped, with a note on the case.
"""

import json
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from VertebraeLabeling.VertebraeLabelingLib import outputs, vertebrae

from .common import (
    AnnotatedCase,
    ImageGeometry,
    axis_map,
    keep_known,
    order_by_spine,
    reoriented_voxel_to_lps,
)

#: VerSe label id -> name, in centroid files and masks alike: the core writer's ids read back (26, the sacrum,
#: is S1), and 25, 27, 28, which are not network labels (dropped with a note).
VERSE_ID_TO_NAME: Dict[int, str] = {i: n for n, i in vertebrae.VERSE_ID.items()}
VERSE_ID_TO_NAME.update({25: "L6", 27: "coccyx", 28: "T13"})

#: Axis codes (direction of increase) of the two challenge-release mm conventions.
MICCAI2019_AXES: Tuple[str, str, str] = ("I", "P", "L")
MICCAI2020_AXES: Tuple[str, str, str] = ("P", "I", "R")

SUBJECT = "subject"
MICCAI2019 = "miccai2019"
MICCAI2020 = "miccai2020"

_BIDS_CTD = re.compile(r"^(?P<prefix>.+?)_seg-(?P<kind>[A-Za-z0-9]+)_ctd\.json$")
_MICCAI20_CTD = re.compile(r"^(?P<stem>.+?)[_-]iso-ctd\.json$")
_MICCAI19_CTD = re.compile(r"^(?P<stem>.+?)_ctd\.json$")

Reference = Union[ImageGeometry, sitk.Image, str]


def _geometry(reference: Reference) -> ImageGeometry:
    if isinstance(reference, ImageGeometry):
        return reference
    if isinstance(reference, sitk.Image):
        return ImageGeometry.of(reference)
    return ImageGeometry.read(reference)


def parse_verse_json(path: str) -> Tuple[Optional[Tuple[str, str, str]], List[Tuple[int, np.ndarray]]]:
    """Read a ``*_ctd.json`` as stored: (axis codes or None, [(label id, (X, Y, Z)), ...]).

    Entries with NaN coordinates (present in some releases) are skipped.
    """
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of centroid entries")
    axcodes = None
    points = []
    for item in items:
        if "direction" in item:
            codes = tuple(str(c).upper() for c in item["direction"])
            if len(codes) != 3:
                raise ValueError(f"{path}: direction must have three axis codes, got {item['direction']}")
            axcodes = codes
            continue
        xyz = [item.get("X"), item.get("Y"), item.get("Z")]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in xyz) or "label" not in item:
            continue
        try:
            coords = np.asarray([float(v) for v in xyz])
        except (TypeError, ValueError):  # "nan" written as a string
            continue
        if np.all(np.isfinite(coords)):
            points.append((int(item["label"]), coords))
    return axcodes, points  # type: ignore[return-value]


def detect_convention(path: str, axcodes: Optional[Sequence[str]]) -> str:
    """Which of the three conventions a file uses (see the module docstring)."""
    if axcodes is not None:
        return SUBJECT
    return MICCAI2020 if _MICCAI20_CTD.match(os.path.basename(path)) else MICCAI2019


def _legacy_mm_to_lps(coords: Sequence[float], geometry: ImageGeometry, axes: Sequence[str]) -> np.ndarray:
    index = np.zeros(3)
    for c, (j, flipped) in zip(coords, axis_map(geometry, axes)):
        along = float(c) / geometry.spacing[j]
        index[j] = (geometry.size[j] - along) if flipped else along
    return geometry.index_to_lps(index)


def read_verse_centroids(path: str, reference: Reference, convention: str = "auto",
                         notes: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """Read a VerSe centroid file and return {name: LPS mm}, in spine order.

    Args:
        path: the ``*_ctd.json`` file.
        reference: the CT it annotates (image, its geometry, or its path: only the header is read).
        convention: "auto", "subject", "miccai2019" or "miccai2020" (module docstring).
        notes: a list that receives one line per dropped label (L6, T13, coccyx, unknown id).
    """
    notes = notes if notes is not None else []
    geometry = _geometry(reference)
    axcodes, points = parse_verse_json(path)
    if convention == "auto":
        convention = detect_convention(path, axcodes)
    where = os.path.basename(path)
    named: Dict[str, np.ndarray] = {}
    for label, coords in points:
        name = VERSE_ID_TO_NAME.get(label)
        if name is None:
            notes.append(f"{where}: dropped unknown VerSe label {label}")
            continue
        if convention == SUBJECT:
            if axcodes is None:
                raise ValueError(f"{path}: no direction element, cannot read it as the subject-based format")
            lps = reoriented_voxel_to_lps(coords, geometry, axcodes)
        elif convention == MICCAI2019:
            lps = _legacy_mm_to_lps(coords, geometry, MICCAI2019_AXES)
        elif convention == MICCAI2020:
            lps = _legacy_mm_to_lps(coords, geometry, MICCAI2020_AXES)
        else:
            raise ValueError(f"unknown VerSe convention {convention!r}")
        if name in named:
            notes.append(f"{where}: label {label} appears twice; kept the first")
            continue
        named[name] = lps
    return order_by_spine(keep_known(named, notes, where))


def write_verse_centroids(path: str, centroids: Dict[str, Sequence[float]], reference: Reference,
                          axcodes: Optional[Sequence[str]] = None, decimals: int = 2) -> None:
    """Write {name: LPS mm} as a subject-based VerSe ``*_ctd.json`` for the given image, in spine order.

    The core's writer (``outputs.write_verse_file``), with the image's own axis codes by default, so
    that the coordinates are the plain continuous voxel index, as in the published data.
    """
    geometry = _geometry(reference)
    codes = tuple(axcodes) if axcodes is not None else geometry.axcodes()
    points = [(name, centroids[name]) for name in vertebrae.VERTEBRA_NAMES if name in centroids]
    outputs.write_verse_file(path, points, geometry, codes, decimals)


# ---------------------------------------------------------------------------------------------
# Finding the cases of a VerSe folder


def _index_images(root: str) -> Dict[str, str]:
    """Basename without extension -> path, for every NIfTI under ``root``."""
    found: Dict[str, str] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            lower = name.lower()
            if lower.endswith(".nii.gz"):
                stem = name[:-7]
            elif lower.endswith(".nii"):
                stem = name[:-4]
            else:
                continue
            found.setdefault(stem, os.path.join(folder, name))
    return found


def _case_of(ctd_name: str) -> Optional[Tuple[str, List[str], int]]:
    """(case id, candidate image stems, preference) for a centroid file name, or None."""
    m = _BIDS_CTD.match(ctd_name)
    if m:
        prefix = m.group("prefix")
        # Two centroid files can exist for one image (seg-subreg and seg-vb); the README's
        # documented one (subreg) wins.
        preference = 0 if m.group("kind") == "subreg" else 1
        case_id = prefix[4:] if prefix.startswith("sub-") else prefix
        return case_id, [prefix + "_ct", prefix], preference
    m = _MICCAI20_CTD.match(ctd_name)
    if m:
        return m.group("stem"), [m.group("stem")], 0
    m = _MICCAI19_CTD.match(ctd_name)
    if m:
        return m.group("stem"), [m.group("stem"), m.group("stem") + "_ct"], 0
    return None


def find_verse_cases(root: str, convention: str = "auto") -> List[AnnotatedCase]:
    """All annotated cases under a VerSe folder (any release, any nesting), sorted by id.

    Works on the subject-based layout (``rawdata/sub-*/..._ct.nii.gz`` with
    ``derivatives/sub-*/..._ctd.json``, possibly several ``dataset-verse*`` folders side by side)
    and on the challenge layouts (image and ``_ctd.json`` / ``_iso-ctd.json`` in one folder).
    Cases whose image cannot be found are skipped. Centroids are read now (header only).
    """
    if os.path.isfile(root):
        raise ValueError(f"verse: expected a folder, got the file {root}")
    images = _index_images(root)
    chosen: Dict[str, Tuple[int, str, str]] = {}
    for folder, _dirs, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith("ctd.json"):
                continue
            parsed = _case_of(name)
            if parsed is None:
                continue
            case_id, stems, preference = parsed
            image = next((images[s] for s in stems if s in images), None)
            if image is None:
                continue
            previous = chosen.get(case_id)
            if previous is None or preference < previous[0]:
                chosen[case_id] = (preference, os.path.join(folder, name), image)
    cases = []
    for case_id in sorted(chosen):
        _pref, ctd, image = chosen[case_id]
        notes: List[str] = []
        centroids = read_verse_centroids(ctd, image, convention=convention, notes=notes)
        cases.append(AnnotatedCase(case_id=case_id, image_path=image, centroids=centroids,
                                   notes=notes, source="verse"))
    return cases
