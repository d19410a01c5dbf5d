"""The paper's evaluation measures (Glocker et al. 2012, as used in Qin et al., Table IV).

Per case, from predicted and ground-truth centroids ({name: LPS mm}):

- **identification**: a ground-truth vertebra is identified when the predicted centroid
  closest to it (over *all* predictions) carries its name *and* lies less than 20 mm away;
- **localisation error**: for each ground-truth vertebra with a same-name prediction, the
  distance between the two (mm), whether or not it was identified.

Both are aggregated over all vertebrae and per region (cervical, thoracic, lumbar, sacral).
The classifier is scored by mAP: per vertebra class, sklearn's average precision of the
per-case probability against "the vertebra is in the field of view", averaged over the classes
that are present in at least one case.

Pure functions of numpy arrays and dictionaries; no image or model is touched here.
"""

import csv
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from VertebraeLabeling.VertebraeLabelingLib import vertebrae

IDENTIFICATION_RADIUS_MM: float = 20.0
REGION_ORDER: Tuple[str, ...] = ("cervical", "thoracic", "lumbar", "sacral")
_REGION_SHORT = {"all": "ALL", "cervical": "Cer.", "thoracic": "Tho.", "lumbar": "Lum.", "sacral": "Sac."}

Points = Mapping[str, Sequence[float]]


@dataclass
class VertebraResult:
    """The outcome for one ground-truth vertebra of one case."""

    case_id: str
    name: str
    region: str
    identified: bool
    error_mm: Optional[float]        # None when no prediction carries this name
    closest_name: Optional[str]      # name of the closest prediction (None: no predictions)
    closest_distance_mm: Optional[float]


@dataclass
class CaseResult:
    """All ground-truth vertebrae of one case, plus the predictions with no ground truth."""

    case_id: str
    vertebrae: List[VertebraResult]
    predicted: List[str]
    extra: List[str] = field(default_factory=list)  # predicted names absent from the ground truth

    @property
    def n_identified(self) -> int:
        return sum(v.identified for v in self.vertebrae)

    @property
    def errors(self) -> List[float]:
        return [v.error_mm for v in self.vertebrae if v.error_mm is not None]


@dataclass
class GroupStats:
    """Aggregate over a set of ground-truth vertebrae (all, or one region)."""

    n_truth: int
    n_identified: int
    n_localised: int                 # ground-truth vertebrae with a same-name prediction
    id_rate: Optional[float]         # percent; None when n_truth == 0
    mean_error_mm: Optional[float]
    std_error_mm: Optional[float]
    median_error_mm: Optional[float]
    max_error_mm: Optional[float]


def evaluate_case(predicted: Points, truth: Points, case_id: str = "",
                  radius_mm: float = IDENTIFICATION_RADIUS_MM) -> CaseResult:
    """Identification and localisation of each ground-truth vertebra of one case.

    Names outside C1..S2 in ``truth`` raise ``KeyError`` (loaders drop them beforehand).
    When two predictions are equally close, the one with the right name is taken.
    """
    pred_names = list(predicted)
    pred = np.asarray([predicted[n] for n in pred_names], dtype=float).reshape(-1, 3)
    results = []
    for name in _spine_order(truth):
        g = np.asarray(truth[name], dtype=float)
        region = vertebrae.region_of(name)
        error = float(np.linalg.norm(np.asarray(predicted[name], dtype=float) - g)) if name in predicted else None
        closest, closest_d = None, None
        if len(pred_names):
            d = np.linalg.norm(pred - g, axis=1)
            best = float(d.min())
            ties = [pred_names[i] for i in np.flatnonzero(d <= best)]
            closest = name if name in ties else ties[0]
            closest_d = best
        identified = closest == name and closest_d is not None and closest_d < radius_mm
        results.append(VertebraResult(case_id, name, region, bool(identified), error, closest, closest_d))
    extra = [n for n in _spine_order(predicted) if n not in truth]
    return CaseResult(case_id, results, _spine_order(predicted), extra)


def _spine_order(points: Iterable[str]) -> List[str]:
    names = list(points)
    known = [n for n in vertebrae.VERTEBRA_NAMES if n in names]
    return known + sorted(n for n in names if n not in vertebrae.NAME_TO_INDEX)


def group_stats(items: Sequence[VertebraResult]) -> GroupStats:
    """Id rate (%) and error statistics (mm; std with ddof=0) of a list of vertebra results."""
    errors = np.asarray([v.error_mm for v in items if v.error_mm is not None], dtype=float)
    n = len(items)
    n_id = sum(v.identified for v in items)
    has = errors.size > 0
    return GroupStats(
        n_truth=n, n_identified=n_id, n_localised=int(errors.size),
        id_rate=100.0 * n_id / n if n else None,
        mean_error_mm=float(errors.mean()) if has else None,
        std_error_mm=float(errors.std()) if has else None,
        median_error_mm=float(np.median(errors)) if has else None,
        max_error_mm=float(errors.max()) if has else None,
    )


def summarize(cases: Sequence[CaseResult]) -> Dict[str, GroupStats]:
    """{"all": ..., "cervical": ..., "thoracic": ..., "lumbar": ..., "sacral": ...}."""
    items = [v for c in cases for v in c.vertebrae]
    out = {"all": group_stats(items)}
    for region in REGION_ORDER:
        out[region] = group_stats([v for v in items if v.region == region])
    return out


