"""What the spine itself says about a CT's orientation, for headers that are wrong.

A CT stored upside down or front-to-back reversed (a header whose direction does not match the pixels) gets
confident wrong labels: an upside-down copy of the sample CT was labeled T12-L5 with L3 at 0.83. What a
radiologist would notice first is checked here, from what the naming step already found:

- the spine lies in the back half of the body: the vertebral bodies are behind the middle of the body
  outline (the lungs and belly in front of them), at about 55-75 % of the way from the front skin to the
  back skin on real CTs; a reversed image puts them in the front half;
- the ribs run down as they run out: beside the spine most ribs are nearly level, but the lower ones (and
  the floating ribs) fall steeply from the spine outwards, never rise; an image whose steep ribs rise as they
  run out is upside down.

Each check speaks only when its evidence is in view (the whole outline of the body for the first; steeply
running ribs for the second) and clear; a neck or lumbar CT stored upside down, or a left-right swap (the
spine is symmetric), is not detected.
"""

import numpy as np
from scipy import ndimage

from .anchors import Rib
from .bodies import BodyChain

#: Outside the body below this HU (air); lungs and bowel gas inside the outline are filled in.
AIR_HU: float = -500.0
#: A spine whose bodies sit less than this fraction of the way from the front skin to the back skin (median
#: over the bodies whose whole outline is in view) is in the front half: the image is reversed. Real chest
#: and abdomen CTs: 0.61-0.65; the same reversed: 0.37-0.39.
FRONT_HALF: float = 0.45
#: At least this many bodies with the whole outline in view before judging (generated CTs with a thick
#: table or an odd body outline gave spine depths of 0.35-0.49 on 3 slices).
MIN_OUTLINE_SLICES: int = 5
#: A rib whose outer end (in the band beside the spine) lies this far (mm) above or below its inner end is
#: steep: the lower ribs fall 20-35 mm there on real CTs, the upper ones rarely more than 12 mm either way.
STEEP_RIB_MM: float = 18.0
#: Only long ribs count for the rib check: the first ribs are short there and may rise before they turn forward.
LONG_RIB_MM: float = 70.0
#: The depth check needs a trunk: in the neck the spine sits near the middle (40-55 %).
MIN_TRUNK_WIDTH_MM: float = 200.0


def spine_depth_in_body(hu: np.ndarray, chain: BodyChain, spacing: float) -> list[float]:
    """Per body whose axial slice shows the whole outline of a trunk (not a neck) front to back: how far
    (0 = front skin, 1 = back skin) its centre lies."""
    out = []
    for body in chain.bodies:
        k, j, i = (int(round(float(x))) for x in body.position)
        if not (0 <= k < hu.shape[0] and 0 <= j < hu.shape[1] and 0 <= i < hu.shape[2]):
            continue
        inside = ndimage.binary_fill_holes(hu[k] > AIR_HU)
        row = inside[j, :]
        if row.sum() * spacing < MIN_TRUNK_WIDTH_MM:
            continue
        line = inside[:, i]
        if not line[j] or line[0] or line[-1]:  # the spine off the body, or the outline cut by the image edge
            continue
        front = j - int(np.argmin(line[: j + 1][::-1])) + 1
        back = j + int(np.argmin(line[j:])) - 1
        if back > front:
            out.append((j - front) / (back - front))
    return out


def orientation_problems(hu: np.ndarray, spacing: float, chain: BodyChain, ribs: list[Rib]) -> list[str]:
    """Messages for what the spine contradicts in the image's orientation (empty when nothing does)."""
    problems = []
    depth = spine_depth_in_body(hu, chain, spacing)
    if len(depth) >= MIN_OUTLINE_SLICES and float(np.median(depth)) < FRONT_HALF:
        problems.append(
            f"The spine lies in the front half of the body ({100 * float(np.median(depth)):.0f} % of the way from "
            "the front skin to the back skin; it is always in the back half): the image is probably stored "
            "front-to-back reversed (a wrong header). Check its orientation; nothing was labeled.")
    steep = [r.descent_mm for r in ribs if abs(r.descent_mm) >= STEEP_RIB_MM and r.reach_mm >= LONG_RIB_MM]
    rising = sum(d < 0 for d in steep)
    if len(steep) >= 2 and rising >= 0.75 * len(steep):
        problems.append(
            f"{rising} of the {len(steep)} steeply running ribs rise from the spine outwards (ribs fall): the image "
            "is probably stored upside down (a wrong header). Check its orientation; nothing was labeled.")
    return problems
