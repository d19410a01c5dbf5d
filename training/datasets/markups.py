"""Corrected point lists from 3D Slicer as ground truth: a CT plus one or more ``.mrk.json`` files.

This is how a hospital teaches the model its own scans: label a CT in Slicer, correct the points
(drag, rename, delete), save the case (the panel's "Save as training case" writes exactly this
layout), then train or evaluate on the folder with ``markups:DIR``.

Folder layout (``DIR`` may also be one case folder, or a single ``.mrk.json`` file):

- **one folder per case**: ``DIR/<case>/`` holds the CT (a NIfTI/NRRD/MHA file, preferably
  ``ct.nii.gz``, or a DICOM series in a sub-folder named ``dicom``, ``ct``, ``image`` or ``series``)
  and any number of ``*.mrk.json`` point lists; all of them belong to that CT (the points of a set
  split over several lists, as the Slicer module keeps one list per region, are merged). The case id is
  the folder name.
- **pairs by name**, where a folder holds several CTs: ``<stem>.nii.gz`` (or .nrrd, ...) takes every
  ``<stem>.mrk.json`` and ``<stem><separator>....mrk.json`` beside it ("case1 vertebrae.mrk.json",
  "case1_corrected.mrk.json"); the longest matching stem wins and is the case id.

Files whose names say they are label maps (``seg``, ``label``, ``mask``, ``msk``) are not taken for the CT;
folders whose names start with a dot are skipped (an unfinished save lives in one).

Reading a file follows Slicer's markups JSON schema (v1.x, the ``@schema`` Slicer checks): only
point lists (``"type": "Fiducial"``) are read; ``coordinateSystem`` is ``LPS`` (the default when
absent, as in Slicer) or ``RAS``; units must be millimetres. Positions are those of the file, i.e. the
CT's physical frame when the points were placed on that CT without a transform (or under the same
transform as the CT: Slicer writes both without it). Control points are left out, with a note on the
case, when their ``positionStatus`` is ``undefined`` (a point whose position was deleted) or
``preview`` (being placed), when they have no position, or when their label names no vertebra (see
:func:`VertebraeLabeling.VertebraeLabelingLib.training_cases.vertebra_name_from_label`: "L5", "l5",
"L 5", "L5 (corrected)" are L5; "", "?", "L5?", "F-1", "L6", "T12 or L1" are not). A vertebra named by
more than one point in different places is left out too (which one is right is not ours to guess).

All centroids are LPS mm; the case's ``partial`` list stays empty (a point carries no extent).
"""

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Optional

import numpy as np

from VertebraeLabeling.VertebraeLabelingLib.training_cases import CT_FILE_NAME, vertebra_name_from_label

from .common import AnnotatedCase, order_by_spine

log = logging.getLogger(__name__)

