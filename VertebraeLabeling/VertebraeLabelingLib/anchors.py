"""Anatomical anchors a radiologist counts from: the ribs (T1 carries the first pair, T12 the last).

A rib leaves the spine at its own vertebra (the head at the body, the neck along the transverse process) and
runs out sideways and back before it turns forward. In a band beside the spine (20–80 mm from the spine
curve, from the front of the body to well behind the canal) each rib is a separate bony bar that starts next
to the vertebra and reaches far out; a lumbar transverse process also starts there but ends within about
55 mm; the scapula does not reach in to the spine; the ilium does, but as a plate many centimetres tall. So a
rib is a connected piece of bone (> 200 HU) in that band that comes within 32 mm of the curve, reaches at
least 60 mm from it and is no taller than a few vertebrae; its level is where it meets the spine (the mean
slice of its innermost 12 mm). Left and right ribs at one level make a pair, and the pairs are aligned, in
order, to the bodies (:func:`match_levels_to_bodies`).

Next to the spine, other bone or bright tissue can join several ribs into one tall piece: bridging
osteophytes along the side of the thoracic spine (common in older patients, mostly on the right), a calcified
aorta, contrast in the aorta or the azygos vein. Further out the ribs part again, so a piece too tall to be one
rib is judged again beyond ``RIB_SPLIT_MM`` from the curve, where each of its ribs stands alone.

Each body then gets, per side, "rib", "no rib" or "not seen" (the band is outside the image on that side).
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from .bodies import BodyChain

RIB_BONE_HU: float = 200.0
#: The band beside the spine searched for ribs: distance from the spine curve left-right (mm) ...
BAND_LATERAL_MM: tuple[float, float] = (20.0, 80.0)
#: ... and front-to-back (mm, + = behind the body centre).
BAND_AP_MM: tuple[float, float] = (-15.0, 60.0)
#: A rib comes this close to the spine curve (mm) ...
RIB_MEDIAL_MM: float = 32.0
#: ... and reaches at least this far from it (a lumbar transverse process ends within about 55 mm).
RIB_LATERAL_MM: float = 60.0
#: Bone taller than this (mm) inside the band is a plate (ilium, scapula), not a rib.
RIB_MAX_HEIGHT_MM: float = 70.0
#: A piece too tall to be one rib is split where ribs are apart again: its part beyond this distance (mm)
#: from the spine curve, each piece of which is a rib if it starts at that distance and reaches out as a rib
#: does.
RIB_SPLIT_MM: float = 30.0

#: How far (mm) a rib may fall between the spine and the band's outer edge: the lower ribs fall 20-35 mm.
#: A body closer than this to the image's lower edge cannot show that it has no rib.
RIB_FALL_MM: float = 40.0
#: Aligning rib levels to bodies: a body passed over between two rib levels (a rib pair not found) ...
LEVEL_GAP_COST: float = 0.5
#: ... and a rib level left out (a bony bar that is not a rib, or a second level on one body).
LEVEL_DROP_COST: float = 1.0

#: A left and a right rib closer than this many vertebra heights are one pair (the sides of a tilted or
#: scoliotic spine meet their ribs at different heights; ribs of one side are a vertebra apart).
PAIR_GAP: float = 0.6

SIDES = ("right", "left")


@dataclass
class Rib:
    """One rib found beside the spine: its side, the slice where it meets the spine, and its body (or None)."""

    side: str
    k: float
    body: Optional[int]
    reach_mm: float
    descent_mm: float = 0.0  # how far its outer end lies below its inner end (ribs run down as they run out)


@dataclass
class RibSurvey:
    """Ribs per body: ``state[b][side]`` is "rib", "none" or "unseen"."""

    ribs: list[Rib] = field(default_factory=list)
    state: list[dict[str, str]] = field(default_factory=list)

    def bearing(self, b: int) -> Optional[bool]:
        """True: a rib on at least one side; False: no rib on a side that was seen; None: neither side seen."""
        s = self.state[b]
        if "rib" in s.values():
            return True
        if "none" in s.values():
            return False
        return None

    def sides_with_ribs(self, b: int) -> int:
        return sum(v == "rib" for v in self.state[b].values())


def find_ribs(hu: np.ndarray, spacing: float, chain: BodyChain) -> list[Rib]:
    """Ribs beside the spine curve of ``chain`` in a canonical HU volume (not yet assigned to bodies)."""
    ribs: list[Rib] = []
    if chain.curve_k is None:
        return ribs
    k_lo, k_hi = int(chain.curve_k[0]), int(chain.curve_k[-1])
    sub = hu[k_lo:k_hi + 1]
    ks = np.arange(k_lo, k_hi + 1)
    jc = np.interp(ks, chain.curve_k, chain.curve_j)
    ic = np.interp(ks, chain.curve_k, chain.curve_i)
    lateral = (np.arange(hu.shape[2])[None, :] - ic[:, None]) * spacing  # (K, I), + = patient's left
    ap = (np.arange(hu.shape[1])[None, :] - jc[:, None]) * spacing       # (K, J), + = posterior
    in_ap = (ap >= BAND_AP_MM[0]) & (ap <= BAND_AP_MM[1])
    in_lat = (np.abs(lateral) >= BAND_LATERAL_MM[0]) & (np.abs(lateral) <= BAND_LATERAL_MM[1])
    mask = (sub > RIB_BONE_HU) & in_ap[:, :, None] & in_lat[:, None, :]
    labels, count = ndimage.label(mask)
    for n, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        kk, jj, ii = np.nonzero(labels[box] == n)
        kk = kk + box[0].start
        jj = jj + box[1].start
        ii = ii + box[2].start
        dist = (ii - ic[kk]) * spacing
        side = "left" if np.median(dist) > 0 else "right"
        dist = np.abs(dist)
        if dist.min() > RIB_MEDIAL_MM or dist.max() < RIB_LATERAL_MM:
            continue
        if _rib_shaped(kk, dist, spacing, RIB_MEDIAL_MM):
            ribs.append(_rib(side, kk + k_lo, dist, spacing))
            continue
        # Too tall for one rib: a plate (the ilium, a scapula lying on the ribs) or ribs joined near the
        # spine; beyond RIB_SPLIT_MM the ribs stand apart, a plate stays a plate.
        outer = dist >= RIB_SPLIT_MM
        part = np.zeros(labels[box].shape, bool)
        part[kk[outer] - box[0].start, jj[outer] - box[1].start, ii[outer] - box[2].start] = True
        pieces, _ = ndimage.label(part)
        for m, pbox in enumerate(ndimage.find_objects(pieces), start=1):
            if pbox is None:
                continue
            pk, _, pi = np.nonzero(pieces[pbox] == m)
            pk = pk + pbox[0].start + box[0].start
            pd = np.abs((pi + pbox[2].start + box[2].start - ic[pk]) * spacing)
            if _rib_shaped(pk, pd, spacing, RIB_SPLIT_MM + spacing):
                ribs.append(_rib(side, pk + k_lo, pd, spacing))
    return sorted(ribs, key=lambda r: r.k)


def _rib_shaped(k: np.ndarray, dist: np.ndarray, spacing: float, medial_mm: float) -> bool:
    """Whether bone with voxel slices ``k`` and distances ``dist`` (mm) from the spine curve is shaped like a
    rib: it comes within ``medial_mm`` of the curve, reaches ``RIB_LATERAL_MM`` out and is not a plate."""
    return dist.min() <= medial_mm and dist.max() >= RIB_LATERAL_MM and np.ptp(k) * spacing <= RIB_MAX_HEIGHT_MM


def _rib(side: str, k: np.ndarray, dist: np.ndarray, spacing: float) -> Rib:
    """A rib from its voxels' slices ``k`` and distances from the spine curve ``dist`` (mm): its level is
    the mean slice of its innermost 12 mm."""
    inner = k[dist <= dist.min() + 12.0]
    outer = k[dist >= dist.max() - 12.0]
    return Rib(side, float(inner.mean()), None, float(dist.max()), float(outer.mean() - inner.mean()) * spacing)


def rib_levels(ribs: list[Rib], spacing_k: float) -> list[list[int]]:
    """The ribs grouped into levels (indices into ``ribs``, sorted by slice): a left and a right rib closer
    than ``PAIR_GAP`` of a vertebra's height (``spacing_k`` slices) are one pair, the closest ones first (a rib between
    two of the other side pairs with the nearer one, not with whichever comes first)."""
    by_gap = sorted((abs(ribs[a].k - ribs[b].k), a, b) for a in range(len(ribs)) for b in range(len(ribs))
                     if ribs[a].side == "right" and ribs[b].side == "left"
                     and abs(ribs[a].k - ribs[b].k) < PAIR_GAP * spacing_k)
    paired: set[int] = set()
    levels: list[list[int]] = []
    for _, a, b in by_gap:
        if a not in paired and b not in paired:
            paired.update((a, b))
            levels.append(sorted((a, b), key=lambda n: ribs[n].k))
    levels += [[n] for n in range(len(ribs)) if n not in paired]
    return sorted(levels, key=lambda lv: float(np.mean([ribs[n].k for n in lv])))


def match_levels_to_bodies(level_k: list[float], chain: BodyChain) -> list[Optional[int]]:
    """The body of each rib level: a monotone alignment of the levels to the bodies (dynamic programme).

    Rib levels and bodies are two regular sequences one vertebra apart; where a rib meets the spine, at the
    disc above its body (ribs 2-9) or at the body itself, differs along the spine and with slice thickness,
    so a rib near a disc is ambiguous on its own. Aligned as a whole (each level to its own body, in order;
    ``(offset / body height)²`` per level, ``LEVEL_GAP_COST`` per body passed over between two levels, a
    level left out for ``LEVEL_DROP_COST``), the sequence decides it.
    """
    n_l, n_b = len(level_k), len(chain.bodies)
    if n_l == 0 or n_b == 0:
        return [None] * n_l
    centre = np.array([b.position[0] for b in chain.bodies])
    height = np.array([max(b.bottom - b.top, 1.0) for b in chain.bodies])
    inf = float("inf")
    # best[l][b]: cost of levels 0..l with level l on body b; drop[l]: best cost with level l left out.
    best = np.full((n_l, n_b), inf)
    back: dict[tuple[int, int], Optional[tuple[int, int]]] = {}
    for lv in range(n_l):
        match = ((level_k[lv] - centre) / height) ** 2
        for b in range(n_b):
            if match[b] > 1.0:  # more than a body's height away: not this body
                continue
            options = [(LEVEL_DROP_COST * lv, None)]  # every earlier level left out
            for pl in range(lv):
                dropped = LEVEL_DROP_COST * (lv - pl - 1)
                for pb in range(b):
                    if best[pl, pb] < inf:
                        options.append((best[pl, pb] + dropped + LEVEL_GAP_COST * (b - pb - 1), (pl, pb)))
            cost, prev = min(options, key=lambda o: o[0])
            best[lv, b] = cost + match[b]
            back[(lv, b)] = prev
    totals = [(best[lv, b] + LEVEL_DROP_COST * (n_l - 1 - lv), lv, b) for lv in range(n_l) for b in range(n_b)
              if best[lv, b] < inf]
    out: list[Optional[int]] = [None] * n_l
    if not totals:
        return out
    _, lv, b = min(totals)
    node: Optional[tuple[int, int]] = (lv, b)
    while node is not None:
        out[node[0]] = node[1]
        node = back[node]
    return out


def survey_ribs(hu_shape: tuple, spacing: float, chain: BodyChain, ribs: list[Rib]) -> RibSurvey:
    """Assign ``ribs`` to the bodies of ``chain`` and record, per body and side, "rib", "none" or "unseen"."""
    survey = RibSurvey(state=[{side: "unseen" for side in SIDES} for _ in chain.bodies])
    if chain.bodies:
        heights = [b.bottom - b.top for b in chain.bodies if not b.partial] or [b.bottom - b.top for b in chain.bodies]
        levels = rib_levels(ribs, float(np.median(heights)))
        bodies_of = match_levels_to_bodies([float(np.mean([ribs[n].k for n in lv])) for lv in levels], chain)
        body_of_rib = {n: b for lv, b in zip(levels, bodies_of) for n in lv}
    else:
        body_of_rib = {}
    for n, rib in enumerate(ribs):
        survey.ribs.append(Rib(rib.side, rib.k, body_of_rib.get(n), rib.reach_mm, rib.descent_mm))
    # Which sides were seen: the band's outer part lies inside the image at the body's level, and far enough
    # below it for a rib that falls as it runs out.
    # A body cut by the image's upper edge (its upper endplate, where a rib head sits, not in the image)
    # cannot show that it has no rib.
    for b, body in enumerate(chain.bodies):
        if body.position[0] - 0.5 * (body.bottom - body.top) < 0:
            continue
        if body.bottom + RIB_FALL_MM / spacing > hu_shape[0] - 1:
            continue
        i_centre = chain.curve_at(float(body.position[0]))[1]
        for side, sign in (("left", 1.0), ("right", -1.0)):
            outer = i_centre + sign * RIB_LATERAL_MM / spacing
            if 0 <= outer <= hu_shape[2] - 1:
                survey.state[b][side] = "none"
    for rib in survey.ribs:
        if rib.body is not None:
            survey.state[rib.body][rib.side] = "rib"
    return survey
