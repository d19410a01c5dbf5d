"""How well the "check these points" messages (``review.py``) single out the cases with a wrong label.

Labels generated validation CTs with the shipped settings and reports, per confidence threshold, how many
cases get a message (a level missing between labeled ones, or a point below the threshold), how many of
those have a misidentified vertebra, and how many of all misidentified vertebrae they hold::

    PYTHONPATH=. python -m benchmarks.review_study --cases 100 --seed0 800000 --image-cache DIR
"""

import argparse

import numpy as np

from training import metrics
from VertebraeLabeling.VertebraeLabelingLib import inference, review
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

from .aggregation_study import cached_synthetic_cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed0", type=int, default=800000)
    ap.add_argument("--image-cache", required=True, help="folder keeping the generated CTs between runs")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    model, _ = load_model(args.model)
    rows = []
    for case in cached_synthetic_cases(args.cases, args.seed0, args.image_cache):
        result = inference.label_ct(case.load_image(), model=model, device="cpu")
        scored = metrics.evaluate_case(result.as_dict(), case.centroids, case.case_id)
        wrong = sum(not v.identified for v in scored.vertebrae)
        rows.append((result.vertebrae, wrong))
    gaps = np.array([bool(review.missing_levels(found)) for found, _ in rows])
    wrong = np.array([w for _, w in rows])
    print(f"{len(rows)} cases, {int((wrong > 0).sum())} with a misidentified vertebra, {int(wrong.sum())} misidentified")
    print(f"levels missing between labeled ones: {int(gaps.sum())} cases, {int((wrong[gaps] > 0).sum())} of them wrong")
    for t in args.thresholds:
        flagged = np.array([bool(review.review_messages(found, t)) for found, _ in rows])  # what the user sees
        print(f"threshold {t:.2f}: {int(flagged.sum())} cases flagged, {int((wrong[flagged] > 0).sum())} of them wrong, "
              f"holding {int(wrong[flagged].sum())} of the {int(wrong.sum())} misidentified vertebrae")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
