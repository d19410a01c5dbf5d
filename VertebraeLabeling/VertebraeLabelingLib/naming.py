"""One global naming step: consecutive names along the chain of bodies, agreeing best with anchors and network.

Along a chain of bodies with no gaps, naming is one choice: which name the first body gets (the rest follow by
counting). Every choice is scored by

- the network's probabilities: for each body, the highest confidence of a candidate point of that body's
  name inside it; the sacrum (S1) and C2 count ``NETWORK_ANCHOR_WEIGHT`` times, as radiologists count from
  them and the network names them right on real CTs;
- the ribs: a body whose name is thoracic (T1–T12) should carry a rib, one outside should not; each body
  whose rib state was seen adds ``RIB_WEIGHT`` (half for one side seen) when it agrees and takes it away
  when it does not.

The best-scoring choice wins; its share of the scores' softmax is the naming's certainty. Where no anchor is
in view (no first or last rib pair, no sacrum, no C2) the network alone decides, and the caller keeps the
network's own result. The review notes say when the anchors and the count disagree (11 or 13 rib-bearing
vertebrae, a transitional vertebra), and which anchor the names were taken from.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .anchors import RibSurvey, find_ribs, survey_ribs
from .bodies import BodyChain, chain_from_candidates
from .vertebrae import NAME_TO_INDEX, NUM_VERTEBRAE, VERTEBRA_NAMES

T1, T12 = NAME_TO_INDEX["T1"], NAME_TO_INDEX["T12"]
C2, S1 = NAME_TO_INDEX["C2"], NAME_TO_INDEX["S1"]

#: Score of a body whose rib state (seen on both sides) agrees with its name; minus this when it does not.
RIB_WEIGHT: float = 1.5
#: How many times the network's S1 and C2 confidences count: the levels radiologists count from.
NETWORK_ANCHOR_WEIGHT: float = 3.0
#: The network's S1 / C2 is an anchor (named as such in the notes) at this confidence or above.
NETWORK_ANCHOR_MIN: float = 0.7
#: A body named beyond C1..S2 (a coccygeal segment, a body above C1) costs this.
OUTSIDE_LABELS_COST: float = 1.0


@dataclass
class NamedBody:
    """A body of the chain with its name (label index), certainty and how the name was reached."""

    body: int
    label: int
    confidence: float
    basis: str


@dataclass
class Naming:
    """The names of a chain's bodies, the anchors used and the notes for the reader."""

    names: list[NamedBody] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    certainty: float = 0.0


def network_scores(chain: BodyChain, candidates: Sequence, spacing: float, max_offset_mm: float = 25.0) -> np.ndarray:
    """(bodies, 26): per body and label, the highest confidence of a candidate of that label inside the body."""
    scores = np.zeros((len(chain.bodies), NUM_VERTEBRAE))
    for c in candidates:
        b = chain.body_at(float(c.position[0]))
        if b is None:
            continue
        j, i = chain.curve_at(float(c.position[0]))
        if np.hypot(c.position[1] - j, c.position[2] - i) * spacing > max_offset_mm:
            continue
        scores[b, c.label] = max(scores[b, c.label], float(c.confidence))
    return scores


def _rib_term(survey: Optional[RibSurvey], b: int, label: int) -> float:
    if survey is None:
        return 0.0
    bearing = survey.bearing(b)
    if bearing is None:
        return 0.0
    seen = sum(v != "unseen" for v in survey.state[b].values())
    weight = RIB_WEIGHT * (1.0 if seen == 2 else 0.5)
    thoracic = T1 <= label <= T12
    return weight if bearing == thoracic else -weight