#: Slicer refuses a markups file whose ``@schema`` does not match this (case-insensitive).
SCHEMA_PATTERN = re.compile(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$", re.IGNORECASE)
MARKUPS_SUFFIX = ".mrk.json"
#: Two points of one name closer than this (mm) are the same point saved twice (a merged list and a region list).
SAME_POINT_MM = 0.1

_IMAGE_EXTS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_PREFERRED_IMAGES = (CT_FILE_NAME, "ct.nii", "ct.nrrd", "ct.mha", "image.nii.gz", "image.nii", "image.nrrd")
_LABEL_HINTS = ("seg", "label", "mask", "msk")
_DICOM_FOLDERS = ("dicom", "ct", "image", "series")
_UNITS_MM = ("mm",)


def read_markups_points(path: str, notes: Optional[list[str]] = None) -> list[tuple[str, np.ndarray]]:
    """``[(vertebra name, LPS mm), ...]`` of the usable control points of one ``.mrk.json`` file, in file order.

    Points that are left out (module docstring) get one line each in ``notes``. A name may appear
    more than once here; :func:`merge_points` decides.

    Raises:
        ValueError: the file is not a Slicer markups file (not JSON, no markups ``@schema``, no
            ``markups`` list), or uses a coordinate system, unit or position status Slicer would refuse.
    """
    notes = notes if notes is not None else []
    where = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    schema = doc.get("@schema") if isinstance(doc, dict) else None
    if not isinstance(schema, str) or not SCHEMA_PATTERN.match(schema.strip()):
        raise ValueError(f"{path}: not a Slicer markups file (its '@schema' must name markups-schema-v1.x.y.json, "
                         f"as Slicer writes it; found {schema!r})")
    markups = doc.get("markups")
    if not isinstance(markups, list):
        raise ValueError(f"{path}: no 'markups' list")
    found: list[tuple[str, np.ndarray]] = []
    for m, markup in enumerate(markups):
        if not isinstance(markup, dict):
            raise ValueError(f"{path}: markups item {m + 1} is not an object")
        title = f"{where} '{markup.get('name', '')}'" if markup.get("name") else where
        kind = markup.get("type")
        if kind != "Fiducial":
            notes.append(f"{title}: a {kind} markup, not a point list; ignored")
            continue
        flip = _lps_flip(markup.get("coordinateSystem", "LPS"), path)
        _check_units(markup.get("coordinateUnits", "mm"), path)
        points = markup.get("controlPoints", [])
        if not isinstance(points, list):
            raise ValueError(f"{path}: 'controlPoints' is not a list")
        for i, point in enumerate(points):
            if not isinstance(point, dict):
                raise ValueError(f"{path}: control point {i + 1} is not an object")
            label = str(point.get("label", ""))
            shown = f"point {i + 1} ('{label}')" if label else f"point {i + 1} (no label)"
            status = point.get("positionStatus", "defined")
            if status not in ("defined", "preview", "undefined"):
                raise ValueError(f"{path}: control point {i + 1} has positionStatus {status!r} "
                                 "(Slicer knows defined, preview, undefined)")
            if status != "defined":
                notes.append(f"{title}: {shown} ignored: position {'deleted' if status == 'undefined' else status}")
                continue
            position = _position(point.get("position"))
            if position is None:
                notes.append(f"{title}: {shown} ignored: no position")
                continue
            name, why = vertebra_name_from_label(label)
            if name is None:
                notes.append(f"{title}: {shown} ignored: {why}")
                continue
            found.append((name, position * flip))
    return found


def _lps_flip(system: object, path: str) -> np.ndarray:
    if system == "LPS":
        return np.array([1.0, 1.0, 1.0])
    if system == "RAS":
        return np.array([-1.0, -1.0, 1.0])
    raise ValueError(f"{path}: coordinateSystem {system!r} is neither LPS nor RAS")


def _check_units(units: object, path: str) -> None:
    # A plain string ("mm") or a coded entry (["mm", "UCUM", "millimeter"]), as the schema allows.
    value = units[0] if isinstance(units, list) and units else units
    if value not in _UNITS_MM:
        raise ValueError(f"{path}: coordinateUnits {units!r}: only millimetres are supported")


def _position(value: object) -> Optional[np.ndarray]:
    if not isinstance(value, list) or len(value) != 3:
        return None
    try:
        pos = np.array([float(v) for v in value])
    except (TypeError, ValueError):
        return None
    return pos if all(math.isfinite(v) for v in pos) else None


def merge_points(per_file: Sequence[tuple[str, list[tuple[str, np.ndarray]]]],
                 notes: list[str]) -> dict[str, np.ndarray]:
    """One position per vertebra from the points of all files of a case, in spine order.

    A name given several times at the same place (within :data:`SAME_POINT_MM`) is kept once; given at
    different places it is left out, with a note saying where it was given.
    """
    given: dict[str, list[tuple[str, np.ndarray]]] = {}
    for where, points in per_file:
        for name, pos in points:
            given.setdefault(name, []).append((where, pos))
    kept: dict[str, np.ndarray] = {}
    for name, places in given.items():
        spread = max(float(np.linalg.norm(p - places[0][1])) for _, p in places)
        if spread <= SAME_POINT_MM:
            kept[name] = places[0][1]
            continue
        files = sorted({w for w, _ in places})
        notes.append(f"{name} ignored: {len(places)} points name it, up to {spread:.1f} mm apart "
                     f"({', '.join(files)})")
    return order_by_spine(kept)


def _markups_files(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder)
                  if n.lower().endswith(MARKUPS_SUFFIX) and os.path.isfile(os.path.join(folder, n)))


