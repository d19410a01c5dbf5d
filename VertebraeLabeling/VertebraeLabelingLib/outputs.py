"""Writing results: Slicer markups JSON, VerSe-style centroid JSON and CSV.

Every writer builds the whole content in memory first and then replaces the target file in one
``os.replace``: a crash or a bad input never leaves a half-written file behind.
"""

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import numpy as np
import SimpleITK as sitk

from .orientation import ImageGeometry, lps_to_reoriented_voxel, reoriented_voxel_to_lps
from .vertebrae import REGION_COLORS, VERSE_ID, region_of

#: VerSe 2020 subject-based centroid files: voxel indices of the image reoriented to P, I, R.
VERSE_AXES = ("P", "I", "R")

#: The ``@schema`` URL Slicer itself writes; Slicer accepts any URL ending in markups-schema-v1.x.y.json#.
MARKUPS_SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary file path next to ``path``; publish it onto ``path`` only if the block succeeds.

    Readers see either the old file or the complete new one, and a failure leaves no temporary file.
    ``mkstemp`` creates files readable by their owner only, so the result gets the permissions of
    any file the user creates (0666 minus the umask).
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`), UTF-8 whatever the locale."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)


def markups_dict(result: Any, node_name: str = "Vertebrae", coordinate_system: str = "LPS") -> dict[str, Any]:
    """A Slicer markups document with one Fiducial node, one control point per vertebra.

    Label = vertebra name, description = its confidence and how the name was reached, points unlocked so the user can fix them.
    """
    if coordinate_system not in ("LPS", "RAS"):
        raise ValueError("coordinate_system must be 'LPS' or 'RAS'")
    points: list[dict[str, Any]] = []
    for n, vert in enumerate(result.vertebrae):
        pos = np.asarray(vert.position_lps, dtype=float)
        if coordinate_system == "RAS":
            pos = pos * np.array([-1.0, -1.0, 1.0])
        how = getattr(vert, "basis", "") or region_of(vert.name)
        # A point a person placed has no confidence (NaN): its description says only how it was named.
        confidence = float(vert.confidence)
        points.append({
            "id": str(n + 1),
            "label": vert.name,
            "description": f"confidence {confidence:.2f}; {how}" if math.isfinite(confidence) else how,
            "associatedNodeID": "",
            "position": [round(float(v), 3) for v in pos],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        })
    return {
        "@schema": MARKUPS_SCHEMA_URL,
        "markups": [{
            "type": "Fiducial",
            "name": node_name,
            "coordinateSystem": coordinate_system,
            "coordinateUnits": "mm",
            "locked": False,
            "fixedNumberOfControlPoints": False,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(points),
            "controlPoints": points,
            "measurements": [],
            "display": {
                "visibility": True,
                "opacity": 1.0,
                "color": list(REGION_COLORS["thoracic"]),
                "selectedColor": list(REGION_COLORS["lumbar"]),
                "pointLabelsVisibility": True,
                "textScale": 3.0,
                "glyphType": "Sphere3D",
                "glyphScale": 3.0,
            },
        }],
    }


def write_markups_json(result: Any, path: str, node_name: str = "Vertebrae", coordinate_system: str = "LPS") -> None:
    """Write ``result`` as a Slicer ``.mrk.json`` file (LPS, as Slicer writes them by default)."""
    write_text_atomic(path, json.dumps(markups_dict(result, node_name, coordinate_system), indent=2) + "\n")


def lps_to_verse(position_lps: np.ndarray, image: sitk.Image) -> list[float]:
    """LPS mm → VerSe 2020 ``_ctd.json`` coordinates: voxel units of ``image`` reoriented to PIR."""
    return [float(v) for v in lps_to_reoriented_voxel(position_lps, ImageGeometry.of(image), VERSE_AXES)]


def verse_to_lps(xyz: list[float], image: sitk.Image) -> np.ndarray:
    """Inverse of :func:`lps_to_verse`."""
    return reoriented_voxel_to_lps(xyz, ImageGeometry.of(image), VERSE_AXES)


def verse_entries(points: Iterable[tuple[str, Sequence[float]]], reference: Union[sitk.Image, ImageGeometry],
                  axcodes: Sequence[str] = VERSE_AXES, decimals: int = 2) -> list[dict[str, Any]]:
    """The content of a VerSe subject-based ``_ctd.json`` for the CT ``reference``.

    ``[{"direction": axcodes}, {"label": id, "X": .., "Y": .., "Z": ..}, ...]``: X, Y, Z are voxel units of
    the image reoriented to ``axcodes`` (``orientation.lps_to_reoriented_voxel``), one entry per (name, LPS
    mm) point in the order given. S1 is written as VerSe's sacrum (26); S2 has no VerSe id and is left out.
    This is the one VerSe writer: the command line, the Slicer panel and the training package use it.
    """
    geometry = reference if isinstance(reference, ImageGeometry) else ImageGeometry.of(reference)
    codes = [str(c).upper() for c in axcodes]
    out: list[dict[str, Any]] = [{"direction": codes}]
    for name, position_lps in points:
        if name not in VERSE_ID:
            continue
        x, y, z = (round(float(v), decimals) for v in lps_to_reoriented_voxel(position_lps, geometry, codes))
        out.append({"label": int(VERSE_ID[name]), "X": x, "Y": y, "Z": z})
    return out


def write_verse_file(path: str, points: Iterable[tuple[str, Sequence[float]]],
                     reference: Union[sitk.Image, ImageGeometry], axcodes: Sequence[str] = VERSE_AXES,
                     decimals: int = 2) -> None:
    """Write :func:`verse_entries` to ``path`` (replaced in one step)."""
    write_text_atomic(path, json.dumps(verse_entries(points, reference, axcodes, decimals), indent=1) + "\n")


def verse_list(result: Any, reference_image: sitk.Image) -> list[dict[str, Any]]:
    """VerSe 2020 centroid list of a labeling result (PIR voxel units of the CT that was labeled)."""
    return verse_entries(((v.name, v.position_lps) for v in result.vertebrae), reference_image)


def write_verse_json(result: Any, path: str, reference_image: sitk.Image) -> None:
    """Write a VerSe-style ``_ctd.json`` for ``reference_image`` (the CT that was labeled)."""
    write_verse_file(path, ((v.name, v.position_lps) for v in result.vertebrae), reference_image)


def csv_text(result: Any) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "region", "x_lps_mm", "y_lps_mm", "z_lps_mm", "x_ras_mm", "y_ras_mm", "confidence",
                     "how_named"])
    for vert in result.vertebrae:
        x, y, z = (float(v) for v in vert.position_lps)
        writer.writerow([vert.name, region_of(vert.name), f"{x:.2f}", f"{y:.2f}", f"{z:.2f}", f"{-x:.2f}",
                         f"{-y:.2f}", f"{vert.confidence:.3f}", getattr(vert, "basis", "")])
    return buf.getvalue()


def write_csv(result: Any, path: str) -> None:
    """Write one row per vertebra: name, region, LPS and RAS coordinates (mm), confidence, how it was named."""
    write_text_atomic(path, csv_text(result))


def write_result(result: Any, path: str, fmt: str, reference_image: Optional[sitk.Image] = None,
                 source_dicom_files: Optional[list[str]] = None, model_description: str = "") -> None:
    """Write ``result`` in format ``mrk``, ``verse``, ``csv`` or ``dicom-sr`` (which needs the labeled CT's
    DICOM files, ``source_dicom_files``, and the optional highdicom package: :mod:`dicom_sr`)."""
    if fmt == "dicom-sr":
        from .dicom_sr import write_dicom_sr

        write_dicom_sr(result, path, source_dicom_files or [], model_description)
    elif fmt == "mrk":
        write_markups_json(result, path)
    elif fmt == "verse":
        if reference_image is None:
            raise ValueError("the VerSe format needs the reference image")
        write_verse_json(result, path, reference_image)
    elif fmt == "csv":
        write_csv(result, path)
    else:
        raise ValueError(f"unknown format {fmt!r}")
