"""From per-block predictions to one centroid per vertebra, in anatomical order.

The paper clusters each vertebra's per-block coordinates with K-Means. We keep its idea (one
cluster centre per vertebra) but make it robust: votes are weighted by the classifier's
probability, only votes from the block interior count (soft-argmax is biased near the faces),
clusters are found by greedy radius grouping so an outlier block cannot drag the centre, and a
dynamic programme then picks the set of candidates that is in cranio-caudal order with
plausible spacing and the highest total confidence. No label can be duplicated or out of order.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .blocks import Block
from .defaults import DEFAULT_MIN_PROBABILITY
from .vertebrae import NUM_VERTEBRAE, VERTEBRA_NAMES, expected_distance_mm

#: Votes closer than this (mm) belong to the same cluster.
CLUSTER_RADIUS_MM: float = 10.0
#: Soft-argmax positions this close to a block face (voxels) are not trusted, unless that face is the
#: volume's own boundary (see :func:`trusted_vote`).
EDGE_MARGIN_VOXELS: float = 4.0


@dataclass
class BlockPrediction:
    """What the network said about one block, already mapped to the canonical volume.

    Attributes:
        block: the block.
        probabilities: (26,) presence probabilities.
        positions: (26, 3) predicted centroids in canonical voxel indices (k, j, i).
    """

    block: Block
    probabilities: np.ndarray
    positions: np.ndarray


@dataclass
class Candidate:
    """One cluster of votes for one vertebra label."""

    label: int
    position: np.ndarray  # canonical (k, j, i)
    confidence: float
    votes: int = 0


@dataclass
class AggregationResult:
    """The chosen vertebrae (sorted cranio-caudally) and all candidates considered."""

    chosen: list[Candidate]
    candidates: list[Candidate] = field(default_factory=list)
    max_probabilities: dict[str, float] = field(default_factory=dict)


def cluster_votes(
    predictions: Sequence[BlockPrediction],
    spacing: float,
    min_probability: float = DEFAULT_MIN_PROBABILITY,
    volume_shape: Optional[Sequence[int]] = None,
) -> list[Candidate]:
    """Group each label's votes into clusters; each cluster becomes a :class:`Candidate`.

    A candidate's confidence is the mean probability that the blocks which could see it (it lies
    in their interior) gave its label (two blocks saying 0.9 and one saying 0.1 → 0.63), times its
    agreement: the share of those blocks, among the ones sure the vertebra is there, that put it
    here. The probability says *whether* a block holds the vertebra, not *where*: when one block
    places L3 a level too high and two others agree on the true place, both clusters are equally
    "certain", and only agreement tells them apart (100 validation CTs at stride 26: mean error
    1.96 → 1.92 mm, id rate unchanged; the real sample CT's L3: 18.1 → 3.2 mm).
    """
    candidates: list[Candidate] = []
    for label in range(NUM_VERTEBRAE):
        pts, wts, voters = [], [], []
        for n, pred in enumerate(predictions):
            p = float(pred.probabilities[label])
            pos = pred.positions[label]
            if p < min_probability or not trusted_vote(pred.block, pos, volume_shape):
                continue
            pts.append(pos)
            wts.append(p)
            voters.append(n)
        if not pts:
            continue
        pts_a, wts_a = np.asarray(pts, dtype=float), np.asarray(wts, dtype=float)
        radius = CLUSTER_RADIUS_MM / spacing
        for members in _greedy_clusters(pts_a, wts_a, radius):
            centre = _weighted_median(pts_a[members], wts_a[members])
            seers = [n for n, pr in enumerate(predictions) if trusted_vote(pr.block, centre, volume_shape)]
            seen = [float(predictions[n].probabilities[label]) for n in seers]
            confidence = float(np.mean(seen)) if seen else float(wts_a[members].mean())
            # Agreement among the blocks involved: the sure ones that see this place and the ones that
            # voted into the cluster (a vote may come from a block whose interior ends just short of the
            # cluster's centre). A block agrees when its own vote lies within the radius, trusted there
            # or not: a vote a little inside a block face is imprecise, not a disagreement.
            voted_here = {int(voters[m]) for m in members}
            involved = voted_here | {n for n in seers if predictions[n].probabilities[label] >= min_probability}
            agree = voted_here | {n for n in involved
                                  if np.linalg.norm(predictions[n].positions[label] - centre) <= radius}
            confidence *= len(agree) / len(involved)
            candidates.append(Candidate(label, centre, confidence, votes=len(members)))
    return candidates


def trusted_vote(block: Block, pos: np.ndarray, volume_shape: Optional[Sequence[int]] = None) -> bool:
    """Whether ``block`` can vote for a vertebra at ``pos`` (canonical voxels).

    Near a block face that lies inside the volume the soft-argmax is pulled inwards, and a neighbouring
    block sees the same place from its interior, so those votes are left out. A face on the volume's
    boundary is different: no block sees past it, and the network was trained on crops whose faces cut
    vertebrae. Excluding votes there dropped every vertebra whose centre lies within 8 mm of the top or
    bottom slice (15 of the 23 vertebrae missed on 40 validation cases). Without ``volume_shape`` every
    face is treated as interior.
    """
    pos = np.asarray(pos, dtype=float)
    rel = pos - np.asarray(block.start)
    size = np.asarray(block.shape)
    low = np.full(3, EDGE_MARGIN_VOXELS)
    high = np.full(3, EDGE_MARGIN_VOXELS)
    if volume_shape is not None:
        shape = np.asarray(volume_shape)
        if not (np.all(pos >= -0.5) and np.all(pos <= shape - 0.5)):
            return False
        low[np.asarray(block.start) <= 0] = -0.5
        high[np.asarray(block.start) + size >= shape] = -0.5
    return bool(np.all(rel >= low) and np.all(rel <= size - 1 - high))


def _greedy_clusters(points: np.ndarray, weights: np.ndarray, radius: float) -> list[np.ndarray]:
    """Clusters of points within ``radius`` of the heaviest remaining point, repeated until none is left."""
    remaining = np.arange(len(points))
    clusters = []
    while remaining.size:
        seed = remaining[np.argmax(weights[remaining])]
        close = remaining[np.linalg.norm(points[remaining] - points[seed], axis=1) <= radius]
        # Re-centre once on the members' weighted median so the seed's own error doesn't decide membership.
        centre = _weighted_median(points[close], weights[close])
        close = remaining[np.linalg.norm(points[remaining] - centre, axis=1) <= radius]
        if close.size == 0:
            close = np.array([seed])
        clusters.append(close)
        remaining = np.setdiff1d(remaining, close)
    return clusters


def _weighted_median(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-axis weighted median: resistant to a minority of stray votes, unlike the mean."""
    out = np.empty(points.shape[1])
    for axis in range(points.shape[1]):
        order = np.argsort(points[:, axis])
        cw = np.cumsum(weights[order])
        out[axis] = points[order[np.searchsorted(cw, 0.5 * cw[-1])], axis]
    if len(points) >= 3:
        return out
    return (points * weights[:, None]).sum(0) / weights.sum()


def enforce_anatomical_order(
    candidates: Sequence[Candidate],
    spacing: float,
    min_ratio: float = 0.5,
    max_ratio: float = 1.8,
) -> list[Candidate]:
    """Choose the best chain of candidates that is ordered and plausibly spaced.

    Candidates are sorted cranio-caudally (canonical axis 0). A chain may use candidate b after a
    only if b's label is larger, b lies lower, and their distance is between ``min_ratio`` and
    ``max_ratio`` times the typical distance for that label gap (gaps allowed: a vertebra can be
    missed). The chain with the largest summed confidence wins (weighted longest increasing
    subsequence, O(n²)).
    """
    cands = sorted(candidates, key=lambda c: (c.position[0], c.label))
    n = len(cands)
    if n == 0:
        return []
    score = np.array([c.confidence for c in cands], dtype=float)
    prev = np.full(n, -1)
    for b in range(n):
        for a in range(b):
            ca, cb = cands[a], cands[b]
            if cb.label <= ca.label or cb.position[0] <= ca.position[0]:
                continue
            dist = float(np.linalg.norm((cb.position - ca.position) * spacing))
            expected = expected_distance_mm(ca.label, cb.label)
            if not (min_ratio * expected <= dist <= max_ratio * expected):
                continue
            if score[a] + cands[b].confidence > score[b]:
                score[b] = score[a] + cands[b].confidence
                prev[b] = a
    chain = [int(np.argmax(score))]
    while prev[chain[-1]] >= 0:
        chain.append(int(prev[chain[-1]]))
    return [cands[i] for i in reversed(chain)]


def aggregate(
    predictions: Sequence[BlockPrediction],
    spacing: float,
    min_probability: float = DEFAULT_MIN_PROBABILITY,
    volume_shape: Optional[Sequence[int]] = None,
) -> AggregationResult:
    """Cluster the votes and enforce the anatomical order; see the module docstring."""
    candidates = cluster_votes(predictions, spacing, min_probability, volume_shape)
    chosen = enforce_anatomical_order(candidates, spacing)
    max_probs = {}
    for label, name in enumerate(VERTEBRA_NAMES):
        vals = [float(p.probabilities[label]) for p in predictions]
        max_probs[name] = max(vals) if vals else 0.0
    return AggregationResult(chosen=chosen, candidates=candidates, max_probabilities=max_probs)
