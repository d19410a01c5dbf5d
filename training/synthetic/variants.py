"""Transitional anatomy: the variants that make counting vertebrae from one end go wrong.

Radiologists (and an anchor-based level counter) name vertebrae by counting rib-bearing vertebrae and by
finding the first and last rib pair, the sacrum and C2. These variants break one anchor each:

=================  ======================================================================  ==================
variant            anatomy                                                                 default prevalence
=================  ======================================================================  ==================
``11_ribs``        T12 carries no ribs (11 rib pairs)                                      3 % (main stream)
``13_ribs``        a short lumbar rib pair on L1 (13 rib pairs, 12 thoracic vertebrae)     2.5 %
``cervical_rib``   a short cervical rib on C7, left, right or both                         1 %
``6_lumbar``       six lumbar vertebrae: an extra ``L6`` between L5 and the sacrum         2 % (main stream)
``sacralised_l5``  L5's transverse process(es) fused to the sacral ala, narrow L5-S1       2.5 %
                   disc: 4 free lumbar vertebrae
``13_thoracic``    an extra rib-bearing ``T13`` between T12 and L1 (13 rib pairs)          2 % (main stream)
=================  ======================================================================  ==================

Names always count from C1 down (C1..C7, T1..T12, L1..L5, S1, S2): a lumbar rib does not make L1 a T13, a
sacralised L5 is still L5, and after an ``L6`` the sacrum is still S1. ``L6`` and ``T13`` have no name among
the 26 network channels and stay out of the ground-truth centroids (their centres are in the case's meta).

The three older variants (``11_ribs``, ``6_lumbar``, ``13_thoracic``) are drawn from the case's main random
stream, as they always were. The newer ones are drawn, and their bones shaped, from a separate stream
(``numpy.random.default_rng([seed, 7])``) and only when no older variant was drawn, so every case without a
variant is exactly the case it was before they existed. Their bones are painted last, on a copy of the
canvas, and rendered as an overlay (:class:`BoneOverlay`) whose texture also comes from the variant stream:
forcing a lumbar or a cervical rib on a seed gives the very same CT plus the rib (a paired comparison),
while a sacralised L5's narrow disc moves the sacrum and the pelvis up a few mm.
"""

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import tissues as T
from .anatomy import Spine
from .canvas import BONE_RIB, Canvas
from .skeleton import rib_points

#: canonical variant names (``none`` forces a case without any variant)
VARIANTS = ("none", "11_ribs", "13_ribs", "cervical_rib", "6_lumbar", "sacralised_l5", "13_thoracic")
SIDES = ("left", "right", "both")
#: variants that may take a side suffix (``cervical_rib_left``)
_SIDED = ("cervical_rib", "sacralised_l5")
_ALIASES = {
    "none": "none", "normal": "none",
    "11ribs": "11_ribs", "elevenribs": "11_ribs",
    "13ribs": "13_ribs", "lumbarrib": "13_ribs", "lumbarribs": "13_ribs",
    "cervicalrib": "cervical_rib", "cervicalribs": "cervical_rib",
    "6lumbar": "6_lumbar", "sixlumbar": "6_lumbar", "l6": "6_lumbar",
    "sacralisedl5": "sacralised_l5", "sacralizedl5": "sacralised_l5", "4lumbar": "sacralised_l5",
    "13thoracic": "13_thoracic", "t13": "13_thoracic",
}
#: seed-stream key of the variant stream
_STREAM = 7


def parse_variant(text: str) -> tuple[str, Optional[str]]:
    """``(canonical name, side or None)`` of a variant name: ``13ribs`` -> ``("13_ribs", None)``,
    ``cervical_rib_left`` -> ``("cervical_rib", "left")``, ``4_lumbar`` -> ``("sacralised_l5", None)``."""
    key = str(text).strip().lower().replace("-", "_")
    side = None
    for s in SIDES:
        if key.endswith("_" + s):
            key, side = key[: -len(s) - 1], s
            break
    name = _ALIASES.get(key.replace("_", ""))
    if name is None:
        raise ValueError(f"unknown synthetic variant {text!r}; known: {', '.join(VARIANTS)}")
    if side is not None and name not in _SIDED:
        raise ValueError(f"variant {name!r} takes no side (only {', '.join(_SIDED)} do)")
    return name, side


