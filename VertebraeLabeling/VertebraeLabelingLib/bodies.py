"""Every vertebral body along the spine, named or not: the chain the naming step counts along.

The network places points on real vertebral bodies but its names drift in the thoracic spine, and where it is
unsure it leaves bodies out. A radiologist counts bodies instead, so we first find them all, ignoring names:

1. a smooth spine curve through the network's candidate points of every label (names ignored), weighted by
   confidence;
2. the mean HU in a 6 mm disc around the curve, slice by slice: it dips at every intervertebral disc
   (the method of the by-eye reference of the plain chest CT, ``benchmarks/disc_profile.py``);
3. the dips are many (a dark cancellous body centre between bright endplates dips too), so a dynamic
   programme keeps the sequence of dips whose spacing best matches the typical spacing of the levels the
   network sees there (a wrong level costs little: neighbouring levels differ by a millimetre or two) and
   bridges one missed disc where two spacings fit better than one;
4. a body lies between two consecutive discs; the partly seen bodies above the first and below the last
   disc are kept when the network has a point there.

Where the network's own result reads as one plausible spine (:func:`network_is_self_consistent`: consecutive
names, sure, typically spaced; the rule on generated CTs) its points are the bodies instead
(:func:`chain_from_network`): the profile is fooled by bodies darker in the middle than at their endplates
(osteoporotic bone, and the generator's CTs), the network's places are not.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter1d, map_coordinates
from scipy.signal import find_peaks

from .vertebrae import NUM_VERTEBRAE, TYPICAL_SPACING_MM, expected_distance_mm

#: Radius (mm) of the axial disc around the spine curve whose mean HU makes the disc profile.
PROFILE_RADIUS_MM: float = 6.0
#: Candidate points below this confidence do not shape the spine curve.
CURVE_MIN_CONFIDENCE: float = 0.1
#: Weight of a spacing that differs from the typical one, per (log ratio)²: a spacing of half the typical
#: one costs 0.48 × this, more than a dip's reward (at most 2), so a dip inside a body is left out.
SPACING_WEIGHT: float = 8.0
#: Extra cost of bridging one missed disc (the gap then holds two bodies).
MISSED_DISC_COST: float = 1.5
#: Every point of a self-consistent network result is at least this sure (:func:`network_is_self_consistent`).
SELF_CONSISTENT_CONFIDENCE: float = 0.5
#: A point below this confidence may be left out (one at most) to make the network's result self-consistent.
OUTLIER_CONFIDENCE: float = 0.8
#: Steps from these labels (C1 -> C2, S1 -> S2) are left out of the self-consistency check.
UNEVEN_STEP_LABELS: tuple[int, ...] = (0, 24)



@dataclass
class Body:
    """One vertebral body of the chain.

    Attributes:
        position: (k, j, i) canonical voxel index of the body centre (half-way between its discs, on the curve).
        top, bottom: k of the discs above and below (or of the volume's edge for a partly seen body).
        partial: the body is cut by the first or last disc found (its other end is not seen).
        bridged: one of its discs was not seen in the profile and was put half-way (a missed disc).
    """

    position: np.ndarray
    top: float
    bottom: float
    partial: bool = False
    bridged: bool = False


@dataclass
class BodyChain:
    """The bodies found along the spine, head to feet, and what they were found from (for pictures and tests)."""

    bodies: list[Body] = field(default_factory=list)
    discs: list[float] = field(default_factory=list)
    curve_k: Optional[np.ndarray] = None
    curve_j: Optional[np.ndarray] = None
    curve_i: Optional[np.ndarray] = None
    profile: Optional[np.ndarray] = None

    def curve_at(self, k: float) -> tuple[float, float]:
        """(j, i) of the spine curve at slice ``k`` (held constant beyond its ends)."""
        return (float(np.interp(k, self.curve_k, self.curve_j)), float(np.interp(k, self.curve_k, self.curve_i)))

    def body_at(self, k: float) -> Optional[int]:
        """Index of the body whose discs enclose slice ``k``, or None."""
        for n, b in enumerate(self.bodies):
            if b.top <= k <= b.bottom:
                return n
        return None


def spine_curve(points: np.ndarray, weights: np.ndarray, k_range: tuple[float, float], spacing: float,
                window_mm: float = 40.0, outlier_mm: float = 15.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth (j(k), i(k)) through weighted points: a weighted local-linear fit every slice.

    A polynomial cannot follow a whole spine's lordosis, kyphosis and lordosis; a Gaussian-weighted local
    line (``window_mm`` wide) can. Stray points (a vote in the contrast-filled aorta of a CT angiogram) are
    first found against a local weighted median, which they cannot move while they are outweighed, and
    points more than ``outlier_mm`` in-plane from it are left out.
    """
    ks = np.arange(np.floor(k_range[0]), np.ceil(k_range[1]) + 1.0)
    sigma = window_mm / spacing / 2.0
    # Pass 1: local weighted medians, then down-weight points far from them (Tukey's biweight).
    med = np.empty((len(points), 2))
    for n, k in enumerate(points[:, 0]):
        w = weights * np.exp(-0.5 * ((points[:, 0] - k) / (0.75 * sigma)) ** 2)
        for axis in (1, 2):
            order = np.argsort(points[:, axis])
            cw = np.cumsum(w[order])
            med[n, axis - 1] = points[order[np.searchsorted(cw, 0.5 * cw[-1])], axis]
    residual = np.linalg.norm(points[:, 1:] - med, axis=1) * spacing
    weights = weights * np.clip(1.0 - (residual / outlier_mm) ** 2, 0.0, None) ** 2
    # Pass 2: local lines through the kept points.
    js, is_ = np.empty_like(ks), np.empty_like(ks)
    for n, k in enumerate(ks):
        w = weights * np.exp(-0.5 * ((points[:, 0] - k) / sigma) ** 2)
        if w.sum() < 1e-6:  # beyond the points: hold the nearest kept one
            kept = np.flatnonzero(weights > 0) if np.any(weights > 0) else np.arange(len(points))
            nearest = kept[int(np.argmin(np.abs(points[kept, 0] - k)))]
            js[n], is_[n] = points[nearest, 1], points[nearest, 2]
            continue
        dk = points[:, 0] - k
        a = np.stack([np.ones_like(dk), dk], 1) * np.sqrt(w)[:, None]
        for axis, out in ((1, js), (2, is_)):
            out[n] = np.linalg.lstsq(a, points[:, axis] * np.sqrt(w), rcond=None)[0][0]
    return ks, js, is_


def disc_profile(hu: np.ndarray, ks: np.ndarray, js: np.ndarray, is_: np.ndarray, spacing: float,
                 radius_mm: float = PROFILE_RADIUS_MM) -> np.ndarray:
    """Mean HU in an axial disc of ``radius_mm`` around the curve at every slice, lightly smoothed."""
    r = radius_mm / spacing
    grid = np.mgrid[-r:r + 1e-6:0.5 * r, -r:r + 1e-6:0.5 * r].reshape(2, -1)
    grid = grid[:, (grid ** 2).sum(0) <= r * r + 1e-6]
    kk = np.repeat(ks, grid.shape[1])
    jj = (js[:, None] + grid[0][None, :]).ravel()
    ii = (is_[:, None] + grid[1][None, :]).ravel()
    values = map_coordinates(hu, [kk, jj, ii], order=1, mode="nearest").reshape(len(ks), -1).mean(1)
    return gaussian_filter1d(values, 1.0)


def expected_spacing(k: float, points: np.ndarray, labels: np.ndarray, weights: np.ndarray, spacing: float) -> float:
    """Typical centre-to-centre spacing (voxels) at slice ``k``, for the level the network puts nearest to it."""
    w = weights * np.exp(-0.5 * ((points[:, 0] - k) / (30.0 / spacing)) ** 2)
    label = float((w * labels).sum() / w.sum()) if w.sum() > 1e-9 else float(np.average(labels, weights=weights))
    table = np.asarray(TYPICAL_SPACING_MM[:NUM_VERTEBRAE - 1])
    return float(np.interp(label, np.arange(len(table)), table)) / spacing


def choose_discs(dips: np.ndarray, strength: np.ndarray, expected: np.ndarray) -> list[tuple[float, bool]]:
    """The chain of dips whose spacings fit the expected ones best (dynamic programme over the dips).

    Returns (k, bridged) per disc, head to feet; ``bridged`` marks a disc put half-way across a gap where one
    disc was missed. Each dip kept earns its strength (prominence relative to the median, at most 2); each
    spacing costs ``SPACING_WEIGHT × log(spacing / expected)²``.
    """
    n = len(dips)
    if n == 0:
        return []
    score = strength.astype(float).copy()
    prev = np.full(n, -1)
    bridge = np.zeros(n, dtype=bool)
    for b in range(n):
        for a in range(b):
            gap = dips[b] - dips[a]
            exp_ab = 0.5 * (expected[a] + expected[b])
            plain = SPACING_WEIGHT * np.log(gap / exp_ab) ** 2
            bridged = SPACING_WEIGHT * np.log(gap / (2 * exp_ab)) ** 2 + MISSED_DISC_COST
            cost, is_bridge = (plain, False) if plain <= bridged else (bridged, True)
            if score[a] + strength[b] - cost > score[b]:
                score[b] = score[a] + strength[b] - cost
                prev[b] = a
                bridge[b] = is_bridge
    chain = [int(np.argmax(score))]
    while prev[chain[-1]] >= 0:
        chain.append(int(prev[chain[-1]]))
    chain = chain[::-1]
    out: list[tuple[float, bool]] = []
    for m, idx in enumerate(chain):
        if m > 0 and bridge[idx]:
            out.append((0.5 * (dips[chain[m - 1]] + dips[idx]), True))
        out.append((float(dips[idx]), False))
    return out


def _chain_on_curve(hu_shape: Sequence[int], spacing: float, points: np.ndarray, weights: np.ndarray,
                    k_first: float, k_last: float) -> BodyChain:
    """An empty chain on the spine curve through ``points``, from ``k_first`` to ``k_last`` and 40 mm beyond,
    so that the outermost bodies' discs, and a rib of the next vertebra (a last rib above the first lumbar
    point), are within it."""
    margin = 40.0 / spacing
    k_lo = max(0.0, float(k_first) - margin)
    k_hi = min(hu_shape[0] - 1.0, float(k_last) + margin)
    ks, js, is_ = spine_curve(points, weights, (k_lo, k_hi), spacing)
    return BodyChain(curve_k=ks, curve_j=js, curve_i=is_)


def find_bodies(hu: np.ndarray, spacing: float, points: np.ndarray, labels: np.ndarray,
                weights: np.ndarray, extra_k: Sequence[float] = ()) -> BodyChain:
    """The chain of vertebral bodies along the spine of a canonical HU volume.

    Args:
        hu: canonical HU volume (k, j, i), ``spacing`` mm isotropic.
        points: (N, 3) the network's candidate positions (canonical voxels), any label.
        labels: (N,) their label indices; only used for the typical spacing at each height.
        weights: (N,) their confidences.
        extra_k: slices with other evidence of a vertebra (a rib meeting the spine) that keep a partly seen
            body at either end of the chain.
    """
    keep = weights >= CURVE_MIN_CONFIDENCE
    points, labels, weights = points[keep], labels[keep], weights[keep]
    if len(points) < 2:
        return BodyChain()
    chain = _chain_on_curve(hu.shape, spacing, points, weights, points[:, 0].min(), points[:, 0].max())
    ks, js, is_ = chain.curve_k, chain.curve_j, chain.curve_i
    if len(ks) < 5:
        return chain
    profile = disc_profile(hu, ks, js, is_, spacing)
    chain.profile = profile
    dips, props = find_peaks(-profile, distance=max(1, int(round(6.0 / spacing))), prominence=5.0)
    dip_k = ks[dips].astype(float)
    prominence = props["prominences"]
    strength = np.minimum(prominence / max(float(np.median(prominence)), 1e-6), 2.0) if len(dips) else prominence
    if len(dip_k) == 0:
        return chain
    expected = np.array([expected_spacing(k, points, labels, weights, spacing) for k in dip_k])
    discs = choose_discs(dip_k, strength, expected)
    chain.discs = [k for k, _ in discs]
    bridged = [b for _, b in discs]

    def body(top: float, bottom: float, partial: bool, was_bridged: bool) -> Body:
        k = 0.5 * (top + bottom)
        j, i = chain.curve_at(k)
        return Body(np.array([k, j, i]), top, bottom, partial, was_bridged)

    # Partly seen end bodies: kept where a network point or a rib lies beyond the outermost disc.
    evidence = np.concatenate([points[:, 0], np.asarray(extra_k, dtype=float)])
    if chain.discs:
        first, last = chain.discs[0], chain.discs[-1]
        span_top = expected_spacing(first, points, labels, weights, spacing)
        if np.any((evidence < first - 0.25 * span_top) & (evidence > first - 1.5 * span_top)):
            chain.bodies.append(body(max(first - span_top, 0.0), first, True, False))
        for a in range(len(chain.discs) - 1):
            chain.bodies.append(body(chain.discs[a], chain.discs[a + 1], False, bridged[a] or bridged[a + 1]))
        span_bottom = expected_spacing(last, points, labels, weights, spacing)
        if np.any((evidence > last + 0.25 * span_bottom) & (evidence < last + 1.5 * span_bottom)):
            chain.bodies.append(body(last, min(last + span_bottom, hu.shape[0] - 1.0), True, False))
    return chain


def chain_from_candidates(hu: np.ndarray, spacing: float, candidates: Sequence,
                          extra_k: Sequence[float] = ()) -> BodyChain:
    """:func:`find_bodies` on aggregation candidates (objects with ``position``, ``label``, ``confidence``)."""
    if not candidates:
        return BodyChain()
    points = np.array([c.position for c in candidates], dtype=float)
    labels = np.array([c.label for c in candidates], dtype=float)
    weights = np.array([c.confidence for c in candidates], dtype=float)
    return find_bodies(hu, spacing, points, labels, weights, extra_k)


def network_is_self_consistent(chosen: Sequence, spacing: float) -> bool:
    """Whether the network's own result reads as one plausible spine: at least three points, every point
    fairly sure, and the steps between them (a step over a missing level counted as two) the typical ones
    for their levels, scaled to the patient (each within 35 % of the median step, the median within
    0.75-1.3 of the typical). On the generated CTs it was trained on this is the rule; on real chest CTs
    whose names drift it is not (unsure points, points a level and a half apart)."""
    pts = sorted(chosen, key=lambda c: c.label)
    if len(pts) < 3 or any(c.confidence < SELF_CONSISTENT_CONFIDENCE for c in pts):
        return False
    # C1 has no body and S1-S2 are fused: their centres are not a body's step apart.
    ratios = np.array([abs(b.position[0] - a.position[0]) * spacing / expected_distance_mm(a.label, b.label)
                       for a, b in zip(pts, pts[1:]) if a.label not in UNEVEN_STEP_LABELS])
    if len(ratios) < 2:
        return False
    scale = float(np.median(ratios))
    return 0.75 <= scale <= 1.3 and bool(np.all(np.abs(ratios / scale - 1.0) <= 0.35))


def self_consistent_points(chosen: Sequence, spacing: float) -> Optional[list]:
    """The network's points if they read as one plausible spine (:func:`network_is_self_consistent`), or
    without the one unsure point (below ``OUTLIER_CONFIDENCE``) that alone breaks it (that level is then
    put in between its neighbours); None otherwise."""
    if network_is_self_consistent(chosen, spacing):
        return list(chosen)
    unsure = sorted((c for c in chosen if c.confidence < OUTLIER_CONFIDENCE), key=lambda c: c.confidence)
    for drop in unsure:
        rest = [c for c in chosen if c is not drop]
        if network_is_self_consistent(rest, spacing):
            return rest
    return None


def chain_from_network(hu_shape: Sequence[int], spacing: float, candidates: Sequence, chosen: Sequence,
                       extra_k: Sequence[float] = ()) -> BodyChain:
    """The chain of bodies at the network's own points (for a self-consistent result), with a body put in
    for each level it left out between two of them, on the spine curve through all its candidates; a partly
    seen body is added beyond either end where a rib meets the spine there (``extra_k``)."""
    points = np.array([c.position for c in candidates], dtype=float)
    weights = np.array([c.confidence for c in candidates], dtype=float)
    keep = weights >= CURVE_MIN_CONFIDENCE
    pts = sorted(chosen, key=lambda c: c.label)
    centres = []
    for a, b in zip(pts, pts[1:]):  # a level the network left out lies in between, by the typical steps
        centres.append(float(a.position[0]))
        for missing in range(a.label + 1, b.label):
            share = expected_distance_mm(a.label, missing) / expected_distance_mm(a.label, b.label)
            centres.append(float(a.position[0] + share * (b.position[0] - a.position[0])))
    centres.append(float(pts[-1].position[0]))
    chain = _chain_on_curve(hu_shape, spacing, points[keep], weights[keep], min(centres), max(centres))
    step_top = centres[1] - centres[0]
    step_bottom = centres[-1] - centres[-2]
    extra = np.asarray(extra_k, dtype=float)
    if np.any((extra < centres[0] - 0.5 * step_top) & (extra > centres[0] - 1.5 * step_top)):
        centres.insert(0, centres[0] - step_top)
        step_top = None
    if np.any((extra > centres[-1] + 0.5 * step_bottom) & (extra < centres[-1] + 1.5 * step_bottom)):
        centres.append(centres[-1] + step_bottom)
        step_bottom = None
    edges = [centres[0] - 0.5 * (centres[1] - centres[0])]
    edges += [0.5 * (a + b) for a, b in zip(centres, centres[1:])]
    edges += [centres[-1] + 0.5 * (centres[-1] - centres[-2])]
    for n, k in enumerate(centres):
        j, i = chain.curve_at(k)
        partial = (n == 0 and step_top is None) or (n == len(centres) - 1 and step_bottom is None)
        chain.bodies.append(Body(np.array([k, j, i]), max(edges[n], 0.0), min(edges[n + 1], hu_shape[0] - 1.0),
                                 partial=partial))
    chain.discs = edges[1:-1]
    return chain
