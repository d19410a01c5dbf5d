"""Training cases made from corrected points: one folder per CT, read back by ``markups:DIR``.

A hospital that has checked and corrected the labels of its own scans can turn each one into a
training case. The layout is the one the training package's ``markups:DIR`` source reads::

    DIR/<case>/ct.nii.gz            the CT, in the frame the points refer to
    DIR/<case>/vertebrae.mrk.json   one Slicer point list, a point per vertebra, labelled C1..S2

This module writes such a folder (the Slicer panel's "Save as training case" calls it with the
nodes it collected) and holds the one rule both sides use to read a point's label as a vertebra
name, so that what is saved is exactly what training will read.
"""

import math
import os
import re
import shutil
import tempfile
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import SimpleITK as sitk

from .corrections import normalize_name
from .orientation import ImageGeometry
from .vertebrae import VERTEBRA_NAMES

#: File names inside a case folder.
CT_FILE_NAME = "ct.nii.gz"
POINTS_FILE_NAME = "vertebrae.mrk.json"

# "L5", "l 5", "T12", then either the end or a separator and free text ("L5 (corrected)", "L5_center",
# "T12: checked"). A dash or slash does not separate: "L5-S1" and "L5/S1" name a disc or two levels, and
# Slicer's default labels ("<list name>-<n>") are not vertebra names either.
_LABEL_RE = re.compile(r"^\s*([CTLS])\s*([0-9]{1,2})(?:$|[\s_(\[:,;.]\s*(.*)$)", re.IGNORECASE | re.DOTALL)
_OTHER_NAME_RE = re.compile(r"(?<![A-Za-z0-9])[CTLS]\s*[0-9]{1,2}(?![0-9])", re.IGNORECASE)


def vertebra_name_from_label(label: str) -> tuple[Optional[str], str]:
    """The vertebra a point's label names, as ``(name, "")``, or ``(None, why not)``.

    Accepted: the 26 names C1..S2 in any case, with or without a space ("T 12", "t12"), optionally
    followed by a separator (space, ``_``, ``(``, ``[``, ``:``, ``,``, ``;``, ``.``) and a remark:
    "L5 (corrected)", "L5_center". Not accepted, because the level would be a guess:
    an empty label, a label with a question mark ("L5?", "?"), a label that names a second level
    ("T12 or L1", "L5-S1"), and names outside C1..S2 (L6, T13, coccyx).
    """
    text = (label or "").strip()
    if not text:
        return None, "unnamed"
    if "?" in text:
        return None, "marked as uncertain ('?')"
    match = _LABEL_RE.match(text)
    if not match:
        return None, "not a vertebra name"
    name = normalize_name(match.group(1) + match.group(2))
    if name is None:
        return None, "not one of the 26 names C1..S2"
    remark = match.group(3) or ""
    if _OTHER_NAME_RE.search(remark):
        return None, "names more than one level"
    return name, ""


class CaseExistsError(FileExistsError):
    """A case of that name is already in the folder (the caller asks before replacing it)."""