@dataclass
class VariantPlan:
    """The transitional anatomy of one case and the random stream that shapes its extra bones."""

    rng: np.random.Generator
    transitional: Optional[str] = None  # "L6" or "T13" (an extra vertebra)
    eleven_ribs: bool = False
    lumbar_rib: bool = False
    cervical_rib: Optional[str] = None  # "left", "right", "both"
    sacralised_l5: Optional[str] = None  # side(s) of the fusion: "left", "right", "both"
    l5_disc_scale: float = 1.0

    @property
    def name(self) -> Optional[str]:
        """Canonical name of the variant (``+``-joined in the rare case of two), None without one."""
        names = []
        if self.transitional == "T13":
            names.append("13_thoracic")
        if self.transitional == "L6":
            names.append("6_lumbar")
        if self.eleven_ribs:
            names.append("11_ribs")
        if self.lumbar_rib:
            names.append("13_ribs")
        if self.cervical_rib:
            names.append("cervical_rib")
        if self.sacralised_l5:
            names.append("sacralised_l5")
        return "+".join(names) or None


def plan_variant(seed: int, transitional: Optional[str], eleven_ribs: bool, forced: Optional[str],
                 lumbar_rib_prob: float, cervical_rib_prob: float, sacralised_l5_prob: float) -> VariantPlan:
    """Decide the case's variant.

    ``transitional`` and ``eleven_ribs`` are the main stream's draws (kept when nothing is forced); the new
    variants come from the variant stream, only for cases without an older one. ``forced`` (a name for
    :func:`parse_variant`) overrides everything: exactly that variant, no other.
    """
    rng = np.random.default_rng([int(seed), _STREAM])
    u = rng.random()  # always drawn first, so the stream's later draws do not depend on the options
    side = None
    if forced is None:
        plan = VariantPlan(rng, transitional, bool(eleven_ribs))
        if transitional is None and not eleven_ribs:
            if u < lumbar_rib_prob:
                plan.lumbar_rib = True
            elif u < lumbar_rib_prob + cervical_rib_prob:
                plan.cervical_rib = "both"
            elif u < lumbar_rib_prob + cervical_rib_prob + sacralised_l5_prob:
                plan.sacralised_l5 = "both"
    else:
        name, side = parse_variant(forced)
        plan = VariantPlan(rng, {"6_lumbar": "L6", "13_thoracic": "T13"}.get(name), name == "11_ribs",
                           lumbar_rib=name == "13_ribs")
        if name == "cervical_rib":
            plan.cervical_rib = "both"
        elif name == "sacralised_l5":
            plan.sacralised_l5 = "both"
    # sides: cervical ribs are bilateral in about half of the people who have one, so is a sacralisation
    r_side = rng.random()
    drawn = "both" if r_side < 0.5 else ("left" if r_side < 0.75 else "right")
    if plan.cervical_rib:
        plan.cervical_rib = side or drawn
    if plan.sacralised_l5:
        plan.sacralised_l5 = side or drawn
        plan.l5_disc_scale = float(rng.uniform(0.15, 0.45))
    return plan


@dataclass
class BoneOverlay:
    """Bone a variant adds to a finished canvas: flat voxel indices and their new occupancies and ids."""

    idx: np.ndarray
    bone: np.ndarray
    cortex: np.ndarray
    bone_id: np.ndarray
    rng: np.random.Generator  # the trabecular texture of the new bone


def paint_variant_bones(cv: Canvas, spine: Spine, plan: VariantPlan, cortical_mm: float,
                        rib_dense: float = 0.45) -> Optional[BoneOverlay]:
    """Paint the newer variants' bones (lumbar rib, cervical rib, sacralised L5's wings) as an overlay.

    Call it after every other bone (and the implants). ``cv``'s bone stays as it is, so rendering draws the
    same random numbers as without the variant; the label map gets the new labels where it had none (a
    sacralised L5's wing is L5 up to the sacral ala, which stays S1).
    """
    if not (plan.lumbar_rib or plan.cervical_rib or plan.sacralised_l5):
        return None
    ov = copy.copy(cv)
    ov.bone, ov.cortex, ov.bone_id, ov.labels = cv.bone.copy(), cv.cortex.copy(), cv.bone_id.copy(), cv.labels.copy()
    paint_variant_ribs(ov, spine, plan, cortical_mm, rib_dense=rib_dense)
    paint_sacralised_l5(ov, spine, plan, cortical_mm)
    metal = cv.tissue == T.METAL
    ov.bone[metal] = 0.0
    ov.cortex[metal] = 0.0
    new_label = (cv.labels == 0) & (ov.labels != 0)
    cv.labels[new_label] = ov.labels[new_label]
    idx = np.flatnonzero((ov.bone != cv.bone) | (ov.cortex != cv.cortex))
    return BoneOverlay(idx, ov.bone.ravel()[idx], ov.cortex.ravel()[idx], ov.bone_id.ravel()[idx], plan.rng)