def _image_stem(name: str) -> Optional[str]:
    lower = name.lower()
    for ext in _IMAGE_EXTS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def _images(folder: str) -> dict[str, str]:
    """``{stem: path}`` of the CT candidates in ``folder``: image files that are not label maps, DICOM folders."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if os.path.isfile(path):
            stem = _image_stem(name)
            if stem is not None and not any(h in name.lower() for h in _LABEL_HINTS):
                found.setdefault(stem, path)
        elif os.path.isdir(path) and name.lower() in _DICOM_FOLDERS:
            found.setdefault(name, path)
    return found


def _pair_by_stem(markups_stem: str, image_stems: Sequence[str]) -> Optional[str]:
    """The longest image stem that is the point list's stem or its start followed by a separator."""
    best = None
    for stem in image_stems:
        if markups_stem == stem or (markups_stem.startswith(stem) and not markups_stem[len(stem)].isalnum()):
            if best is None or len(stem) > len(best):
                best = stem
    return best


def _cases_in_folder(folder: str, only: Optional[Sequence[str]] = None) -> list[tuple[str, str, list[str]]]:
    """``[(case id, image, [point lists])]`` of one folder (module docstring); ``only`` restricts the lists."""
    lists = [n for n in _markups_files(folder) if only is None or n in only]
    if not lists:
        return []
    images = _images(folder)
    preferred = [n for n in _PREFERRED_IMAGES if os.path.isfile(os.path.join(folder, n))]
    if preferred or len(images) == 1:
        image = os.path.join(folder, preferred[0]) if preferred else next(iter(images.values()))
        return [(os.path.basename(os.path.abspath(folder)), image, [os.path.join(folder, n) for n in lists])]
    paired: dict[str, list[str]] = {}
    for name in lists:
        stem = _pair_by_stem(name[: -len(MARKUPS_SUFFIX)], list(images))
        if stem is None:
            where = "no CT beside it" if not images else f"no CT whose name it starts with among {sorted(images)}"
            log.warning("markups: %s left out: %s", os.path.join(folder, name), where)
            continue
        paired.setdefault(stem, []).append(os.path.join(folder, name))
    return [(stem, images[stem], files) for stem, files in sorted(paired.items())]


def case_from_files(case_id: str, image: str, point_lists: Sequence[str]) -> AnnotatedCase:
    """The case of one CT and its point lists.

    Raises:
        ValueError: a file is not a markups file, or no point of any list names a vertebra.
    """
    notes: list[str] = [f"ground truth from {', '.join(os.path.basename(p) for p in point_lists)}"]
    per_file = [(os.path.basename(p), read_markups_points(p, notes)) for p in point_lists]
    centroids = merge_points(per_file, notes)
    if not centroids:
        raise ValueError(f"markups case {case_id}: no point names a vertebra (C1..S2) in "
                         f"{', '.join(point_lists)}; " + "; ".join(notes[1:]))
    return AnnotatedCase(case_id=case_id, image_path=image, centroids=centroids, notes=notes, source="markups")


def find_markups_cases(root: str) -> list[AnnotatedCase]:
    """Every case under ``root`` (a case folder, a folder of them at any depth, or one ``.mrk.json``), sorted by id.

    Raises:
        ValueError: no case found, or a case's files are unusable (the message names the file).
    """
    found: list[tuple[str, str, list[str]]] = []
    if os.path.isfile(root):
        if not root.lower().endswith(MARKUPS_SUFFIX):
            raise ValueError(f"markups: {root} is not a {MARKUPS_SUFFIX} file or a folder")
        found = _cases_in_folder(os.path.dirname(os.path.abspath(root)), only=[os.path.basename(root)])
    else:
        for folder, dirs, _files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend((case_id, image, lists, folder) for case_id, image, lists in _cases_in_folder(folder))
        counts: dict[str, int] = {}
        for entry in found:
            counts[entry[0]] = counts.get(entry[0], 0) + 1
        # Same id in two folders (two "ct" pairs): prefix the parent folder's name.
        found = [(case_id if counts[case_id] == 1 else f"{os.path.basename(folder)}_{case_id}", image, lists)
                 for case_id, image, lists, folder in found]
    if not found:
        raise ValueError(f"markups: no CT with a {MARKUPS_SUFFIX} point list found under {root} "
                         f"(expected DIR/<case>/{CT_FILE_NAME} + DIR/<case>/*{MARKUPS_SUFFIX})")
    cases = [case_from_files(case_id, image, lists) for case_id, image, lists in found]
    return sorted(cases, key=lambda c: c.case_id)
