"""Manual corrections of a labeling, without Slicer: ordering, renumbering, edit detection.

The Slicer panel keeps the labels in markups nodes that the user edits by hand; these pure
functions hold the rules so that they can be tested without MRML. Positions here are plain
``(x, y, z)`` millimetres in any right-handed patient frame whose third axis points to the
head (RAS and LPS both qualify), which is all the ordering needs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from .vertebrae import NAME_TO_INDEX, VERTEBRA_NAMES

#: Label given to a point that renumbering pushes past C1 or S2: there is no name for it.
UNNAMED_LABEL: str = "?"

_NAME_RE = re.compile(r"^\s*([CTLS])\s*([0-9]{1,2})\s*$", re.IGNORECASE)


def normalize_name(text: str) -> str | None:
    """Return the canonical vertebra name for user input like ``" l1"`` or ``"T 12"``, else None.

    Users type names into a table cell; accepting case and spaces avoids a pointless error.
    """
    match = _NAME_RE.match(text or "")
    if not match:
        return None
    name = f"{match.group(1).upper()}{int(match.group(2))}"
    return name if name in NAME_TO_INDEX else None


def order_along_spine(positions: Sequence[Sequence[float]]) -> list[int]:
    """Return point indices in cranio-caudal order (head first).

    The CT's superior axis is used rather than a fitted curve: a supine patient's spine is
    monotonic in it almost everywhere, and a fit on a handful of points (or a scoliotic
    spine) is less reliable than that. Ties keep the input order so the result is stable.
    """
    pts = np.asarray(positions, dtype=float).reshape(-1, 3)
    # np.argsort is stable with kind="stable"; negate z so the most superior point comes first.
    return [int(i) for i in np.argsort(-pts[:, 2], kind="stable")]


def renumber_from(count: int, anchor_index: int, anchor_name: str) -> list[str]:
    """Names for ``count`` points in cranio-caudal order when point ``anchor_index`` is ``anchor_name``.

    Every other point shifts with it: the point ``k`` places below the anchor gets the name
    ``k`` places after ``anchor_name`` in C1..S2. Points that would fall outside C1..S2 get
    :data:`UNNAMED_LABEL` so the user sees them instead of a silently wrong name.

    Raises:
        ValueError: ``anchor_name`` is not a vertebra name or ``anchor_index`` is out of range.
    """
    name = normalize_name(anchor_name)
    if name is None:
        raise ValueError(f"{anchor_name!r} is not a vertebra name (C1..C7, T1..T12, L1..L5, S1, S2)")
    if not 0 <= anchor_index < count:
        raise ValueError(f"point index {anchor_index} is outside 0..{count - 1}")
    base = NAME_TO_INDEX[name] - anchor_index
    names = []
    for k in range(count):
        idx = base + k
        names.append(VERTEBRA_NAMES[idx] if 0 <= idx < len(VERTEBRA_NAMES) else UNNAMED_LABEL)
    return names


def renumber_points(
    labels: Sequence[str], positions: Sequence[Sequence[float]], point_index: int, new_name: str
) -> list[str]:
    """Relabel all points after the user says point ``point_index`` is ``new_name``.

    ``labels`` and ``positions`` are in any order (e.g. the order of a markups node); the
    returned labels are in that same order, so the caller can write them back in place.
    """
    if len(labels) != len(positions):
        raise ValueError("labels and positions differ in length")
    order = order_along_spine(positions)
    rank = order.index(point_index) if 0 <= point_index < len(labels) else -1
    if rank < 0:
        raise ValueError(f"point index {point_index} is outside 0..{len(labels) - 1}")
    ordered_names = renumber_from(len(labels), rank, new_name)
    result = list(labels)
    for rank_k, original_index in enumerate(order):
        result[original_index] = ordered_names[rank_k]
    return result


def labels_fingerprint(labels: Sequence[str], positions: Sequence[Sequence[float]]) -> str:
    """A short hash of labels and positions (rounded to 0.01 mm), order-independent.

    Stored when the module writes its result; a different value later means the user moved,
    renamed, added or deleted a point, so a re-run must ask before overwriting. Rounding makes
    the test immune to float noise from a save/load round trip.
    """
    pts = np.asarray(positions, dtype=float).reshape(-1, 3)
    items = sorted(
        f"{label}|{x:.2f}|{y:.2f}|{z:.2f}" for label, (x, y, z) in zip(labels, np.round(pts, 2) + 0.0)
    )
    return hashlib.sha1("\n".join(items).encode("utf-8")).hexdigest()[:16]


def is_low_confidence(confidence: float | None, threshold: float) -> bool:
    """Whether a point should be highlighted for review; unknown confidence counts as low."""
    return confidence is None or not np.isfinite(confidence) or confidence < threshold


def duplicate_names(labels: Sequence[str]) -> list[str]:
    """Names used by more than one point (a sign that a manual rename needs a renumber)."""
    seen, dup = set(), []
    for label in labels:
        if label in seen and label not in dup:
            dup.append(label)
        seen.add(label)
    return dup


def sort_key(label: str) -> tuple[int, str]:
    """Sort key putting vertebra names in anatomical order and anything else last."""
    return (NAME_TO_INDEX.get(label, len(VERTEBRA_NAMES)), label)
