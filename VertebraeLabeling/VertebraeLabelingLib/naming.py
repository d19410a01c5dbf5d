"""One global naming step: names along the chain of bodies that agree best with the anchors and the network.

A radiologist names vertebrae by counting bodies from an anchor. We do the same with a hidden Markov chain
over the bodies found along the spine (:mod:`bodies`), solved exactly (Viterbi, with max-marginals):

- the state of a body is its name; the next body is normally the next name;
- each body's evidence for a name is the network's confidence for that name inside it (S1 and C2 count
  ``NETWORK_ANCHOR_WEIGHT`` times: radiologists count from them and the network names them right on real
  CTs; T2-T11 count ``NETWORK_MID_THORACIC_WEIGHT``: they look alike) plus the ribs: a body named T1–T12 should carry a rib and one named otherwise should not; each body
  whose rib state was seen gains ``RIB_WEIGHT`` (half for one side seen) when it agrees and loses it when not;
- the spacing between consecutive named bodies should be the typical one for their levels (scaled to the
  patient): ``SPACING_WEIGHT × log(spacing / typical)²``;
- the chain of bodies may hold an error: a body split in two by a dip inside it (one of the two is left
  unnamed, ``DROP_COST``) or a body missed (a name skipped, ``SKIP_COST``). Anchors at both ends can then
  each name their side, and the error is put where the evidence is weakest.

The certainty of each name is its share of the max-marginals over all names for that body: high where anchors
and network agree, lower where they pull apart. Where no anchor is in view (no first or last rib pair, no
sacrum, no C2) the network decides alone and the caller keeps the network's own result; where anchors are in
view, :func:`decide_names` replaces the network's names only where the count from a rib pair clearly beats
them and nothing contradicts it. The notes say when the anchors disagree with each other or with the count
(11 or 13 rib-bearing vertebrae, a transitional vertebra), and which anchor the names were taken from.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from .anchors import RibSurvey, find_ribs, survey_ribs
from .bodies import BodyChain, chain_from_candidates, chain_from_network, self_consistent_points
from .spine_orientation import orientation_problems
from .vertebrae import NAME_TO_INDEX, NUM_VERTEBRAE, TYPICAL_SPACING_MM, VERTEBRA_NAMES

T1, T12 = NAME_TO_INDEX["T1"], NAME_TO_INDEX["T12"]
C2, S1 = NAME_TO_INDEX["C2"], NAME_TO_INDEX["S1"]
C7 = NAME_TO_INDEX["C7"]

#: Score of a body whose rib state (seen on both sides) agrees with its name; minus this when it does not.
RIB_WEIGHT: float = 1.5
#: How many times the network's S1 and C2 confidences count: the levels radiologists count from.
NETWORK_ANCHOR_WEIGHT: float = 3.0
#: How much the network's confidence in a name between T2 and T11 counts: those levels look alike (a
#: radiologist does not name T7 by its look, but by counting), and on real chest CTs the network names them a
#: level or more off while sure of it.
NETWORK_MID_THORACIC_WEIGHT: float = 0.3
#: The network's S1 / C2 is an anchor (named as such in the notes) at this confidence or above.
NETWORK_ANCHOR_MIN: float = 0.7
#: Score of naming the body that carries the first rib pair T1 and the one that carries the last pair T12
#: (half for a rib seen on one side only): where an anchor is in view it decides the names near it.
RIB_ANCHOR_WEIGHT: float = 6.0
#: The names change from the network's only when the count from a rib anchor scores at least this much
#: better than the best count that keeps the network's names (a body's worth of sure rib evidence is 1.5;
#: the real chest CTs the count corrects: 7.6-15.8; the wrong corrections on 200 generated hold-out CTs,
#: where the profile of the generator's bodies misleads the chain: 3.9-10.0, the two above 6 driven by the
#: last rib pair with the sacrum in view, which the rule below excludes).
OVERRIDE_MARGIN: float = 6.0
#: A network point this sure, typically spaced from its neighbour of the next level, marks where consecutive
#: vertebrae are (:func:`_chain_contradicts_network`).
SURE_POINT_CONFIDENCE: float = 0.9
#: Cost per (log of spacing / typical spacing)² between consecutive named bodies.
SPACING_WEIGHT: float = 4.0
#: Leaving a body of the chain unnamed (a body split in two by a dip inside it).
DROP_COST: float = 2.0
#: Skipping a name between two bodies (a body the chain missed).
SKIP_COST: float = 2.0
#: Leaving a body at either end of the chain unnamed (beyond C1 or S2: the skull base, the coccyx); as
#: costly as leaving one unnamed inside the chain: the disc finder's end bodies are mostly real vertebrae.
END_COST: float = 2.0
#: Patient scales tried for the typical spacings (the best one is kept).
SCALES: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.2)


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
    anchor_bodies: dict[str, tuple[int, int]] = field(default_factory=dict)
    margin: float = 0.0  # how much better the names score than the best names that keep the network's
    agreeing: list[str] = field(default_factory=list)


#: A network point further than this (mm, in-plane) from the spine curve is not on the body (a vote in the
#: contrast-filled aorta): it neither names nor places a body.
MAX_OFF_CURVE_MM: float = 20.0


def _off_curve_mm(chain: BodyChain, position: np.ndarray, spacing: float) -> float:
    j, i = chain.curve_at(float(position[0]))
    return float(np.hypot(position[1] - j, position[2] - i) * spacing)


def _chain_contradicts_network(chain: BodyChain, chosen: Sequence, spacing: float) -> bool:
    """Whether the chain of bodies puts two of the network's sure, typically spaced consecutive points into
    one body or two bodies apart, at least twice and for at least 30 % of such pairs.

    The network's places are good even where its names drift; a chain that disagrees with them about where
    consecutive vertebrae are has missed or split bodies (the HU profile is fooled by bodies darker in the
    middle than at their endplates), and a count along it cannot be trusted over the network.
    """
    pts = sorted((c for c in chosen if c.confidence >= SURE_POINT_CONFIDENCE), key=lambda c: c.label)
    checked = wrong = 0
    for a, b in zip(pts, pts[1:]):
        ratio = abs(b.position[0] - a.position[0]) * spacing / TYPICAL_SPACING_MM[a.label]
        if b.label - a.label != 1 or not 0.7 <= ratio <= 1.4:
            continue
        ba, bb = chain.body_at(float(a.position[0])), chain.body_at(float(b.position[0]))
        if ba is None or bb is None:
            continue
        checked += 1
        wrong += bb - ba != 1
    return wrong >= 2 and wrong >= 0.3 * checked


def network_names_by_body(chain: BodyChain, chosen: Sequence) -> dict[int, set]:
    """{body: the labels of the network's points inside it}."""
    out: dict[int, set] = {}
    for c in chosen:
        b = chain.body_at(float(c.position[0]))
        if b is not None:
            out.setdefault(b, set()).add(int(c.label))
    return out


def network_scores(chain: BodyChain, candidates: Sequence, spacing: float) -> np.ndarray:
    """(bodies, 26): per body and label, the highest confidence of a candidate of that label inside the body."""
    scores = np.zeros((len(chain.bodies), NUM_VERTEBRAE))
    for c in candidates:
        b = chain.body_at(float(c.position[0]))
        if b is None or _off_curve_mm(chain, c.position, spacing) > MAX_OFF_CURVE_MM:
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


#: The anchors that come from the ribs (independent of the network's names, unlike the sacrum and C2).
RIB_PAIR_ANCHORS: tuple[str, ...] = ("first rib pair", "last rib pair")

#: Of this many vertebrae inwards of a first (last) rib pair, one that was seen must carry a rib too.
RIB_CAGE_BODIES: int = 3


def rib_boundaries(survey: Optional[RibSurvey], n: int) -> tuple[Optional[int], Optional[int], list[int]]:
    """(first rib-bearing body with a seen rib-free body above it, last one with a rib-free body below, all
    rib-bearing bodies).

    The last rib pair is not an anchor when it lies fewer than 12 bodies below the first (:func:`short_rib_span`):
    counting down from the first pair then names 11 true rib pairs right and a missed 12th rib too.
    """
    first, last, ribbed = _rib_boundaries(survey, n)
    if short_rib_span(first, last):
        last = None
    return first, last, ribbed


def short_rib_span(first: Optional[int], last: Optional[int]) -> bool:
    """Whether the first and the last rib pair are fewer than 12 bodies apart (counting both).

    The 12th rib is the shortest and the most variable (often a stub that does not reach out of the spine's
    shadow, sometimes missing), and on a noisy CT it is the one the rib finder misses; the first rib is long
    and constant. Counting down from the first pair is right both where the 12th rib is missed and where
    there are 11 rib pairs; counting up from the last would be a level off in both.
    """
    return first is not None and last is not None and last - first + 1 < 12


def _rib_boundaries(survey: Optional[RibSurvey], n: int) -> tuple[Optional[int], Optional[int], list[int]]:
    if survey is None:
        return None, None, []
    bearing = [survey.bearing(b) for b in range(n)]
    ribbed = [b for b in range(n) if bearing[b]]
    if not ribbed:
        return None, None, []
    first = ribbed[0] if any(bearing[b] is False for b in range(ribbed[0])) else None
    last = ribbed[-1] if any(bearing[b] is False for b in range(ribbed[-1] + 1, n)) else None
    # A rib pair bounds a rib cage: the vertebrae on its inner side carry ribs too. A lone bony bar with
    # rib-free vertebrae seen right below (above) it is not the first (last) rib pair.
    if first is not None and not _cage_continues(bearing, range(first + 1, min(first + 1 + RIB_CAGE_BODIES, n))):
        first = None
    if last is not None and not _cage_continues(bearing, range(last - 1, max(last - 1 - RIB_CAGE_BODIES, -1), -1)):
        last = None
    return first, last, ribbed


def _cage_continues(bearing: list, bodies: range) -> bool:
    """Whether any seen vertebra among ``bodies`` (the next ones inwards) carries a rib (ribs are missed, a
    whole run of rib-free vertebrae is not a rib cage); true where fewer than two were seen (a rib pair at the
    image's edge is not contradicted)."""
    seen = [bearing[b] for b in bodies if bearing[b] is not None]
    return len(seen) < 2 or any(seen)



def emission_scores(net: np.ndarray, survey: Optional[RibSurvey]) -> np.ndarray:
    """(bodies, 26): the evidence of each body for each name (network, ribs, the first and last rib pair)."""
    weight = np.ones(NUM_VERTEBRAE)
    weight[[C2, S1]] = NETWORK_ANCHOR_WEIGHT
    weight[T1 + 1:T12] = NETWORK_MID_THORACIC_WEIGHT
    emit = net * weight[None, :]
    for b in range(net.shape[0]):
        for label in range(NUM_VERTEBRAE):
            emit[b, label] += _rib_term(survey, b, label)
    first, last, _ = rib_boundaries(survey, net.shape[0])
    for b, label in ((first, T1), (last, T12)):
        if b is not None:
            emit[b, label] += RIB_ANCHOR_WEIGHT * (1.0 if survey.sides_with_ribs(b) == 2 else 0.5)
    return emit


_CUMULATIVE_SPACING_MM = np.concatenate([[0.0], np.cumsum(TYPICAL_SPACING_MM)])


def _transition_costs(centres_mm: np.ndarray, scale: float) -> np.ndarray:
    """cost[b, db, l, dl]: from body b named l to body b + db (db 1: next, 2: one left unnamed) named l + dl."""
    n = len(centres_mm)
    cost = np.full((n, 3, NUM_VERTEBRAE, 3), np.inf)
    labels = np.arange(NUM_VERTEBRAE)
    for db in (1, 2):
        if n <= db:
            continue
        dist = np.maximum(np.abs(centres_mm[db:] - centres_mm[:-db]), 1e-3)  # (n - db,)
        for dl in (1, 2):
            ok = labels + dl < NUM_VERTEBRAE
            typical = scale * (_CUMULATIVE_SPACING_MM[labels[ok] + dl] - _CUMULATIVE_SPACING_MM[labels[ok]])
            c = SPACING_WEIGHT * np.log(dist[:, None] / typical[None, :]) ** 2
            cost[: n - db, db, ok, dl] = c + DROP_COST * (db - 1) + SKIP_COST * (dl - 1)
    return cost


def viterbi(emit: np.ndarray, cost: np.ndarray) -> tuple[float, list[tuple[int, int]], np.ndarray]:
    """Best naming of the chain for the transition costs of :func:`_transition_costs`: (score,
    [(body, label)], max-marginals (bodies, 26))."""
    n, m = emit.shape
    start = -END_COST * np.arange(n)          # bodies above the first named one are left unnamed
    end = -END_COST * (n - 1 - np.arange(n))  # and those below the last
    fwd = np.full((n, m), -np.inf)
    arg_b = np.full((n, m), -1)
    arg_l = np.full((n, m), -1)
    for b in range(n):
        best = np.full(m, start[b])
        for db in (1, 2):
            if b - db < 0:
                continue
            for dl in (1, 2):
                v = np.full(m, -np.inf)
                v[dl:] = fwd[b - db, :-dl] - cost[b - db, db, :-dl, dl]
                better = v > best
                best[better] = v[better]
                arg_b[b, better] = b - db
                arg_l[b, better] = np.arange(m)[better] - dl
        fwd[b] = emit[b] + best
    bwd = np.full((n, m), -np.inf)
    for b in range(n - 1, -1, -1):
        best = np.full(m, end[b])
        for db in (1, 2):
            if b + db >= n:
                continue
            for dl in (1, 2):
                v = np.full(m, -np.inf)
                v[:-dl] = bwd[b + db, dl:] + emit[b + db, dl:] - cost[b, db, :-dl, dl]
                best = np.maximum(best, v)
        bwd[b] = best
    total = fwd + end[:, None]
    b, label = (int(x) for x in np.unravel_index(int(np.argmax(total)), total.shape))
    path = [(b, label)]
    while arg_b[b, label] >= 0:
        b, label = int(arg_b[b, label]), int(arg_l[b, label])
        path.append((b, label))
    return float(total.max()), path[::-1], fwd + bwd


def name_chain(chain: BodyChain, candidates: Sequence, spacing: float,
               survey: Optional[RibSurvey] = None, chosen: Sequence = ()) -> Optional[Naming]:
    """Names for the bodies of ``chain``; None when no anchor is in view (then the network decides)."""
    n = len(chain.bodies)
    if n == 0:
        return None
    net = network_scores(chain, candidates, spacing)
    first_rib, found_last, ribbed = _rib_boundaries(survey, n)
    last_rib = None if short_rib_span(first_rib, found_last) else found_last  # as rib_boundaries gives it
    net_anchor = {lab: int(np.argmax(net[:, lab])) for lab in (C2, S1) if net[:, lab].max() >= NETWORK_ANCHOR_MIN}
    if first_rib is None and last_rib is None and not net_anchor:
        return None
    centres_mm = np.array([b.position[0] for b in chain.bodies]) * spacing
    emit = emission_scores(net, survey)
    costs = [_transition_costs(centres_mm, scale) for scale in SCALES]
    score, path, marginals = max((viterbi(emit, cost) for cost in costs), key=lambda r: r[0])
    # The best naming that keeps the network's own names on the bodies it placed a point on: how much better
    # the free naming scores says how strongly the anchors and the count contradict the network.
    kept = emit.copy()
    for b, labels in network_names_by_body(chain, chosen).items():
        others = np.ones(NUM_VERTEBRAE, dtype=bool)
        others[list(labels)] = False
        kept[b, others] = -1e6
    network_score = max(viterbi(kept, cost)[0] for cost in costs) if chosen else score
    _, net_path, _ = max((viterbi(net, cost) for cost in costs), key=lambda r: r[0])
    naming = Naming(margin=max(0.0, score - network_score))
    named = dict(path)

    # The anchors in view: the body each names, and the name it gives that body.
    anchors: dict[str, tuple[int, int]] = {}
    if first_rib is not None:
        anchors["first rib pair"] = (first_rib, T1)
    if last_rib is not None:
        anchors["last rib pair"] = (last_rib, T12)
    for lab, b in net_anchor.items():
        anchors["the sacrum" if lab == S1 else "C2"] = (b, lab)
    for what, (b, lab) in anchors.items():
        naming.anchors.append(f"{what}: {VERTEBRA_NAMES[lab]} at body {b + 1} of {n}")
    naming.anchor_bodies = dict(anchors)
    if short_rib_span(first_rib, found_last):
        naming.notes.append(
            f"The last rib pair found is only {found_last - first_rib + 1} vertebrae below the first (a short 12th "
            "rib not found, or 11 rib pairs): the levels are counted from the first rib pair. Check T11-L1.")
    agreeing = {what: ab for what, (ab, lab) in anchors.items() if named.get(ab) == lab}
    naming.agreeing = list(agreeing)

    share = np.exp(marginals - marginals.max(axis=1, keepdims=True))
    share /= share.sum(axis=1, keepdims=True)
    for b, label in path:
        basis = _basis(b, agreeing)
        if basis is None:
            basis = "network and count" if net[b, label] >= 0.5 else "count"
        naming.names.append(NamedBody(b, label, float(share[b, label]), basis))
    naming.certainty = float(np.mean([nb.confidence for nb in naming.names])) if naming.names else 0.0
    _notes(naming, path, anchors, agreeing, ribbed, first_rib, last_rib, dict(net_path))
    return naming


def _the(anchor: str) -> str:
    """"first rib pair" -> "the first rib pair"; "the sacrum" and "C2" stay as they are."""
    return anchor if anchor.startswith("the ") or anchor == "C2" else f"the {anchor}"


def _basis(b: int, agreeing: dict[str, int]) -> Optional[str]:
    """How body ``b``'s name was reached: the nearest anchor (in bodies) that the names agree with."""
    if not agreeing:
        return None
    dist, what = min((abs(b - ab), what) for what, ab in agreeing.items())
    if dist == 0:
        return what.replace("the ", "")
    return f"counted from {_the(what)}"


def _notes(naming: Naming, path: list[tuple[int, int]], anchors: dict[str, tuple[int, int]],
           agreeing: dict[str, int], ribbed: list[int], first_rib: Optional[int], last_rib: Optional[int],
           net_named: dict[int, int]) -> None:
    named = dict(path)

    def name(b: int) -> str:
        return VERTEBRA_NAMES[named[b]] if b in named else f"the unnamed body {b + 1}"

    chosen = " and ".join(_the(what) for what in agreeing) if agreeing else "the network and the count"
    if first_rib is not None and last_rib is not None:
        count = sum(first_rib <= b <= last_rib for b in ribbed)
        if count != 12:
            kind = "T13 or a lumbar rib" if count > 12 else "11 rib pairs, or a rib not found"
            naming.notes.append(
                f"{count} rib-bearing vertebrae from the first to the last rib pair ({kind}): named from "
                f"{chosen}. Check {name(first_rib)}-{name(last_rib)} and the levels next to them.")
    against = [what for what in anchors if what not in agreeing]
    if against and agreeing:
        listed = ", ".join(f"{_the(what)} ({VERTEBRA_NAMES[anchors[what][1]]} would be {name(anchors[what][0])})"
                           for what in against)
        naming.notes.append(f"The anchors disagree: named from {chosen}, not from {listed}. Possibly "
                            "transitional anatomy (a lumbosacral transitional vertebra, 11 or 13 rib pairs); "
                            "check the names.")
    elif against:
        naming.notes.append(f"No anchor agrees with the names ({', '.join(against)}): check them.")
    shifts = [net_named[b] - label for b, label in path if b in net_named]
    if shifts and agreeing:
        shift = int(np.median(shifts))
        if shift:
            naming.notes.append(
                f"The network alone would name these {abs(shift)} level{'s' if abs(shift) > 1 else ''} "
                f"{'lower' if shift > 0 else 'higher'}; the names follow {chosen}.")
    dropped = [b for b in range(min(named), max(named) + 1) if b not in named] if named else []
    if dropped:
        naming.notes.append("The count passes over a body found between named ones (a vertebra split in two "
                            "by the disc finder, or a fused segment): check " +
                            ", ".join(f"{name(b - 1)}-{name(b + 1)}" for b in dropped if b - 1 in named
                                      and b + 1 in named) + ".")


@dataclass
class AnchoredLabel:
    """A named vertebra as the naming step places it (canonical voxel position)."""

    label: int
    position: np.ndarray
    confidence: float
    basis: str


@dataclass
class AnchoredResult:
    """What the naming step decided.

    Attributes:
        labels: the anchored names and places, or None where the network's own result stands (no anchor in
            view, or every rib anchor agrees with the network's names).
        added: where the network's result stands and the count agrees with it, the bodies it left without a
            point (a gap, a partly seen vertebra at the edge), named by the count.
        orientation_problems: what the spine contradicts in the image's orientation
            (:mod:`spine_orientation`); when there is any, nothing should be labeled.
        naming: the naming of the chain (anchors, notes).
        chain: the bodies found.
        network_basis: how the network's names are to be described when they stand.
    """

    labels: Optional[list[AnchoredLabel]]
    naming: Naming
    chain: BodyChain
    network_basis: str = "network only"
    added: list[AnchoredLabel] = field(default_factory=list)
    orientation_problems: list[str] = field(default_factory=list)


def anchored_labels(hu: np.ndarray, spacing: float, candidates: Sequence, chosen: Sequence,
                    min_position_confidence: float = 0.3) -> AnchoredResult:
    """Find the bodies and the ribs, name the chain, and decide whether the names change.

    The chain is the network's own points where its result reads as one plausible spine (the rule on the
    generated CTs it was trained on), else the bodies found from the HU profile. The names change from the
    network's only where the count from a rib anchor (first or last rib pair) scores at least
    ``OVERRIDE_MARGIN`` better than the best count that keeps the network's names (the network names real
    thoracic spines a level or more off, and is sure of it); with the network's sacrum in view only the first
    rib pair does; never where the anchors contradict each other or the bodies found contradict the
    network's sure points (:func:`decide_names`). Where the names stand and the count agrees, bodies the
    network left without a point are added.

    Each named body is placed at the network's point of its name inside it (a partly seen end body: or
    within 30 % of its height beyond its guessed discs), else at the surest network point of any name
    inside it (the network places points on bodies well even where it names them wrong), else at the body's
    centre on the spine curve.
    """
    consistent = self_consistent_points(chosen, spacing)
    if consistent is not None:
        chain = chain_from_network(hu.shape, spacing, candidates, consistent)
        ribs = find_ribs(hu, spacing, chain)
        if any(r.k < chain.bodies[0].top or r.k > chain.bodies[-1].bottom for r in ribs):
            chain = chain_from_network(hu.shape, spacing, candidates, consistent, extra_k=[r.k for r in ribs])
    else:
        chain = chain_from_candidates(hu, spacing, candidates)
        ribs = find_ribs(hu, spacing, chain)
        if chain.bodies and any(r.k < chain.bodies[0].top or r.k > chain.bodies[-1].bottom for r in ribs):
            chain = chain_from_candidates(hu, spacing, candidates, extra_k=[r.k for r in ribs])
    survey = survey_ribs(hu.shape, spacing, chain, ribs)
    problems = orientation_problems(hu, spacing, chain, ribs)
    if problems:
        return AnchoredResult(None, Naming(notes=list(problems)), chain, orientation_problems=problems)
    return decide_names(chain, survey, candidates, chosen, spacing, min_position_confidence)


#: The network is at least this sure that a vertebra is C7 for a rib on one side of it to be taken for a
#: cervical rib (:func:`set_aside_cervical_rib`).
CERVICAL_RIB_CONFIDENCE: float = 0.9

CERVICAL_RIB_NOTE = ("A rib on one side of the vertebra named C7 (a cervical rib, or a long C7 transverse process) "
                     "is not counted as the first rib: the first rib pair is the one below it. Check C7-T2.")


def set_aside_cervical_rib(chain: BodyChain, survey: RibSurvey, candidates: Sequence,
                           spacing: float) -> Optional[RibSurvey]:
    """The survey without the rib on one side of the topmost rib-bearing vertebra, where it looks like a
    cervical rib; None where it does not.

    A radiologist takes the first rib *pair* for T1, and a rib on one side of C7 for a cervical rib (or a C7
    transverse process long enough to reach out like one; the first rib, which rises beside C7 as it runs
    out, can also join it). Taken for the first rib, it would put T1 a vertebra high and every name below
    with it. It is set aside only where the vertebra below carries ribs on both sides and the network, which
    names the cervicothoracic junction well, is sure the one-sided vertebra is C7. A true T1 whose other
    first rib was missed is named T1 by the network and keeps its rib. Ribs on both sides of the vertebra
    above the first pair are not set aside: where the network is sure there and a level off (it names some
    real chest CTs a level high throughout), that would move every name a level; the count from such a pair
    is weighed against the network instead (:func:`decide_names`).
    """
    n = len(chain.bodies)
    ribbed = [b for b in range(n) if survey.bearing(b)]
    if not ribbed:
        return None
    top = ribbed[0]
    if top + 1 >= n or survey.sides_with_ribs(top + 1) != 2:
        return None
    if survey.sides_with_ribs(top) != 1:
        return None
    if network_scores(chain, candidates, spacing)[top, C7] < CERVICAL_RIB_CONFIDENCE:
        return None
    state = [dict(s) for s in survey.state]
    state[top] = {side: ("none" if v == "rib" else v) for side, v in state[top].items()}
    ribs = [r if r.body != top else replace(r, body=None) for r in survey.ribs]
    return RibSurvey(ribs=ribs, state=state)


def decide_names(chain: BodyChain, survey: RibSurvey, candidates: Sequence, chosen: Sequence, spacing: float,
                 min_position_confidence: float = 0.3) -> AnchoredResult:
    """The decision of :func:`anchored_labels` once the bodies and ribs are found (no image needed)."""
    without_cervical_rib = set_aside_cervical_rib(chain, survey, candidates, spacing)
    if without_cervical_rib is not None:
        survey = without_cervical_rib
    result = _decide_names(chain, survey, candidates, chosen, spacing, min_position_confidence)
    if without_cervical_rib is not None:
        result.naming.notes.append(CERVICAL_RIB_NOTE)
    return result


def _decide_names(chain: BodyChain, survey: RibSurvey, candidates: Sequence, chosen: Sequence, spacing: float,
                  min_position_confidence: float) -> AnchoredResult:
    naming = name_chain(chain, candidates, spacing, survey, chosen)
    if naming is None:
        notes = [NO_ANCHOR_NOTE]
        if any(T1 < c.label < T12 for c in chosen):
            notes.append(UNANCHORED_THORACIC_NOTE)
        return AnchoredResult(None, Naming(notes=notes), chain)
    against = [what for what in naming.agreeing if what in RIB_PAIR_ANCHORS]
    if "the sacrum" in naming.anchor_bodies:
        # The network names the sacrum and the lumbar spine right on every real CT we have: with its S1 in
        # view, only the first rib pair (far from where it is reliable) overrules it.
        against = [what for what in against if what == "first rib pair"]
    if naming.margin < OVERRIDE_MARGIN:
        against = []
    bodies_at = naming.anchor_bodies
    ignored = [what for what in bodies_at if what not in naming.agreeing]
    span = (bodies_at["last rib pair"][0] - bodies_at["first rib pair"][0] + 1
            if "first rib pair" in bodies_at and "last rib pair" in bodies_at else 12)
    if against and (ignored or span != 12):
        # The anchors contradict each other (a rib pair not found, a bony bar taken for a rib, or transitional
        # anatomy: 11 or 13 rib pairs, a lumbosacral transitional vertebra). No count is then sure enough to
        # overrule the network; the notes say what disagrees and what to check.
        against = []
        naming.notes.append("The anatomical anchors disagree with each other, so the network's names were "
                            "kept; check the levels between them.")
    if against and _chain_contradicts_network(chain, chosen, spacing):
        against = []
        naming.notes.append("The vertebral bodies found along the spine do not match where the network places "
                            "consecutive vertebrae, so its names were kept; check the levels.")
    if not against:
        by_network = network_names_by_body(chain, chosen)
        named = {nb.body: nb.label for nb in naming.names}
        alike = bool(by_network) and all(named.get(b) in labels for b, labels in by_network.items())
        if alike:
            agreeing = list(naming.agreeing)  # the count and the network name every body alike
        else:
            agreeing = [what for what, (b, lab) in bodies_at.items() if lab in by_network.get(b, ())]
        basis = "network; agrees with " + " and ".join(_the(w) for w in agreeing) if agreeing else "network only"
        # Where the count names every body alike, it also names the bodies the network left without a point.
        taken = {c.label for c in chosen}
        added = [_place(nb, chain, candidates, spacing, min_position_confidence) for nb in naming.names
                 if alike and nb.body not in by_network and nb.label not in taken]
        kept_notes = [note for note in naming.notes if "rib-bearing" in note or "disagree with each other" in note
                      or "do not match" in note]
        # An anchor in view that the network's names do not follow, yet not overruling them: say so where the
        # network is itself unsure of a level (sure of every one, the rib finder is the likelier one wrong).
        # (The sacrum and C2 are the network's own names: a count from them that differs says its chain has a
        # gap or a duplicate, which its spacing already shows; the rib pairs are independent evidence.)
        unfollowed = [what for what in bodies_at if what not in agreeing and what in RIB_PAIR_ANCHORS]
        unsure = any(c.confidence < UNSURE_NETWORK_CONFIDENCE for c in chosen)
        if unfollowed and unsure and not kept_notes:
            kept_notes.append(f"The network's names do not follow the count from {' and '.join(_the(w) for w in unfollowed)}, "
                              "which was not sure enough to change them: check the levels.")
        return AnchoredResult(None, Naming(anchors=naming.anchors, notes=kept_notes), chain, basis, added)
    naming.notes.insert(0, f"The network's names disagree with the count from {' and '.join(_the(w) for w in against)}: "
                           "the levels are counted from the anchors instead. Check the names.")
    out = [_place(nb, chain, candidates, spacing, min_position_confidence) for nb in naming.names]
    return AnchoredResult(out, naming, chain)


def _place(nb: NamedBody, chain: BodyChain, candidates: Sequence, spacing: float,
           min_position_confidence: float) -> AnchoredLabel:
    body = chain.bodies[nb.body]
    # A partly seen end body's discs are guessed: look a little beyond them for the network's point.
    reach = 0.3 * (body.bottom - body.top) if body.partial else 0.0
    near = [c for c in candidates if body.top - reach <= c.position[0] <= body.bottom + reach
            and _off_curve_mm(chain, c.position, spacing) <= MAX_OFF_CURVE_MM]
    same = [c for c in near if c.label == nb.label]
    sure = [c for c in near if body.top <= c.position[0] <= body.bottom and c.confidence >= min_position_confidence]
    if same:
        position = max(same, key=lambda c: c.confidence).position
    elif sure:
        position = max(sure, key=lambda c: c.confidence).position
    else:
        position = body.position
    return AnchoredLabel(nb.label, np.asarray(position, dtype=float), nb.confidence, nb.basis)


#: Below this confidence a network's point makes its names "unsure": an anchor they do not follow is then noted.
UNSURE_NETWORK_CONFIDENCE: float = 0.5

#: Added where thoracic levels are named without an anchor: on the real chest CTs measured (2026-11-27) the
#: network's own T2-T11 names that no anchor confirmed were right 4 times in 26.
UNANCHORED_THORACIC_NOTE = ("The thoracic names are the network's guess: on real chest CTs they are often one or two "
                            "levels off. Count from the first rib pair (T1) and renumber.")

NO_ANCHOR_NOTE = ("No anatomical anchor in view (no first or last rib pair, sacrum or C2): the names are the "
                  "network's alone.")
