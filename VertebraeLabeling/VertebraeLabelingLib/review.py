"""What the user should check in a result: levels missing between labeled ones, low-confidence points.

A network that is unsure about a stretch of spine shows it in two ways the user can see at a glance once
told: it leaves levels out between ones it did label (the points next to such a gap may be a level or
more off), and it gives points a low confidence. Both are reported as messages, which the command line
prints and the Slicer panel shows; nothing is changed in the result.
"""

from collections.abc import Sequence

from .defaults import LOW_CONFIDENCE
from .results import LabeledVertebra
from .vertebrae import NAME_TO_INDEX, VERTEBRA_NAMES


def _ranges(indices: Sequence[int]) -> str:
    """``[2, 4, 6, 7, 8]`` -> "T3, T5, T7-T9" (names of consecutive indices joined)."""
    parts, start = [], None
    for n, k in enumerate(indices):
        if start is None:
            start = k
        if n + 1 == len(indices) or indices[n + 1] != k + 1:
            parts.append(VERTEBRA_NAMES[start] if start == k else f"{VERTEBRA_NAMES[start]}-{VERTEBRA_NAMES[k]}")
            start = None
    return ", ".join(parts)


def missing_levels(vertebrae: Sequence[LabeledVertebra]) -> list[int]:
    """Indices of the vertebrae with no point although levels above and below have one."""
    found = sorted(NAME_TO_INDEX[v.name] for v in vertebrae)
    return [k for a, b in zip(found, found[1:]) for k in range(a + 1, b)]


def review_messages(vertebrae: Sequence[LabeledVertebra], low_confidence: float = LOW_CONFIDENCE) -> list[str]:
    """Messages naming what to check in a labeled spine (empty when nothing stands out)."""
    messages = []
    gaps = missing_levels(vertebrae)
    if gaps:
        messages.append(
            f"No point for {_ranges(gaps)}, between labeled vertebrae: the labels next to a gap may be a level "
            "or more off. Check them, counting from a vertebra you are sure of.")
    weak = [v for v in vertebrae if v.confidence < low_confidence]
    if weak:
        listed = ", ".join(f"{v.name} {v.confidence:.2f}" for v in weak)
        messages.append(f"Low confidence (below {low_confidence:.1f}): {listed}. Check these points.")
    return messages