def rib_boundaries(survey: Optional[RibSurvey], n: int) -> tuple[Optional[int], Optional[int], list[int]]:
    """(first rib-bearing body with a seen rib-free body above it, last one with a rib-free body below, all
    rib-bearing bodies)."""
    if survey is None:
        return None, None, []
    bearing = [survey.bearing(b) for b in range(n)]
    ribbed = [b for b in range(n) if bearing[b]]
    if not ribbed:
        return None, None, []
    first = ribbed[0] if any(bearing[b] is False for b in range(ribbed[0])) else None
    last = ribbed[-1] if any(bearing[b] is False for b in range(ribbed[-1] + 1, n)) else None
    return first, last, ribbed


def name_chain(chain: BodyChain, candidates: Sequence, spacing: float,
               survey: Optional[RibSurvey] = None) -> Optional[Naming]:
    """Consecutive names for the bodies of ``chain``; None when no anchor is in view (the network decides)."""
    n = len(chain.bodies)
    if n == 0:
        return None
    net = network_scores(chain, candidates, spacing)
    weight = np.ones(NUM_VERTEBRAE)
    weight[[C2, S1]] = NETWORK_ANCHOR_WEIGHT
    first_rib, last_rib, ribbed = rib_boundaries(survey, n)
    net_anchor = {lab: int(np.argmax(net[:, lab])) for lab in (C2, S1) if net[:, lab].max() >= NETWORK_ANCHOR_MIN}
    if first_rib is None and last_rib is None and not net_anchor:
        return None

    starts = np.arange(-(n - 1), NUM_VERTEBRAE)
    scores = np.zeros(len(starts))
    net_only = np.zeros(len(starts))
    for m, s in enumerate(starts):
        for b in range(n):
            label = s + b
            if not 0 <= label < NUM_VERTEBRAE:
                scores[m] -= OUTSIDE_LABELS_COST
                net_only[m] -= OUTSIDE_LABELS_COST
                continue
            scores[m] += weight[label] * net[b, label] + _rib_term(survey, b, label)
            net_only[m] += weight[label] * net[b, label]
    best = int(np.argmax(scores))
    start = int(starts[best])
    p = np.exp(scores - scores.max())
    certainty = float(p[best] / p.sum())
    naming = Naming(certainty=certainty)

    # The anchors in view, each with the body it names and the name it implies for the first body.
    implied: dict[str, tuple[int, int]] = {}
    if first_rib is not None:
        implied["first rib pair"] = (first_rib, T1 - first_rib)
    if last_rib is not None:
        implied["last rib pair"] = (last_rib, T12 - last_rib)
    for lab, b in net_anchor.items():
        implied["the sacrum" if lab == S1 else "C2"] = (b, lab - b)
    for what, (b, s) in implied.items():
        naming.anchors.append(f"{what}: {VERTEBRA_NAMES[b + s] if 0 <= b + s < NUM_VERTEBRAE else '?'} "
                              f"(body {b + 1} of {n})")

    for b in range(n):
        label = start + b
        if not 0 <= label < NUM_VERTEBRAE:
            continue
        agree = max(net[b, label], 1.0 if _rib_term(survey, b, label) > 0 else 0.0)
        naming.names.append(NamedBody(b, label, certainty * (0.5 + 0.5 * agree), _basis(b, label, start, implied)))

    _notes(naming, survey, n, start, implied, ribbed, first_rib, last_rib, int(starts[int(np.argmax(net_only))]))
    return naming


def _basis(b: int, label: int, start: int, implied: dict[str, tuple[int, int]]) -> str:
    """How body ``b``'s name was reached: the nearest anchor that agrees with the chosen count."""
    agreeing = [(abs(b - ab), what, ab) for what, (ab, s) in implied.items() if s == start]
    if not agreeing:
        return "network and count (anchors disagree)"
    _, what, ab = min(agreeing)
    if ab == b:
        return {"first rib pair": "first rib pair", "last rib pair": "last rib pair"}.get(what, what.replace("the ", ""))
    return f"counted from {what}"


