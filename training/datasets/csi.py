"""CSI 2014 / SpineWeb (Glocker et al.) spine CTs: NIfTI + ``.lml`` centroid files.

An ``.lml`` file is plain text: one header line, then one line per vertebra,
``<id> <name> <x> <y> <z>`` separated by tabs, with names such as ``L1_center`` (the part before
the first underscore is the vertebra; the id column is not needed). The 26 names C1..S2 of the
data set are exactly the network's labels.

Coordinates are millimetres along the image's own voxel axes, measured from the centre of
voxel (0, 0, 0): index = coordinate / spacing, with neither the header origin nor its direction
applied. That is how public code written for this data set (e.g. McCouat & Glocker's two-stage
CNN, which divides the centroids by the voxel spacing to index the array) reads them. Files
written in world coordinates instead can be read with ``frame="lps"`` or ``frame="ras"``.
"""

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from VertebraeLabeling.VertebraeLabelingLib import vertebrae

from .common import (
    AnnotatedCase,
    ImageGeometry,
    find_image_next_to,
    keep_known,
    order_by_spine,
)

IMAGE_MM = "image_mm"
WORLD_LPS = "lps"
WORLD_RAS = "ras"

_NAME = re.compile(r"^\s*([CTLS])\s*(\d+)", re.IGNORECASE)


def parse_lml(path: str) -> List[Tuple[str, np.ndarray]]:
    """[(vertebra name as written, before any "_", (x, y, z)), ...] from an ``.lml`` file.

    Lines that do not end in three numbers (the header, comments, blanks) are skipped.
    """
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4 or parts[0].startswith("#"):
                continue
            try:
                xyz = np.asarray([float(v) for v in parts[-3:]])
            except ValueError:
                continue
            # "id name x y z": the name is the field before the coordinates.
            raw = parts[-4]
            entries.append((raw.split("_")[0], xyz))
    return entries


def normalise_name(raw: str) -> str:
    """``"l1"`` / ``"L1_center"`` / ``"L 1"`` -> ``"L1"``; anything else is returned unchanged."""
    m = _NAME.match(raw)
    return f"{m.group(1).upper()}{int(m.group(2))}" if m else raw


def read_lml_centroids(path: str, geometry: ImageGeometry, frame: str = IMAGE_MM,
                       notes: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """Read an ``.lml`` file and return {name: LPS mm} in spine order (module docstring)."""
    notes = notes if notes is not None else []
    where = os.path.basename(path)
    named: Dict[str, np.ndarray] = {}
    for raw, xyz in parse_lml(path):
        name = normalise_name(raw)
        if frame == IMAGE_MM:
            lps = geometry.index_to_lps(xyz / np.asarray(geometry.spacing))
        elif frame == WORLD_LPS:
            lps = xyz.copy()
        elif frame == WORLD_RAS:
            lps = xyz * np.array([-1.0, -1.0, 1.0])
        else:
            raise ValueError(f"unknown .lml frame {frame!r}")
        if name in named:
            notes.append(f"{where}: {name} appears twice; kept the first")
            continue
        named[name] = lps
    return order_by_spine(keep_known(named, notes, where))


def write_lml(path: str, centroids: Dict[str, Sequence[float]], geometry: ImageGeometry,
              frame: str = IMAGE_MM) -> None:
    """Write {name: LPS mm} as an ``.lml`` file (inverse of :func:`read_lml_centroids`)."""
    lines = ["# id\tname\tx\ty\tz"]
    for name in vertebrae.VERTEBRA_NAMES:
        if name not in centroids:
            continue
        p = np.asarray(centroids[name], dtype=float)
        if frame == IMAGE_MM:
            xyz = geometry.lps_to_index(p) * np.asarray(geometry.spacing)
        elif frame == WORLD_LPS:
            xyz = p
        elif frame == WORLD_RAS:
            xyz = p * np.array([-1.0, -1.0, 1.0])
        else:
            raise ValueError(f"unknown .lml frame {frame!r}")
        lines.append(f"{vertebrae.NAME_TO_INDEX[name] + 1}\t{name}_center\t"
                     f"{xyz[0]:.3f}\t{xyz[1]:.3f}\t{xyz[2]:.3f}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def find_csi_cases(root: str, frame: str = IMAGE_MM) -> List[AnnotatedCase]:
    """Every ``.lml`` under ``root`` with an image of the same stem beside it, sorted by id.

    The case id is the stem; where two folders hold the same stem, the parent folder name is
    prefixed so ids stay unique.
    """
    found: List[Tuple[str, str, str]] = []
    for folder, _dirs, files in os.walk(root):
        for name in sorted(files):
            if not name.lower().endswith(".lml"):
                continue
            stem = name[:-4]
            image = find_image_next_to(folder, stem)
            if image is not None:
                found.append((stem, os.path.join(folder, name), image))
    counts: Dict[str, int] = {}
    for stem, _, _ in found:
        counts[stem] = counts.get(stem, 0) + 1
    cases = []
    for stem, lml, image in found:
        case_id = stem if counts[stem] == 1 else f"{os.path.basename(os.path.dirname(lml))}_{stem}"
        notes: List[str] = []
        centroids = read_lml_centroids(lml, ImageGeometry.read(image), frame=frame, notes=notes)
        cases.append(AnnotatedCase(case_id=case_id, image_path=image, centroids=centroids,
                                   notes=notes, source="csi"))
    return sorted(cases, key=lambda c: c.case_id)
