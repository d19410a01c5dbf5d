"""Evaluate the labeler on annotated CTs: the paper's Table IV, a per-case CSV and a JSON summary.

Examples::

    python -m training.evaluate --data labelmap:.cache/reference_data/ts_abdomen_bodies --whole-only --out eval/real
    python -m training.evaluate --data verse:/data/verse20 --model model.pt --out eval/verse
    python -m training.evaluate --synthetic 200 --seed0 900000 --out eval/synthetic
    python -m training.evaluate --synthetic 20 --seed0 910000 --synthetic-variant 13_ribs --out eval/13_ribs

Writes to ``--out``: ``table.txt`` (what is printed), ``cases.csv`` (one row per case),
``vertebrae.csv`` (one row per ground-truth vertebra), ``predictions.json`` (predicted LPS
centroids and probabilities per case) and ``summary.json`` (aggregate numbers, AP per class,
the data, model and options used).
"""

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import metrics
from .datasets import AnnotatedCase, load_dataset
from .datasets.common import keep_known

#: A labeler maps a SimpleITK image to ({name: LPS mm}, {name: presence probability}).
Labeler = Callable[[object], Tuple[Dict[str, np.ndarray], Dict[str, float]]]


@dataclass
class EvaluationCase:
    """What the evaluation needs of a case: an image source and the ground truth."""

    case_id: str
    load_image: Callable[[], object]
    centroids: Dict[str, np.ndarray]
    partial: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


@dataclass
class EvaluationRun:
    """Everything one evaluation produced, before it is written out."""

    cases: List[metrics.CaseResult] = field(default_factory=list)
    probabilities: List[Dict[str, float]] = field(default_factory=list)
    present: List[set] = field(default_factory=list)
    predictions: Dict[str, Dict[str, object]] = field(default_factory=dict)
    failures: Dict[str, str] = field(default_factory=dict)
    seconds: List[float] = field(default_factory=list)

    def summary(self) -> Dict[str, metrics.GroupStats]:
        return metrics.summarize(self.cases)

    def classification_map(self) -> Tuple[Optional[float], Dict[str, float]]:
        if not any(self.probabilities):
            return None, {}
        return metrics.classification_map(self.probabilities, self.present)


def from_annotated(case: AnnotatedCase) -> EvaluationCase:
    """Wrap a loader record."""
    return EvaluationCase(case.case_id, case.load_image, dict(case.centroids), list(case.partial),
                          list(case.notes))


def synthetic_cases(n: int, seed0: int, variant: Optional[str] = None) -> Iterator[EvaluationCase]:
    """``n`` generated cases with seeds ``seed0 .. seed0 + n - 1`` (generated one at a time).

    ``variant`` forces a transitional anatomy in every case (``13_ribs``, ``6_lumbar``, ... see
    :mod:`training.synthetic.variants`); the truth keeps counting from C1, and the case's notes say which
    variant it has.
    """
    from .synthetic import generate_case  # heavy and optional: import only when asked for

    for seed in range(seed0, seed0 + n):
        holder: Dict[str, object] = {}

        def make(seed: int = seed, holder: Dict[str, object] = holder) -> object:
            if "case" not in holder:
                holder["case"] = generate_case(seed) if variant is None else generate_case(seed, variant=variant)
            return holder["case"]

        case = make()
        notes: List[str] = []
        truth = keep_known({k: np.asarray(v, dtype=float) for k, v in case.centroids.items()},
                           notes, f"seed {seed}")
        partial = list(getattr(case, "partial", []) or [])
        meta = getattr(case, "meta", None) or {}
        if meta.get("variant"):
            notes.append(f"variant {meta['variant']}: rib pairs {meta.get('rib_pairs')}, "
                         f"lumbar {meta.get('lumbar_count')}, cervical rib {meta.get('cervical_rib')}")
        yield EvaluationCase(f"synthetic_{seed}", lambda make=make: make().image, truth, partial, notes)
        holder.clear()  # the volume is no longer needed once the case is evaluated


def core_labeler(model_path: Optional[str] = None, device: str = "auto",
                 anchors: bool = True) -> Tuple[Labeler, Dict[str, object]]:
    """A labeler running the core's ``label_ct`` with weights loaded once; returns (labeler, manifest).

    ``anchors=False`` names the levels by the network alone (no counting from ribs, sacrum, C2).
    """
    from VertebraeLabeling.VertebraeLabelingLib import inference, model_io

    dev = inference.resolve_device(device)
    model, manifest = model_io.load_model(model_path, device=str(dev))
    if not manifest.get("trained", True):
        print("WARNING: the model is the untrained placeholder; the numbers mean nothing.", file=sys.stderr)

    def label(image: object) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
        result = inference.label_ct(image, model=model, device=str(dev), anchors=anchors)
        return ({v.name: np.asarray(v.position_lps, dtype=float) for v in result.vertebrae},
                dict(getattr(result, "probabilities", {}) or {}))

    return label, dict(manifest)


def _progress(items: Iterable, total: Optional[int], enabled: bool) -> Iterable:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional; a plain counter does the job
        return _plain_progress(items, total)
    return tqdm(items, total=total, unit="case", file=sys.stderr)


def _plain_progress(items: Iterable, total: Optional[int]) -> Iterator:
    for n, item in enumerate(items, 1):
        print(f"\rcase {n}/{total or '?'}", end="", file=sys.stderr, flush=True)
        yield item
    print(file=sys.stderr)