def _notes(naming: Naming, survey: Optional[RibSurvey], n: int, start: int, implied: dict[str, tuple[int, int]],
           ribbed: list[int], first_rib: Optional[int], last_rib: Optional[int], net_start: int) -> None:
    name = lambda b: VERTEBRA_NAMES[start + b] if 0 <= start + b < NUM_VERTEBRAE else f"body {b + 1}"  # noqa: E731
    if first_rib is not None and last_rib is not None:
        count = last_rib - first_rib + 1
        if count != 12:
            kind = "T13 or a lumbar rib" if count > 12 else "11 rib pairs or a missed rib"
            naming.notes.append(
                f"{count} rib-bearing vertebrae between the first and the last rib pair ({kind}); named from "
                f"{_chosen_anchor(implied, start)}: check {name(first_rib)}-{name(last_rib)} and the levels below.")
    starts = {s for _, s in implied.values()}
    if len(starts) > 1:
        listed = "; ".join(f"{what} says the first body is {VERTEBRA_NAMES[s] if 0 <= s < NUM_VERTEBRAE else '?'}"
                           for what, (_, s) in implied.items())
        naming.notes.append(f"The anchors disagree ({listed}): possibly transitional anatomy. Named from "
                            f"{_chosen_anchor(implied, start)}; check the names.")
    if net_start != start:
        shift = net_start - start
        naming.notes.append(
            f"The network alone would name these {abs(shift)} level{'s' if abs(shift) > 1 else ''} "
            f"{'lower' if shift > 0 else 'higher'}; the names follow the anatomical anchors.")
    if ribbed and survey is not None and first_rib is None and last_rib is None:
        naming.notes.append("Ribs are in view but neither the first nor the last rib pair: names are counted "
                            "from the network's levels.")


def _chosen_anchor(implied: dict[str, tuple[int, int]], start: int) -> str:
    agreeing = [what for what, (_, s) in implied.items() if s == start]
    return " and ".join(agreeing) if agreeing else "the network"


@dataclass
class AnchoredLabel:
    """A named vertebra as the naming step places it (canonical voxel position)."""

    label: int
    position: np.ndarray
    confidence: float
    basis: str


def anchored_labels(hu: np.ndarray, spacing: float, candidates: Sequence,
                    min_position_confidence: float = 0.3) -> tuple[Optional[list[AnchoredLabel]], Naming, BodyChain]:
    """Find the bodies, the ribs and the names; None for the labels when no anchor is in view.

    Each named body is placed at the network's point of its name inside it (a partly seen end body: or
    within 30 % of its height beyond its guessed discs), else at the surest network point of any name inside it (the network places points on bodies well even where it names them wrong), else
    at the body's centre on the spine curve.
    """
    chain = chain_from_candidates(hu, spacing, candidates)
    ribs = find_ribs(hu, spacing, chain)
    if chain.bodies and any(r.k < chain.bodies[0].top or r.k > chain.bodies[-1].bottom for r in ribs):
        chain = chain_from_candidates(hu, spacing, candidates, extra_k=[r.k for r in ribs])
    survey = survey_ribs(hu.shape, spacing, chain, ribs)
    naming = name_chain(chain, candidates, spacing, survey)
    if naming is None:
        return None, Naming(), chain
    out = []
    for nb in naming.names:
        body = chain.bodies[nb.body]
        # A partly seen end body's discs are guessed: look a little beyond them for the network's point.
        reach = 0.3 * (body.bottom - body.top) if body.partial else 0.0
        near = [c for c in candidates if body.top - reach <= c.position[0] <= body.bottom + reach]
        same = [c for c in near if c.label == nb.label]
        sure = [c for c in near if body.top <= c.position[0] <= body.bottom and c.confidence >= min_position_confidence]
        if same:
            position = max(same, key=lambda c: c.confidence).position
        elif sure:
            position = max(sure, key=lambda c: c.confidence).position
        else:
            position = body.position
        out.append(AnchoredLabel(nb.label, np.asarray(position, dtype=float), nb.confidence, nb.basis))
    return out, naming, chain