def _sides(which: str) -> tuple[int, ...]:
    """+1 = patient left (LPS +x), -1 = right."""
    return {"left": (1,), "right": (-1,), "both": (-1, 1)}[which]


def paint_variant_ribs(cv: Canvas, spine: Spine, plan: VariantPlan, cortical_mm: float,
                       rib_dense: float = 0.45) -> None:
    """A short lumbar rib pair on L1 and / or a cervical rib on C7 (shapes from the variant stream)."""
    rng = plan.rng
    if plan.lumbar_rib and spine.has("L1"):
        k = float(rng.uniform(0.9, 1.1))
        span, ap = 90.0 * k * rng.uniform(0.95, 1.05), 75.0 * k * rng.uniform(0.95, 1.05)
        end, drop = float(rng.uniform(58, 70)), float(rng.uniform(8, 20))  # shorter than a 12th rib
        lv = spine.by_name("L1")
        for side in (-1, 1):
            pts = rib_points(lv, side, span, ap, end, drop)
            cv.stamp_tube(pts, np.linspace(4.4, 3.2, len(pts)), cortical_mm, BONE_RIB, dense=rib_dense)
    if plan.cervical_rib and spine.has("C7"):
        k = float(rng.uniform(0.9, 1.1))
        span, ap = 52.0 * k * rng.uniform(0.95, 1.05), 42.0 * k * rng.uniform(0.95, 1.05)
        end, drop = float(rng.uniform(70, 115)), float(rng.uniform(4, 14))
        lv = spine.by_name("C7")
        for side in _sides(plan.cervical_rib):
            pts = rib_points(lv, side, span, ap, end, drop)
            cv.stamp_tube(pts, np.linspace(3.8, 2.8, len(pts)), cortical_mm, BONE_RIB, dense=rib_dense)


def paint_sacralised_l5(cv: Canvas, spine: Spine, plan: VariantPlan, cortical_mm: float) -> None:
    """Broad L5 transverse process(es) reaching down and fusing with the sacral ala (Castellvi type III),
    with L5's label and density (:func:`paint_variant_bones` keeps S1's label where the wing meets the ala,
    so the label maps of L5 and S1 touch beside the spine on the fused side(s))."""
    if not plan.sacralised_l5 or not (spine.has("L5") and spine.has("S1")):
        return
    rng = plan.rng
    l5, s1 = spine.by_name("L5"), spine.by_name("S1")
    cw, pw = l5.canal_w / 2, l5.ped_w
    ac = -(l5.D / 2 + l5.canal_d / 2 + 1.0)
    ala_half = s1.W * 0.5
    ala_c = s1.W / 2 + ala_half * 0.55  # centre of S1's ala (see vertebra_shapes._paint_sacral_segment)
    for side in _sides(plan.sacralised_l5):
        width = float(rng.uniform(0.9, 1.15))
        root = l5.frame.to_world((side * (cw + pw * 0.5), ac + 2.0, 0.15 * l5.H))
        wing = l5.frame.to_world((side * (l5.W / 2 + 14.0 * width), ac + 8.0, -0.15 * l5.H))
        ala = s1.frame.to_world((side * ala_c * 0.9, -s1.D * 0.12, (s1.H * 0.7 + 2.0) * 0.55))
        cv.stamp_tube(np.array([root, wing, ala]), np.array([6.0, 9.5, 9.0]) * width, cortical_mm,
                      l5.label, label=l5.label, dense=0.3)


def variant_meta(spine: Spine, plan: VariantPlan) -> dict:
    """The variant's truth for a test or an anchor-based counter (centres in the spine's LPS mm)."""
    rib_bearing = []
    for lv in spine.levels:
        if lv.ribs or (plan.lumbar_rib and lv.name == "L1") or (plan.cervical_rib and lv.name == "C7"):
            rib_bearing.append(lv.name)
    lumbar = sum(1 for lv in spine.levels if lv.kind == "lumbar") - (1 if plan.sacralised_l5 else 0)
    extra = {n: (spine.by_name(n).frame.origin.tolist() if spine.has(n) else None) for n in ("L6", "T13")}
    return {
        "variant": plan.name,
        "rib_pairs": sum(1 for lv in spine.levels if lv.ribs) + (1 if plan.lumbar_rib else 0),
        "rib_bearing": rib_bearing,
        "lumbar_rib": bool(plan.lumbar_rib),
        "cervical_rib": plan.cervical_rib,
        "lumbar_count": lumbar,
        "sacralised_l5": plan.sacralised_l5,
        "extra_lumbar_centroid_lps": extra["L6"],
        "extra_thoracic_centroid_lps": extra["T13"],
    }