def evaluate(cases: Iterable[EvaluationCase], labeler: Labeler, whole_only: bool = False,
             total: Optional[int] = None, progress: bool = True) -> EvaluationRun:
    """Label every case and score it; a case whose labeling fails counts as labeled with nothing.

    Args:
        whole_only: score only vertebrae not cut by the volume's edge (when the loader knows).
    """
    run = EvaluationRun()
    for case in _progress(cases, total, progress):
        truth = case.centroids
        if whole_only:
            truth = {n: p for n, p in truth.items() if n not in case.partial}
        t0 = time.perf_counter()
        try:
            predicted, probabilities = labeler(case.load_image())
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop a long evaluation
            run.failures[case.case_id] = f"{type(exc).__name__}: {exc}"
            predicted, probabilities = {}, {}
        run.seconds.append(time.perf_counter() - t0)
        run.cases.append(metrics.evaluate_case(predicted, truth, case.case_id))
        run.probabilities.append(dict(probabilities))
        # Presence for mAP is "in the field of view": partial vertebrae count as present.
        run.present.append(set(case.centroids))
        run.predictions[case.case_id] = {
            "predicted_lps": {k: [round(float(x), 3) for x in v] for k, v in predicted.items()},
            "probabilities": {k: round(float(v), 5) for k, v in probabilities.items()},
            "truth_lps": {k: [round(float(x), 3) for x in v] for k, v in truth.items()},
            "partial": [n for n in case.partial if n in case.centroids],
            "notes": case.notes,
        }
    return run


def write_outputs(run: EvaluationRun, out_dir: str, method: str = "Ours",
                  extra: Optional[Dict[str, object]] = None) -> str:
    """Write table.txt, cases.csv, vertebrae.csv, predictions.json, summary.json; return the table."""
    os.makedirs(out_dir, exist_ok=True)
    summary = run.summary()
    map_value, ap = run.classification_map()
    table = metrics.format_table(summary, method=method, map_value=map_value)
    with open(os.path.join(out_dir, "table.txt"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    metrics.write_case_csv(os.path.join(out_dir, "cases.csv"), run.cases)
    metrics.write_vertebra_csv(os.path.join(out_dir, "vertebrae.csv"), run.cases)
    with open(os.path.join(out_dir, "predictions.json"), "w", encoding="utf-8") as f:
        json.dump(run.predictions, f, indent=1)
    info: Dict[str, object] = {
        "n_cases": len(run.cases),
        "failures": run.failures,
        "seconds_per_case": round(float(np.mean(run.seconds)), 3) if run.seconds else None,
    }
    info.update(extra or {})
    metrics.write_summary_json(os.path.join(out_dir, "summary.json"), summary, map_value, ap, info)
    return table


def _variant_arg(text: str) -> str:
    """argparse type of ``--synthetic-variant``: a name the generator knows."""
    from .synthetic.variants import parse_variant

    try:
        parse_variant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", default=[],
                        help="data spec (verse:PATH, csi:PATH, labelmap:PATH[?options], markups:PATH); repeatable")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="also evaluate N generated cases")
    parser.add_argument("--seed0", type=int, default=1_000_000, help="first seed of the generated cases")
    parser.add_argument("--synthetic-variant", default=None, type=_variant_arg, metavar="NAME",
                        help="force a transitional anatomy in every generated case: 11_ribs, 13_ribs, "
                             "cervical_rib[_left|_right|_both], 6_lumbar, sacralised_l5[_left|_right|_both], "
                             "13_thoracic or none")
    parser.add_argument("--model", default=None, help="weights file (default: the bundled model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", default=None, help="folder for table.txt, cases.csv, summary.json, ...")
    parser.add_argument("--whole-only", action="store_true",
                        help="score only vertebrae not cut by the volume's edge (label-map data)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most this many real cases")
    parser.add_argument("--method", default="Ours", help="row name in the table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-anchors", action="store_true",
                        help="name the levels by the network alone, without counting from ribs, sacrum and C2")
    args = parser.parse_args(argv)
    if not args.data and args.synthetic <= 0:
        parser.error("give --data SPEC and/or --synthetic N")

    real: List[AnnotatedCase] = []
    for spec in args.data:
        try:
            loaded = load_dataset(spec)
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
        if not loaded:
            print(f"WARNING: {spec} holds no annotated case: is it the right kind (verse:, labelmap:, csi:)?",
                  file=sys.stderr)
        real.extend(loaded)
    if args.limit > 0:
        real = real[: args.limit]

    def all_cases() -> Iterator[EvaluationCase]:
        for case in real:
            yield from_annotated(case)
        if args.synthetic > 0:
            yield from synthetic_cases(args.synthetic, args.seed0, args.synthetic_variant)

    labeler, manifest = core_labeler(args.model, args.device, anchors=not args.no_anchors)
    run = evaluate(all_cases(), labeler, whole_only=args.whole_only,
                   total=len(real) + max(args.synthetic, 0), progress=not args.no_progress)
    extra = {"data": args.data, "synthetic": args.synthetic, "seed0": args.seed0 if args.synthetic else None,
             "synthetic_variant": args.synthetic_variant if args.synthetic else None,
             "model": args.model or "bundled", "model_manifest": manifest, "whole_only": args.whole_only}
    if args.out:
        table = write_outputs(run, args.out, method=args.method, extra=extra)
    else:
        summary = run.summary()
        map_value, _ = run.classification_map()
        table = metrics.format_table(summary, method=args.method, map_value=map_value)
    print(table)
    for case_id, error in run.failures.items():
        print(f"FAILED {case_id}: {error}", file=sys.stderr)
    return 0 if not run.failures else 1


if __name__ == "__main__":
    sys.exit(main())
