"""Does training on real CTs with centroid references help on real CTs the network has not seen?

Fine-tunes the bundled weights on the usual mix (generated CTs + ``ts_example_ct`` painted with random
intensities) with and without real CTs whose references are centroids only (TotalSegmentator's body centres,
by-eye readings), and scores the names on real CTs **left out of each run's training**: one run per left-out
patient (leave-one-patient-out), one control run without real CTs (same steps, same seeds), and one run on
all of them (the candidate model; scored on the real CTs it never saw). All runs train at the same time on one
GPU, so they get the same budget; a CPU works too, slowly.

Three steps, the second on a GPU::

    PYTHONPATH=. python -m benchmarks.real_ct_training pack --reference .cache/reference_data --out PACKED
    PYTHONPATH=. python -m benchmarks.real_ct_training train --packed PACKED --painted PAINTED --out RUNS \\
        --minutes 6 --workers 2 --device cuda
    PYTHONPATH=. python -m benchmarks.real_ct_training score --weights RUNS --reference .cache/reference_data \\
        --out RESULTS

Two folds instead of leaving one patient out (``--design folds`` on all three steps): two runs each hold out
half of the eleven real CTs with a trainable reference (:data:`FOLDS`), and a third trains on all eleven;
``--synthetic-share 2`` makes generated CTs half of the mix.

Training from the start on the real mix instead (random weights; a GPU run of about 12 minutes, all runs at
once): ``train ... --minutes 11 --from-scratch --lr 2e-3``. A run stopped early leaves ``RUNS/runs/<run>/last.pt``;
``training.train --resume`` continues it (the optimizer checkpoints stay out of the repository).

``pack`` writes each training CT at 2 mm (int16 in steps of 16 HU, its own orientation, cut to its annotated
span and what a training block around it can see) with its centroids in VerSe's subject layout: 1-3 MB per CT
instead of 10-30, so the real CTs travel with the code to a GPU machine. Training
resamples to the same 2 mm grid anyway. ``PAINTED`` is a folder holding ``ts_example_ct``'s CT and
TotalSegmentator label map (``training.reference_data`` builds it). ``train`` writes ``RUNS/<run>.pt``
(exported moving average of the weights, no optimizer state) and ``RUNS/<run>.log``. ``score`` runs each
model once per real CT and names the levels both ways (the network alone, and counted from the anatomical
anchors: ``benchmarks.naming_study``), writing ``RESULTS/cases.csv``, ``RESULTS/summary.json`` and a table.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np
import SimpleITK as sitk

#: Real CTs trained on (their references are centroids only), by the name of their reference_data folder.
TRAIN_CASES: dict[str, str] = {
    "ts_abdomen_bodies": "labelmap:{R}/ts_abdomen_bodies",  # TotalSegmentator body centres, L1-S1
    "plain_chest_ct": "verse:{R}/plain_chest_ct",  # by eye, C7-L1
    "chest_ct_lung1": "verse:{R}/chest_ct_lung1",  # by eye, T1-T9
    "chest_ct_lung2": "verse:{R}/chest_ct_lung2",  # by eye, T2-T12
}
#: Real CTs of the optional ``github`` group and Lung_Dx, with by-eye references made after the first runs:
#: trained on in the two-fold design only.
MORE_CASES: dict[str, str] = {
    "chest_ct_lung_dx_a0001": "verse:{R}/chest_ct_lung_dx_a0001",  # by eye, C7-T9
    "chest_ct_lidc_idri_0001": "verse:{R}/chest_ct_lidc_idri_0001",  # by eye, T1-L1
    "chest_ct_lidc_idri_0002": "verse:{R}/chest_ct_lidc_idri_0002",  # by eye, T1-L1
    "chest_ct_lidc_idri_0003": "verse:{R}/chest_ct_lidc_idri_0003",  # by eye, T7-T12
    "head_neck_ct_hn_chus_052": "verse:{R}/head_neck_ct_hn_chus_052",  # by eye, C1-T5
    "pelvis_ct_pelvic_ref_002": "verse:{R}/pelvis_ct_pelvic_ref_002",  # by eye, L1-S2
    "pelvis_ct_pelvic_ref_003": "verse:{R}/pelvis_ct_pelvic_ref_003",  # by eye, L3-S2
}
#: Real CTs never trained on: a reference too partial to train from (the CTA's T12) or a crop too small.
SCORE_ONLY: dict[str, str] = {
    "ts_chest_cta": "labelmap:{R}/ts_chest_cta?centre=body",
    "verse_lumbar_crop": "labelmap:{R}/verse_lumbar_crop?map=verse",
}
#: Leave-one-patient-out (the first design) scored Lung_Dx as a CT no run trained on.
LOPO_SCORE_ONLY = ("chest_ct_lung_dx_a0001",)
#: The two-fold design: every real CT but the abdomen's is held out by exactly one fold, each fold a mix of
#: collections and regions (chest CTs of three collections, a neck, a pelvis), chosen before any was scored.
#: The abdomen CT is the painted map's patient and the only one whose references are expert masks: both folds
#: train on it.
FOLDS: dict[str, tuple[str, ...]] = {
    "fold_a": ("chest_ct_lung1", "chest_ct_lidc_idri_0002", "chest_ct_lung_dx_a0001",
               "head_neck_ct_hn_chus_052", "pelvis_ct_pelvic_ref_003"),
    "fold_b": ("chest_ct_lung2", "plain_chest_ct", "chest_ct_lidc_idri_0001", "chest_ct_lidc_idri_0003",
               "pelvis_ct_pelvic_ref_002"),
}
#: The painted label map is the abdomen CT's own patient: left out with it.
PAINTED_PATIENT = "ts_abdomen_bodies"
#: Scored with the vertebrae cut by the image's edge (the CTA's T12 has a whole body, a cut spinous process).
INCLUDE_PARTIAL = {"ts_chest_cta"}
BASELINE = "bundled"
DESIGNS = ("lopo", "folds")


def all_cases() -> dict[str, str]:
    """Every real CT with a reference, by name: those trained on and those only scored."""
    return {**TRAIN_CASES, **MORE_CASES, **SCORE_ONLY}


def scored_cases(design: str = "lopo") -> list[str]:
    """The real CTs a design scores: those it trains on (some runs leave each out) and the score-only ones."""
    if design == "folds":
        return list(TRAIN_CASES) + list(MORE_CASES) + list(SCORE_ONLY)
    return list(TRAIN_CASES) + list(SCORE_ONLY) + list(LOPO_SCORE_ONLY)


def runs(design: str = "lopo") -> dict[str, dict]:
    """Run name -> {"real": CTs trained on, "painted": whether the painted map is mixed in, "held_out": ...}.

    ``lopo``: a control, all four first real CTs, and one run leaving each of them out. ``folds``: two runs,
    each holding out half of the eleven real CTs (:data:`FOLDS`), and one on all eleven (the candidate whose
    only unseen real CTs are the score-only ones).
    """
    if design == "folds":
        cases = list(TRAIN_CASES) + list(MORE_CASES)
        out = {name: {"real": [c for c in cases if c not in held], "painted": True} for name, held in FOLDS.items()}
        out["all_eleven"] = {"real": cases, "painted": True}
    else:
        cases = list(TRAIN_CASES)
        out = {"control": {"real": [], "painted": True},
               "all_real": {"real": list(cases), "painted": True}}
        for case in cases:
            out[f"without_{case}"] = {"real": [c for c in cases if c != case], "painted": case != PAINTED_PATIENT}
    for spec in out.values():
        spec["held_out"] = [c for c in scored_cases(design) if c not in spec["real"]]
    return out


def pack(reference: str, out: str, spacing_mm: float = 2.0, cases: Optional[Sequence[str]] = None,
         margin_mm: float = 100.0, plane_margin_mm: float = 130.0, hu_step: int = 16) -> list[str]:
    """Write each training CT at ``spacing_mm`` with its whole-vertebra centroids in VerSe's layout.

    The CT is cut along the body's long axis to the annotated span plus ``margin_mm`` on each side (half a
    training block: beyond it a block centred on an annotated vertebra sees nothing), so that a CT from the
    skull to the chest or from the kidneys to the thighs travels at the size of its annotated part; across it,
    to ``plane_margin_mm`` around the centroids (a training block centred within its in-plane jitter of a
    centroid reaches 120 mm from it: the table, the arms and the air beyond are never seen in training).
    """
    from training.datasets import load_dataset
    from training.datasets.verse import write_verse_centroids

    specs = all_cases()
    written = []
    for name in cases or TRAIN_CASES:
        (case,) = load_dataset(specs[name].format(R=reference))
        image = case.load_image()
        centroids = {n: np.asarray(p, float) for n, p in case.whole_centroids().items()}
        size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
        small = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                              (spacing_mm,) * 3, image.GetDirection(), -1024.0, sitk.sitkFloat32)
        if centroids:
            axis = int(np.argmax(np.abs(np.asarray(small.GetDirection()).reshape(3, 3)[2])))  # the S-I axis
            idx = np.array([small.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in centroids.values()])
            start, extent = [0, 0, 0], list(small.GetSize())
            for k in range(3):
                margin = (margin_mm if k == axis else plane_margin_mm) / spacing_mm
                lo = max(0, int(np.floor(idx[:, k].min() - margin)))
                hi = min(small.GetSize()[k], int(np.ceil(idx[:, k].max() + margin)) + 1)
                start[k], extent[k] = lo, hi - lo
            small = sitk.RegionOfInterest(small, extent, start)
        # HU in steps of 16 (a rounding noise of 4.6 HU, under a CT's own 10-30 HU): the file compresses to a third
        array = np.round(sitk.GetArrayFromImage(small) / hu_step) * hu_step
        quantized = sitk.GetImageFromArray(np.clip(array, -1024, 3071).astype(np.int16))
        quantized.CopyInformation(small)
        small = quantized
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        sitk.WriteImage(small, os.path.join(folder, f"sub-{name}_ct.nii.gz"), useCompression=True)
        write_verse_centroids(os.path.join(folder, f"sub-{name}_seg-subreg_ctd.json"),
                              {n: p.tolist() for n, p in centroids.items()}, small)
        written.append(folder)
        print(f"{name}: {len(centroids)} centroids, {small.GetSize()} voxels", flush=True)
    return written


def train(packed: str, painted: str, out: str, minutes: float, workers: int, device: str,
          only: Optional[Sequence[str]] = None, batch_size: int = 8, lr: float = 3e-4, seed: int = 0,
          extra: Sequence[str] = (), init: Optional[str] = "Resources/Models/vertebrae_net.pt",
          design: str = "lopo", synthetic_share: int = 1) -> dict[str, int]:
    """Train every run at once (one process each), then export each run's moving average to ``out/<run>.pt``.

    ``init``: the weights every run starts from (None: random initialisation, training from the start).
    ``synthetic_share``: generated CTs per painted and per real CT in the mix (the runs take one case from
    each source in turn).
    """
    todo = {k: v for k, v in runs(design).items() if not only or k in only}
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", PYTHONUNBUFFERED="1")
    procs = {}
    for name, spec in todo.items():
        data = ["synthetic"] * synthetic_share + ([f"painted:{painted}"] if spec["painted"] else [])
        if spec["real"]:
            folder = os.path.join(out, "data", name)
            for case in spec["real"]:
                shutil.copytree(os.path.join(packed, case), os.path.join(folder, case), dirs_exist_ok=True)
            data.append(f"verse:{folder}")
        cmd = [sys.executable, "-m", "training.train", "--data", *data, "--val-data", "synthetic",
               "--run-dir", os.path.join(out, "runs", name), *(["--init", init] if init else []),
               "--batch-size", str(batch_size), "--lr", str(lr), "--ema-decay", "0.995", "--workers", str(workers),
               "--pool-size", "16", "--refresh-every", "8", "--val-every", "200", "--val-cases", "4",
               "--save-every", "200", "--max-minutes", str(minutes), "--device", device, "--seed", str(seed),
               "--threads", "1", *extra]
        log = open(os.path.join(out, f"{name}.log"), "w")
        log.write(" ".join(cmd) + "\n")
        log.flush()
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    codes = {}
    for name, (proc, log) in procs.items():
        codes[name] = proc.wait()
        log.close()
    for name, code in codes.items():
        if code == 0:
            spec = todo[name]
            desc = ((f"{init} fine-tuned" if init else "trained from random initialisation")
                    + f" {minutes} min on generated CTs" + (f" (x{synthetic_share})" if synthetic_share > 1 else "")
                    + (" + painted ts_example_ct" if spec["painted"] else "")
                    + (f" + real CTs {', '.join(spec['real'])}" if spec["real"] else "")
                    + f"; never trained on: {', '.join(spec['held_out'])}")
            codes[name] = subprocess.call([sys.executable, "-m", "training.export",
                                           os.path.join(out, "runs", name, "last.pt"),
                                           "--to", os.path.join(out, f"{name}.pt"), "--description", desc], env=env)
        print(f"{name}: exit {codes[name]}", flush=True)
    return codes


def score(weights: str, reference: str, out: str, bundled: Optional[str] = None, design: str = "lopo",
          cases: Optional[Sequence[str]] = None) -> list[dict]:
    """Name every real CT with each model (both namings) and tabulate, marking which CTs a model trained on."""
    from benchmarks import naming_study

    design_runs = runs(design)
    models = {BASELINE: bundled}
    for name in design_runs:
        path = os.path.join(weights, f"{name}.pt")
        if os.path.isfile(path):
            models[name] = path
    every = all_cases()
    specs = {c: every[c] for c in scored_cases(design) if not cases or c in cases}
    rows = []
    for model, path in models.items():
        trained_on = [] if model == BASELINE else design_runs[model]["real"]
        for case, spec in specs.items():
            args = argparse.Namespace(data=[spec.format(R=reference)], synthetic=0, seed0=0, variant=None,
                                      full_spine=False, include_partial=case in INCLUDE_PARTIAL, model=path)
            by_arm = naming_study.run(args)
            for arm, arm_rows in by_arm.items():
                for r in arm_rows:
                    rows.append(dict(model=model, case=case, seen=case in trained_on, arm=arm,
                                     identified=r["identified"], total=r["total"], mean_error_mm=r["mean_error_mm"],
                                     regions=r["regions"], notes=r["notes"]))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "cases.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "case", "trained_on_it", "arm", "identified", "total", "mean_error_mm"])
        for r in rows:
            w.writerow([r["model"], r["case"], int(r["seen"]), r["arm"], r["identified"], r["total"],
                        "" if r["mean_error_mm"] is None else f"{r['mean_error_mm']:.2f}"])
    text = table(rows, design)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "table": text, "rows": rows},
                  f, indent=1, default=float)
    print(text)
    return rows


def held_out_run(case: str, design: str) -> Optional[str]:
    """The run that scores ``case`` as an unseen patient: the one leaving it out (lopo) or its fold."""
    if design == "folds":
        return next((fold for fold, held in FOLDS.items() if case in held), None)
    return f"without_{case}" if case in TRAIN_CASES else None


def table(rows: list[dict], design: str = "lopo") -> str:
    """Per case, identified / total for each model and naming (``*``: the model trained on that CT), then the
    held-out totals: each CT scored by the run that left it out (leave one patient out, or its fold)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    get = {(r["model"], r["case"], r["arm"]): r for r in rows}
    lines = [f"{'case':<24}" + "".join(f"{m[:22]:>24}" for m in models),
             f"{'':<24}" + "".join(f"{'network / anchored':>24}" for _ in models)]
    for case in cases:
        cells = []
        for m in models:
            a, b = get.get((m, case, "network")), get.get((m, case, "anchored"))
            cells.append("-" if a is None else
                         f"{a['identified']}/{a['total']} / {b['identified']}/{b['total']}{'*' if a['seen'] else ' '}")
        lines.append(f"{case[:24]:<24}" + "".join(f"{c:>24}" for c in cells))
    cells = []
    for m in models:
        tot = {}
        for arm in ("network", "anchored"):
            sel = [r for r in rows if r["model"] == m and r["arm"] == arm and not r["seen"]]
            tot[arm] = (sum(r["identified"] for r in sel), sum(r["total"] for r in sel))
        cells.append(f"{tot['network'][0]}/{tot['network'][1]} / {tot['anchored'][0]}/{tot['anchored'][1]} ")
    lines.append(f"{'unseen CTs, per run':<24}" + "".join(f"{c:>24}" for c in cells))
    # each CT named by the run that never saw it, against the bundled weights (and the control) on the same CTs
    label = "two folds" if design == "folds" else "leave-one-patient-out"
    for arm in ("network", "anchored"):
        pairs = [(c, held_out_run(c, design)) for c in cases]
        sel = [get[(run, c, arm)] for c, run in pairs if run and (run, c, arm) in get]
        held = [r["case"] for r in sel]
        base = [get[(BASELINE, c, arm)] for c in held if (BASELINE, c, arm) in get]
        ctrl = [get[("control", c, arm)] for c in held if ("control", c, arm) in get]
        lines.append(f"{label}, {arm}: {sum(r['identified'] for r in sel)}/{sum(r['total'] for r in sel)} over "
                     f"{len(sel)} CTs (bundled {sum(r['identified'] for r in base)}/{sum(r['total'] for r in base)}"
                     + (f", control {sum(r['identified'] for r in ctrl)}/{sum(r['total'] for r in ctrl)}"
                        if ctrl else "") + ")")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pack", help="the training CTs at 2 mm with their centroids")
    p.add_argument("--reference", default=".cache/reference_data")
    p.add_argument("--out", required=True)
    p.add_argument("--design", choices=DESIGNS, default="lopo",
                   help="lopo: the four first real CTs; folds: all eleven real CTs with a trainable reference")
    t = sub.add_parser("train", help="all runs at once, then export each")
    t.add_argument("--packed", required=True)
    t.add_argument("--painted", required=True, help="folder with ts_example_ct's CT and label map")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=6.0)
    t.add_argument("--workers", type=int, default=2, help="data-loading processes per run")
    t.add_argument("--device", default="cuda")
    t.add_argument("--design", choices=DESIGNS, default="lopo",
                   help="lopo: leave one of four real CTs out per run; folds: two runs holding out half of eleven each")
    t.add_argument("--only", nargs="*", help="train only these runs (lopo: control, all_real, without_<case>; "
                                              "folds: fold_a, fold_b, all_eleven)")
    t.add_argument("--synthetic-share", type=int, default=1, help="generated CTs per painted and per real CT")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--from-scratch", action="store_true",
                   help="start every run from random weights instead of the bundled ones (a GPU run of ~12 min)")
    t.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more training.train options")
    s = sub.add_parser("score", help="name the real CTs with each run's weights")
    s.add_argument("--weights", required=True)
    s.add_argument("--reference", default=".cache/reference_data")
    s.add_argument("--out", required=True)
    s.add_argument("--bundled", default=None, help="the baseline weights (default: the bundled model)")
    s.add_argument("--design", choices=DESIGNS, default="lopo")
    s.add_argument("--cases", nargs="*", help="score only these real CTs")
    args = ap.parse_args(argv)
    if args.step == "pack":
        pack(args.reference, args.out,
             cases=list(TRAIN_CASES) + (list(MORE_CASES) if args.design == "folds" else []))
        return 0
    if args.step == "train":
        codes = train(args.packed, args.painted, args.out, args.minutes, args.workers, args.device, args.only,
                      args.batch_size, args.lr, extra=args.extra,
                      init=None if args.from_scratch else "Resources/Models/vertebrae_net.pt",
                      design=args.design, synthetic_share=args.synthetic_share)
        return int(any(codes.values()))
    score(args.weights, args.reference, args.out, args.bundled, args.design, args.cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
