"""Network names vs names counted from anatomical anchors, on the same network output, per case.

Each CT goes through the network once (``inference.predict_blocks``); the two namings then run on the same
block predictions through the core's ``inference.name_vertebrae`` (``anchors=False``: the network's own
names; ``anchors=True``: counted from the ribs, the sacrum and C2). Scored with the paper's identification
criterion (``training.metrics``), per case and per region, for generated CTs (seeds, optionally a forced
transitional variant) and for real CTs with references (``--data SPEC``, as ``training.evaluate``)::

    PYTHONPATH=. python -m benchmarks.naming_study --synthetic 200 --seed0 900000 --out OUT
    PYTHONPATH=. python -m benchmarks.naming_study --synthetic 20 --seed0 910000 --variant 13_ribs --full-spine --out OUT
    PYTHONPATH=. python -m benchmarks.naming_study --data verse:.cache/reference_data/plain_chest_ct --out OUT

Writes ``OUT/cases.csv`` (case, arm, identified, total, mean error, notes) and ``OUT/summary.json`` and prints
the table. A case whose orientation check refuses it counts as nothing identified for the anchored arm.
"""

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from training import metrics
from training.datasets import load_dataset
from VertebraeLabeling.VertebraeLabelingLib import blocks, inference, preprocessing
from VertebraeLabeling.VertebraeLabelingLib.defaults import DEFAULT_MIRROR, DEFAULT_STRIDE
from VertebraeLabeling.VertebraeLabelingLib.errors import InputImageError
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model
from VertebraeLabeling.VertebraeLabelingLib.results import LabelingResult

ARMS = ("network", "anchored")


def _cases(args):
    for spec in args.data:
        cases = load_dataset(spec)
        if not cases:  # a wrong kind (verse: on a label-map folder) would otherwise score nothing, silently
            raise SystemExit(f"{spec} holds no annotated case: is it the right kind (verse:, labelmap:, csi:)?")
        for case in cases:
            truth = case.centroids if args.include_partial else case.whole_centroids()
            yield case.case_id, case.load_image, {n: np.asarray(p, float) for n, p in truth.items()}
    if args.synthetic:
        from training.synthetic import generate_case

        for seed in range(args.seed0, args.seed0 + args.synthetic):
            options = {"variant": args.variant} if args.variant else {}
            if args.full_spine:
                options["full_spine_prob"] = 1.0
            made = generate_case(seed, **options)
            yield f"synthetic_{seed}", (lambda made=made: made.image), dict(made.centroids)


def name_both_ways(model, case_id: str, image, truth: Dict[str, np.ndarray]) -> List[dict]:
    """One network pass over ``image``, named both ways (network alone, counted from the anchors), each scored
    against ``truth`` ({name: LPS mm}) with the paper's criterion: one row per arm."""
    t0 = time.perf_counter()
    volume = preprocessing.to_canonical(image)
    normalized = preprocessing.zscore(volume.hu)
    track = blocks.find_spine_track(volume.hu, volume.spacing)
    block_list = blocks.plan_blocks(volume.shape, track, stride=DEFAULT_STRIDE)
    predictions = inference.predict_blocks(model, normalized, block_list, torch.device("cpu"),
                                           float(normalized.min()), mirror=DEFAULT_MIRROR)
    network_s = time.perf_counter() - t0
    rows: List[dict] = []
    for arm in ARMS:
        result = LabelingResult()
        t1 = time.perf_counter()
        try:
            inference.name_vertebrae(result, volume, predictions, anchors=arm == "anchored")
            refused = ""
        except InputImageError as exc:
            refused = str(exc)
        naming_s = time.perf_counter() - t1
        scored = metrics.evaluate_case(result.as_dict(), truth, case_id)
        errors = [v.error_mm for v in scored.vertebrae if v.error_mm is not None]
        rows.append(dict(case=case_id, arm=arm, identified=sum(v.identified for v in scored.vertebrae),
                         total=len(scored.vertebrae), mean_error_mm=float(np.mean(errors)) if errors else None,
                         regions={r: [sum(v.identified for v in scored.vertebrae if v.region == r),
                                      sum(v.region == r for v in scored.vertebrae)]
                                  for r in ("cervical", "thoracic", "lumbar", "sacral")},
                         network_s=network_s, naming_s=naming_s, refused=refused,
                         notes=" | ".join(result.messages),
                         basis=sorted({v.basis for v in result.vertebrae})))
    return rows


def run(args) -> Dict[str, List[dict]]:
    model, _ = load_model(args.model, device="cpu")
    rows: List[dict] = []
    for case_id, load_image, truth in _cases(args):
        last = name_both_ways(model, case_id, load_image(), truth)
        rows.extend(last)
        print(f"{case_id}: network {last[0]['identified']}/{last[0]['total']}, anchored "
              f"{last[1]['identified']}/{last[1]['total']}" + (" (refused)" if last[1]["refused"] else ""),
              file=sys.stderr, flush=True)
    return {arm: [r for r in rows if r["arm"] == arm] for arm in ARMS}


def table(by_arm: Dict[str, List[dict]]) -> str:
    lines = [f"{'arm':<10}{'ALL':>18}{'Cer.':>18}{'Tho.':>18}{'Lum.':>18}{'Sac.':>18}{'cases changed':>16}"]
    for arm, rows in by_arm.items():
        cells = []
        for region in (None, "cervical", "thoracic", "lumbar", "sacral"):
            if region is None:
                ok, n = sum(r["identified"] for r in rows), sum(r["total"] for r in rows)
            else:
                ok, n = sum(r["regions"][region][0] for r in rows), sum(r["regions"][region][1] for r in rows)
            cells.append(f"{100 * ok / n:5.1f} % ({ok}/{n})" if n else "-")
        changed = sum(a["identified"] != b["identified"] for a, b in zip(by_arm["network"], rows))
        lines.append(f"{arm:<10}" + "".join(f"{c:>18}" for c in cells) + f"{changed:>16}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=[], help="real CTs with references (training.evaluate spec)")
    ap.add_argument("--synthetic", type=int, default=0)
    ap.add_argument("--seed0", type=int, default=900000)
    ap.add_argument("--variant", default=None, help="force a transitional variant in every generated case")
    ap.add_argument("--full-spine", action="store_true", help="generated cases show the whole spine (C1-S2)")
    ap.add_argument("--include-partial", action="store_true",
                    help="score real vertebrae cut by the volume's edge too (e.g. the chest CTA's T12, whose body is "
                         "whole but whose spinous process is cut)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    by_arm = run(args)
    text = table(by_arm)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "cases.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "arm", "identified", "total", "mean_error_mm", "refused", "notes"])
            for arm in ARMS:
                for r in by_arm[arm]:
                    writer.writerow([r["case"], arm, r["identified"], r["total"],
                                     "" if r["mean_error_mm"] is None else f"{r['mean_error_mm']:.2f}", r["refused"],
                                     r["notes"]])
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump({"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "date": time.strftime("%Y-%m-%d"), "table": text,
                       "cases": by_arm}, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