def classification_map(probabilities: Sequence[Mapping[str, float]],
                       present: Sequence[Set[str]]) -> Tuple[Optional[float], Dict[str, float]]:
    """mAP of the per-case vertebra probabilities against presence in the field of view.

    Args:
        probabilities: per case, {name: probability}; a missing name counts as 0.
        present: per case, the names of the vertebrae in the field of view (ground truth).

    Returns:
        (mAP over the classes present in at least one case or None if none is, {name: AP}).
    """
    from sklearn.metrics import average_precision_score

    if len(probabilities) != len(present):
        raise ValueError("probabilities and present must have one entry per case")
    ap: Dict[str, float] = {}
    for name in vertebrae.VERTEBRA_NAMES:
        y_true = np.asarray([name in p for p in present], dtype=int)
        if y_true.sum() == 0:
            continue  # AP is undefined without positives; the paper's mAP skips such classes
        y_score = np.asarray([float(p.get(name, 0.0)) for p in probabilities], dtype=float)
        ap[name] = float(average_precision_score(y_true, y_score))
    return (float(np.mean(list(ap.values()))) if ap else None), ap


def _fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _mean_std(stats: GroupStats) -> str:
    if stats.mean_error_mm is None:
        return "-"
    return f"{_fmt(stats.mean_error_mm)}({_fmt(stats.std_error_mm)})"


def format_table(summary: Mapping[str, GroupStats], method: str = "Ours",
                 map_value: Optional[float] = None) -> str:
    """A text table laid out like the paper's Table IV (plus counts and the mAP)."""
    groups = ["all", *REGION_ORDER]
    head1 = f"{'':<14}{'Id. Rate (%)':^40}  {'Mean (Std) (mm)':^60}"
    head2 = f"{'Method':<14}" + "".join(f"{_REGION_SHORT[g]:>8}" for g in groups) + "  " + "".join(
        f"{_REGION_SHORT[g]:>12}" for g in groups)
    rates = "".join(f"{_fmt(summary[g].id_rate):>8}" for g in groups)
    errors = "".join(f"{_mean_std(summary[g]):>12}" for g in groups)
    counts = "".join(f"{summary[g].n_truth:>8d}" for g in groups) + "  " + "".join(
        f"{summary[g].n_localised:>12d}" for g in groups)
    lines = [head1, head2, "-" * len(head2), f"{method:<14}{rates}  {errors}", f"{'n (truth)':<14}{counts}"]
    if map_value is not None:
        lines.append(f"Classifier mAP: {100.0 * map_value:.1f} %")
    return "\n".join(lines)


CASE_COLUMNS = ["case_id", "n_truth", "n_predicted", "n_identified", "id_rate", "mean_error_mm",
                "max_error_mm", "missed", "misidentified", "extra"]
VERTEBRA_COLUMNS = ["case_id", "name", "region", "identified", "error_mm", "closest_name",
                    "closest_distance_mm"]


def case_row(case: CaseResult) -> Dict[str, object]:
    """One CSV row summarising a case (``missed``: no same-name prediction; ``misidentified``:
    a same-name prediction exists but the vertebra was not identified)."""
    errors = case.errors
    n = len(case.vertebrae)
    return {
        "case_id": case.case_id,
        "n_truth": n,
        "n_predicted": len(case.predicted),
        "n_identified": case.n_identified,
        "id_rate": round(100.0 * case.n_identified / n, 2) if n else "",
        "mean_error_mm": round(float(np.mean(errors)), 3) if errors else "",
        "max_error_mm": round(float(np.max(errors)), 3) if errors else "",
        "missed": " ".join(v.name for v in case.vertebrae if v.error_mm is None),
        "misidentified": " ".join(v.name for v in case.vertebrae if v.error_mm is not None and not v.identified),
        "extra": " ".join(case.extra),
    }


def write_case_csv(path: str, cases: Sequence[CaseResult]) -> None:
    """One row per case (columns :data:`CASE_COLUMNS`)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CASE_COLUMNS)
        writer.writeheader()
        for case in cases:
            writer.writerow(case_row(case))


def write_vertebra_csv(path: str, cases: Sequence[CaseResult]) -> None:
    """One row per ground-truth vertebra (columns :data:`VERTEBRA_COLUMNS`)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=VERTEBRA_COLUMNS)
        writer.writeheader()
        for case in cases:
            for v in case.vertebrae:
                row = asdict(v)
                for key in ("error_mm", "closest_distance_mm"):
                    row[key] = "" if row[key] is None else round(row[key], 3)
                row["closest_name"] = row["closest_name"] or ""
                writer.writerow(row)


def summary_dict(summary: Mapping[str, GroupStats], map_value: Optional[float] = None,
                 ap: Optional[Mapping[str, float]] = None) -> Dict[str, object]:
    """A JSON-ready dictionary of the aggregate numbers."""
    out: Dict[str, object] = {g: asdict(s) for g, s in summary.items()}
    out["mAP"] = map_value
    out["AP"] = dict(ap) if ap else {}
    out["identification_radius_mm"] = IDENTIFICATION_RADIUS_MM
    return out


def write_summary_json(path: str, summary: Mapping[str, GroupStats], map_value: Optional[float] = None,
                       ap: Optional[Mapping[str, float]] = None, extra: Optional[Mapping[str, object]] = None) -> None:
    """Write :func:`summary_dict` (plus any ``extra`` keys, e.g. the model and data spec)."""
    data = summary_dict(summary, map_value, ap)
    if extra:
        data.update(extra)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
