"""Test-time choices measured offline: block stride, the mirrored second look, aggregation method.

The network runs once per distinct block of each case (stride-13 blocks include every stride-26
and stride-52 block start; each block is also run mirrored) and the raw per-block outputs are
cached in ``--cache``; every variant then re-runs only the aggregation, so comparing aggregation
methods costs seconds. Tune on validation seeds (800 000+), report on the hold-out (900 000+)::

    python -m benchmarks.aggregation_study --cases 60 --seed0 800000 --cache /tmp/aggcache_val
    # several models on the same generated CTs (generated once, into --image-cache)
    python -m benchmarks.aggregation_study --cases 40 --image-cache /tmp/val_ct --model a.pt --cache /tmp/agg_a
    python -m benchmarks.aggregation_study --real --cache /tmp/aggcache_real
"""

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np
import torch

from training import metrics
from training.evaluate import EvaluationCase, from_annotated, synthetic_cases
from VertebraeLabeling.VertebraeLabelingLib import aggregation, blocks, inference, preprocessing
from VertebraeLabeling.VertebraeLabelingLib.defaults import DEFAULT_MIN_PROBABILITY
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model
from VertebraeLabeling.VertebraeLabelingLib.vertebrae import VERTEBRA_NAMES

STRIDES = (52, 26, 13)
Aggregator = Callable[..., aggregation.AggregationResult]


def cache_case(model, case: EvaluationCase, path: str, real: bool, strides=STRIDES, flips=(False, True)) -> None:
    """Run every block of the case (plain and mirrored) and save outputs + truth in canonical voxels."""
    truth = {k: v for k, v in case.centroids.items() if k not in case.partial} if real else case.centroids
    volume = preprocessing.to_canonical(case.load_image())
    norm = preprocessing.zscore(volume.hu)
    fill = float(norm.min())
    track = blocks.find_spine_track(volume.hu, volume.spacing)
    starts = sorted({b.start for s in strides for b in blocks.plan_blocks(volume.shape, track, stride=s)})
    plans = {s: np.array([b.start for b in blocks.plan_blocks(volume.shape, track, stride=s)]).reshape(-1, 3)
             for s in strides}
    plan = [blocks.Block(start) for start in starts]
    if True in flips:  # the core's mirrored second look: plain and mirrored predictions alternate
        both = inference.predict_blocks(model, norm, plan, torch.device("cpu"), fill, mirror=True)
        plain, mirror = both[0::2], both[1::2]
    else:  # a skipped mirror repeats the plain output, so the cache keeps one layout
        plain = mirror = inference.predict_blocks(model, norm, plan, torch.device("cpu"), fill)
    probs = [[a.probabilities, b.probabilities] for a, b in zip(plain, mirror)]
    coords = [[a.positions, b.positions] for a, b in zip(plain, mirror)]
    names = sorted(truth)
    np.savez(path, starts=np.array(starts).reshape(-1, 3), probs=np.array(probs).reshape(len(starts), 2, -1),
             coords=np.array(coords).reshape(len(starts), 2, -1, 3), shape=np.array(volume.shape),
             spacing=volume.spacing, truth_names=np.array(names),
             truth_kji=np.array([volume.lps_to_index(truth[n]) for n in names]).reshape(-1, 3),
             **{f"plan{s}": v for s, v in plans.items()})


def score_cached(path: str, stride: int, flip: bool, aggregate: Aggregator) -> metrics.CaseResult:
    """Aggregate one cached case; distances in canonical voxels x spacing = mm (the grid is isotropic)."""
    z = np.load(path)
    index = {tuple(s): n for n, s in enumerate(z["starts"].tolist())}
    preds = []
    for start in z[f"plan{stride}"].tolist():
        n = index[tuple(start)]
        preds.append(aggregation.BlockPrediction(blocks.Block(tuple(start)), z["probs"][n, 0], z["coords"][n, 0]))
        if flip:  # as the core does it: the mirrored look is a vote of its own
            preds.append(aggregation.BlockPrediction(blocks.Block(tuple(start)), z["probs"][n, 1], z["coords"][n, 1]))
    spacing = float(z["spacing"])
    agg = aggregate(preds, spacing, DEFAULT_MIN_PROBABILITY, tuple(z["shape"].tolist()))
    predicted = {VERTEBRA_NAMES[c.label]: c.position * spacing for c in agg.chosen}
    truth = {str(n): k * spacing for n, k in zip(z["truth_names"], z["truth_kji"])}
    return metrics.evaluate_case(predicted, truth, os.path.basename(path))


