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

Training from the start on the real mix instead (random weights; a GPU run of about 12 minutes, all runs at
once): ``train ... --minutes 11 --from-scratch --lr 2e-3``. A run stopped early leaves ``RUNS/runs/<run>/last.pt``;
``training.train --resume`` continues it (the optimizer checkpoints stay out of the repository).

``pack`` writes each training CT at 2 mm (int16 in steps of 8 HU, its own orientation) with its centroids in VerSe's subject
layout: a few MB per CT instead of 10-30, so the real CTs travel with the code to a GPU machine. Training
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
#: Real CTs never trained on: a reference too partial to train from (the CTA's T12), a crop too small, or a
#: reference that came after the runs.
SCORE_ONLY: dict[str, str] = {
    "ts_chest_cta": "labelmap:{R}/ts_chest_cta?centre=body",
    "verse_lumbar_crop": "labelmap:{R}/verse_lumbar_crop?map=verse",
    "chest_ct_lung_dx_a0001": "verse:{R}/chest_ct_lung_dx_a0001",  # by eye, C7-T9; reference made after the runs
}
#: The painted label map is the abdomen CT's own patient: left out with it.
PAINTED_PATIENT = "ts_abdomen_bodies"
#: Scored with the vertebrae cut by the image's edge (the CTA's T12 has a whole body, a cut spinous process).
INCLUDE_PARTIAL = {"ts_chest_cta"}
BASELINE = "bundled"


def runs(cases: Sequence[str] = tuple(TRAIN_CASES)) -> dict[str, dict]:
    """Run name -> {"real": CTs trained on, "painted": whether the painted map is mixed in, "held_out": ...}."""
    out = {"control": {"real": [], "painted": True},
           "all_real": {"real": list(cases), "painted": True}}
    for case in cases:
        out[f"without_{case}"] = {"real": [c for c in cases if c != case], "painted": case != PAINTED_PATIENT}
    for spec in out.values():
        spec["held_out"] = [c for c in list(cases) + list(SCORE_ONLY) if c not in spec["real"]]
    return out


def pack(reference: str, out: str, spacing_mm: float = 2.0) -> list[str]:
    """Write each training CT at ``spacing_mm`` with its whole-vertebra centroids in VerSe's layout."""
    from training.datasets import load_dataset
    from training.datasets.verse import write_verse_centroids

    written = []
    for name, spec in TRAIN_CASES.items():
        (case,) = load_dataset(spec.format(R=reference))
        image = case.load_image()
        size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
        small = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                              (spacing_mm,) * 3, image.GetDirection(), -1024.0, sitk.sitkFloat32)
        # HU in steps of 8: well under a CT's noise (10-30 HU), and the file compresses to about half
        quantized = sitk.GetImageFromArray((np.round(sitk.GetArrayFromImage(small) / 8.0) * 8).astype(np.int16))
        quantized.CopyInformation(small)
        small = quantized
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        sitk.WriteImage(small, os.path.join(folder, f"sub-{name}_ct.nii.gz"), useCompression=True)
        write_verse_centroids(os.path.join(folder, f"sub-{name}_seg-subreg_ctd.json"),
                              {n: np.asarray(p, float).tolist() for n, p in case.whole_centroids().items()}, small)
        written.append(folder)
        print(f"{name}: {len(case.whole_centroids())} centroids, {small.GetSize()} voxels", flush=True)
    return written


def train(packed: str, painted: str, out: str, minutes: float, workers: int, device: str,
          only: Optional[Sequence[str]] = None, batch_size: int = 8, lr: float = 3e-4, seed: int = 0,
          extra: Sequence[str] = (), init: Optional[str] = "Resources/Models/vertebrae_net.pt") -> dict[str, int]:
    """Train every run at once (one process each), then export each run's moving average to ``out/<run>.pt``.

    ``init``: the weights every run starts from (None: random initialisation, training from the start).
    """
    todo = {k: v for k, v in runs().items() if not only or k in only}
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", PYTHONUNBUFFERED="1")
    procs = {}
    for name, spec in todo.items():
        data = ["synthetic"] + ([f"painted:{painted}"] if spec["painted"] else [])
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
                    + f" {minutes} min on generated CTs"
                    + (" + painted ts_example_ct" if spec["painted"] else "")
                    + (f" + real CTs {', '.join(spec['real'])}" if spec["real"] else "")
                    + f"; never trained on: {', '.join(spec['held_out'])}")
            codes[name] = subprocess.call([sys.executable, "-m", "training.export",
                                           os.path.join(out, "runs", name, "last.pt"),
                                           "--to", os.path.join(out, f"{name}.pt"), "--description", desc], env=env)
        print(f"{name}: exit {codes[name]}", flush=True)
    return codes