@dataclass
class SavedCase:
    """What :func:`save_training_case` wrote.

    Attributes:
        folder: the case folder.
        ct_path: the CT file in it.
        points_path: the point list in it.
        names: the vertebrae saved, cranio-caudal.
        skipped: one line per point not saved (its label and why).
        warnings: things the user may want to check (points outside the CT).
    """

    folder: str
    ct_path: str
    points_path: str
    names: list[str]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def case_name_for(volume_name: str) -> str:
    """A folder name for a case, from the CT's name: letters, digits, ``-``, ``_``, ``.`` kept, others ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", (volume_name or "").strip()).strip("._")
    return name[:100] or "case"


def free_case_name(root: str, name: str) -> str:
    """``name`` if ``root`` holds no case of that name, else the first free ``name_2``, ``name_3``, ..."""
    if not os.path.exists(os.path.join(root, name)):
        return name
    n = 2
    while os.path.exists(os.path.join(root, f"{name}_{n}")):
        n += 1
    return f"{name}_{n}"


#: One point to save: (label, position in LPS mm[, description]).
PointEntry = Union[tuple[str, Sequence[float]], tuple[str, Sequence[float], str]]
#: The CT to save: an image in memory, an image file or DICOM folder, or a function that writes it to a path.
CtSource = Union[sitk.Image, str, Callable[[str], None]]


def select_points(points: Sequence[PointEntry]) -> tuple[dict[str, tuple[np.ndarray, str]], list[str]]:
    """The points that name a vertebra, ``{name: (LPS, description)}``, and one line per point left out.

    Raises:
        ValueError: two points name the same vertebra (the user decides which is right).
    """
    chosen: dict[str, tuple[np.ndarray, str]] = {}
    labels: dict[str, list[str]] = {}
    skipped: list[str] = []
    for entry in points:
        label, position = entry[0], entry[1]
        description = entry[2] if len(entry) > 2 else ""  # type: ignore[misc]
        name, why = vertebra_name_from_label(label)
        pos = np.asarray(position, dtype=float).reshape(3)
        if name is None:
            skipped.append(f"'{label}': {why}")
            continue
        if not np.all(np.isfinite(pos)):
            skipped.append(f"'{label}': no position")
            continue
        labels.setdefault(name, []).append(label)
        chosen[name] = (pos, str(description or ""))
    twice = {n: labs for n, labs in labels.items() if len(labs) > 1}
    if twice:
        listed = "; ".join(f"{n} ({', '.join(repr(lab) for lab in labs)})" for n, labs in twice.items())
        raise ValueError(f"More than one point names the same vertebra: {listed}. Rename or delete the extra "
                         "points first.")
    return {n: chosen[n] for n in VERTEBRA_NAMES if n in chosen}, skipped


def _write_ct(ct: CtSource, path: str) -> None:
    if isinstance(ct, sitk.Image):
        sitk.WriteImage(ct, path, True)
    elif isinstance(ct, str):
        from .image_io import read_image

        sitk.WriteImage(read_image(ct), path, True)
    else:
        ct(path)
    if not os.path.isfile(path):
        raise RuntimeError(f"The CT was not written to {path}")


def _outside(geometry: ImageGeometry, position_lps: np.ndarray) -> bool:
    index = geometry.lps_to_index(position_lps)
    return bool(np.any(index < -0.5) or np.any(index > np.asarray(geometry.size) - 0.5))


def _result_for_writer(selected: dict[str, tuple[np.ndarray, str]]):
    """The points as the object :func:`outputs.markups_dict` writes (no confidence: a person placed them)."""
    vertebrae = [types.SimpleNamespace(name=n, position_lps=pos, confidence=math.nan, basis=description)
                 for n, (pos, description) in selected.items()]
    return types.SimpleNamespace(vertebrae=vertebrae)


def save_training_case(root: str, case_name: str, ct: CtSource, points: Sequence[PointEntry],
                       overwrite: bool = False, node_name: str = "Vertebrae") -> SavedCase:
    """Write ``root/case_name/ct.nii.gz`` and ``vertebrae.mrk.json`` (LPS) from a CT and its points.

    Args:
        root: the training-case folder (created if missing).
        case_name: the case's folder name (see :func:`case_name_for`); no path separators.
        ct: the CT: an image, an image file or DICOM folder, or a function that writes it to the path
            it is given (Slicer's own writer); the points must be in its physical frame.
        points: ``(label, LPS mm[, description])`` per point; labels are read by
            :func:`vertebra_name_from_label`, points that name no vertebra are left out and listed.
        overwrite: replace an existing case of that name; without it such a case raises
            :class:`CaseExistsError` and nothing is written.
        node_name: the point list's name in the file.

    The case appears complete or not at all: it is built in a hidden folder beside it and renamed
    into place; a replaced case is removed only once the new one is in place.

    Raises:
        ValueError: bad case name, no point names a vertebra, or two points name the same one.
        CaseExistsError: the case exists and ``overwrite`` is False.
    """
    from . import outputs

    if not case_name or case_name != os.path.basename(case_name) or case_name in (".", "..") \
            or case_name.startswith("."):
        raise ValueError(f"{case_name!r} is not a usable case name (a plain folder name is needed)")
    selected, skipped = select_points(points)
    if not selected:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise ValueError(f"No point names a vertebra (C1..S2){detail}; there is nothing to train on.")
    target = os.path.join(root, case_name)
    if os.path.lexists(target) and not overwrite:
        raise CaseExistsError(f"A training case named '{case_name}' already exists in {root}.")
    os.makedirs(root, exist_ok=True)

    staging = tempfile.mkdtemp(prefix=f".tmp-{case_name}-", dir=root)
    try:
        ct_path = os.path.join(staging, CT_FILE_NAME)
        _write_ct(ct, ct_path)
        geometry = ImageGeometry.read(ct_path)
        warnings = [f"{n} lies outside the CT" for n, (pos, _d) in selected.items() if _outside(geometry, pos)]
        outputs.write_markups_json(_result_for_writer(selected), os.path.join(staging, POINTS_FILE_NAME),
                                   node_name=node_name, coordinate_system="LPS")
        # mkdtemp makes a folder only its owner may read; a case folder is shared like any other.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        _publish(staging, target, overwrite)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return SavedCase(folder=target, ct_path=os.path.join(target, CT_FILE_NAME),
                     points_path=os.path.join(target, POINTS_FILE_NAME), names=list(selected),
                     skipped=skipped, warnings=warnings)


def _publish(staging: str, target: str, overwrite: bool) -> None:
    """Rename the finished case into place; an old case is moved aside first and removed last."""
    if not os.path.lexists(target):
        try:
            os.rename(staging, target)
            return
        except OSError:
            if not os.path.lexists(target):
                raise
            # Another save of the same name won the race: treat it as an existing case.
    if not overwrite:
        raise CaseExistsError(f"A training case named '{os.path.basename(target)}' already exists in "
                              f"{os.path.dirname(target)}.")
    old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(target)}-", dir=os.path.dirname(target))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)