def report(paths: list[str], variants: dict[str, tuple[int, bool, Aggregator]]) -> None:
    print("| variant | id rate % | mean (std) error mm | C | T | L | S |")
    print("|---|---|---|---|---|---|---|")
    for name, (stride, flip, agg) in variants.items():
        summ = metrics.summarize([score_cached(p, stride, flip, agg) for p in paths])
        a = summ["all"]
        regions = " | ".join(f"{summ[r].id_rate:.1f}" if summ[r].n_truth else "-"
                             for r in ("cervical", "thoracic", "lumbar", "sacral"))
        print(f"| {name} | {a.id_rate:.1f} | {a.mean_error_mm:.2f} ({a.std_error_mm:.2f}) | {regions} |")


def cached_synthetic_cases(n: int, seed0: int, folder: str):
    """Synthetic cases whose image and truth were kept by an earlier run (generated when missing)."""
    import json

    import SimpleITK as sitk

    for seed in range(seed0, seed0 + n):
        case_id = f"synthetic_{seed}"
        image_path = os.path.join(folder, f"{case_id}.nii.gz")
        truth_path = os.path.join(folder, f"{case_id}.truth.json")
        if not (os.path.exists(image_path) and os.path.exists(truth_path)):
            case = next(iter(synthetic_cases(1, seed)))
            os.makedirs(folder, exist_ok=True)
            sitk.WriteImage(case.load_image(), image_path)
            with open(truth_path, "w") as f:
                json.dump({"centroids": {k: list(map(float, v)) for k, v in case.centroids.items()},
                           "partial": list(case.partial)}, f)
        with open(truth_path) as f:
            truth = json.load(f)
        yield EvaluationCase(case_id, lambda p=image_path: sitk.ReadImage(p),
                             {k: np.asarray(v) for k, v in truth["centroids"].items()}, truth["partial"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed0", type=int, default=800000)
    ap.add_argument("--real", action="store_true", help="the sample CT (TotalSegmentator's labels, body centres; fetched by "
                    "training.reference_data into .cache/reference_data) instead of synthetic ones")
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", required=True, help="folder for the cached block outputs (reused if present)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strides", default="52,26,13", help="block strides to compare")
    ap.add_argument("--no-flip", action="store_true", help="skip the mirrored runs (half the time)")
    ap.add_argument("--image-cache", help="folder keeping the generated CTs, for comparing several models")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    strides = tuple(int(v) for v in args.strides.split(","))
    os.makedirs(args.cache, exist_ok=True)
    if args.real:
        from training.datasets import load_dataset
        from training.reference_data import CASE_TS_EXAMPLE, DEFAULT_DIR

        real = os.path.join(DEFAULT_DIR, CASE_TS_EXAMPLE)
        cases = [from_annotated(c) for c in load_dataset(f"labelmap:{real}?centre=body")]
    elif args.image_cache:
        cases = cached_synthetic_cases(args.cases, args.seed0, args.image_cache)
    else:
        cases = synthetic_cases(args.cases, args.seed0)
    model = None
    paths = []
    t0 = time.perf_counter()
    for n, case in enumerate(cases, 1):
        path = os.path.join(args.cache, f"{case.case_id}.npz")
        if not os.path.exists(path):
            if model is None:
                model, _ = load_model(args.model, device="cpu")
                model.eval()
            cache_case(model, case, path, args.real, strides, (False,) if args.no_flip else (False, True))
        paths.append(path)
        print(f"\rcase {n}  {time.perf_counter() - t0:.0f}s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    variants = {f"stride {s}{' + flip' if f else ''}": (s, f, aggregation.aggregate)
                for s in strides for f in ((False,) if args.no_flip else (False, True))}
    report(paths, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