def score(weights: str, reference: str, out: str, bundled: Optional[str] = None) -> list[dict]:
    """Name every real CT with each model (both namings) and tabulate, marking which CTs a model trained on."""
    from benchmarks import naming_study

    models = {BASELINE: bundled}
    for name in runs():
        path = os.path.join(weights, f"{name}.pt")
        if os.path.isfile(path):
            models[name] = path
    specs = {**TRAIN_CASES, **SCORE_ONLY}
    rows = []
    for model, path in models.items():
        trained_on = [] if model == BASELINE else runs()[model]["real"]
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
    text = table(rows)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "table": text, "rows": rows},
                  f, indent=1, default=float)
    print(text)
    return rows


def table(rows: list[dict]) -> str:
    """Per case, identified / total for each model and naming (``*``: the model trained on that CT), then the
    leave-one-patient-out totals: each CT scored by the run that left it out."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    get = {(r["model"], r["case"], r["arm"]): r for r in rows}
    lines = [f"{'case':<20}" + "".join(f"{m[:22]:>24}" for m in models),
             f"{'':<20}" + "".join(f"{'network / anchored':>24}" for _ in models)]
    for case in cases:
        cells = []
        for m in models:
            a, b = get.get((m, case, "network")), get.get((m, case, "anchored"))
            cells.append("-" if a is None else
                         f"{a['identified']}/{a['total']} / {b['identified']}/{b['total']}{'*' if a['seen'] else ' '}")
        lines.append(f"{case:<20}" + "".join(f"{c:>24}" for c in cells))
    for label, pick in (("unseen CTs, per run", lambda r: not r["seen"]),):
        cells = []
        for m in models:
            tot = {}
            for arm in ("network", "anchored"):
                sel = [r for r in rows if r["model"] == m and r["arm"] == arm and pick(r)]
                tot[arm] = (sum(r["identified"] for r in sel), sum(r["total"] for r in sel))
            cells.append(f"{tot['network'][0]}/{tot['network'][1]} / {tot['anchored'][0]}/{tot['anchored'][1]} ")
        lines.append(f"{label:<20}" + "".join(f"{c:>24}" for c in cells))
    # leave-one-patient-out: each training CT named by the run that never saw it
    lopo = {}
    for arm in ("network", "anchored"):
        sel = [get[(f"without_{c}", c, arm)] for c in TRAIN_CASES if (f"without_{c}", c, arm) in get]
        lopo[arm] = (sum(r["identified"] for r in sel), sum(r["total"] for r in sel), len(sel))
        base = [get[(BASELINE, c, arm)] for c in TRAIN_CASES if (BASELINE, c, arm) in get]
        ctrl = [get[("control", c, arm)] for c in TRAIN_CASES if ("control", c, arm) in get]
        lines.append(f"leave-one-patient-out, {arm}: {lopo[arm][0]}/{lopo[arm][1]} over {lopo[arm][2]} CTs "
                     f"(bundled {sum(r['identified'] for r in base)}/{sum(r['total'] for r in base)}, "
                     f"control {sum(r['identified'] for r in ctrl)}/{sum(r['total'] for r in ctrl)})")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pack", help="the training CTs at 2 mm with their centroids")
    p.add_argument("--reference", default=".cache/reference_data")
    p.add_argument("--out", required=True)
    t = sub.add_parser("train", help="all runs at once, then export each")
    t.add_argument("--packed", required=True)
    t.add_argument("--painted", required=True, help="folder with ts_example_ct's CT and label map")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=6.0)
    t.add_argument("--workers", type=int, default=2, help="data-loading processes per run")
    t.add_argument("--device", default="cuda")
    t.add_argument("--only", nargs="*", help="train only these runs (names: control, all_real, without_<case>)")
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
    args = ap.parse_args(argv)
    if args.step == "pack":
        pack(args.reference, args.out)
        return 0
    if args.step == "train":
        codes = train(args.packed, args.painted, args.out, args.minutes, args.workers, args.device, args.only,
                      args.batch_size, args.lr, extra=args.extra,
                      init=None if args.from_scratch else "Resources/Models/vertebrae_net.pt")
        return int(any(codes.values()))
    score(args.weights, args.reference, args.out, args.bundled)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
