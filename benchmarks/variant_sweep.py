"""Fine-tune the bundled weights on generator variants and score each on the real CTs: one command for a
lent GPU's few minutes.

On 2026-11-26 we found that the synthetic-only model names real thoracic vertebrae a level too high and could
not test a generator change without a GPU (a 70-90 minute CPU fine-tune moves little). This runs, for each
variant (a ``synthetic?...`` spec), ``training.train`` from the bundled weights for ``--minutes``, exports the
moving average, and evaluates it with ``training.evaluate`` on the real reference cases
(``training.reference_data``) and on ``--synthetic`` validation seeds; then prints one table::

    PYTHONPATH=. python -m benchmarks.variant_sweep --out RUNS --minutes 3 --device cuda --workers 14 \\
        --batch-size 8 --synthetic 30 \\
        --variant "synthetic" \\
        --variant "synthetic?cortical_mm=1.0-2.0&arch_dense=0&rib_dense=0.1" \\
        --variant "synthetic?cortical_mm=1.0-2.0&arch_dense=0&rib_dense=0.1&thoracic_depth=1.25"

The plain ``synthetic`` variant is the control: the same minutes on today's generator. ``--model`` adds the
starting weights as a row without training. A variant may mix sources, joined by `` + ``
(``--variant "synthetic + painted:DIR"``: one case from each in turn, ``training.train --data A B``).
"""

import argparse
import json
import os
import subprocess
import sys

#: (row label, evaluate arguments) of the real reference cases, relative to --reference
REAL_CASES = (
    ("abdomen TS bodies", ["--data", "labelmap:{ref}/ts_abdomen_bodies", "--whole-only"]),
    ("chest CTA T12", ["--data", "labelmap:{ref}/ts_chest_cta?centre=body"]),
    ("plain chest C7-L1", ["--data", "verse:{ref}/plain_chest_ct"]),
    ("lumbar crop L3", ["--data", "labelmap:{ref}/verse_lumbar_crop?map=verse", "--whole-only"]),
)


def _run(cmd: list, log: str) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def _score(folder: str) -> str:
    with open(os.path.join(folder, "summary.json")) as f:
        overall = json.load(f)["all"]
    mean = overall.get("mean_error_mm")
    return f"{overall['n_identified']}/{overall['n_truth']}" + (f" {mean:.1f}mm" if mean is not None else "")


def evaluate_model(model: str, out: str, args, log: str) -> list:
    row = []
    for name, extra in REAL_CASES:
        folder = os.path.join(out, "eval_" + name.split()[0] + "_" + name.split()[1])
        cmd = [sys.executable, "-m", "training.evaluate", "--model", model, "--device", args.device,
               "--no-progress", "--out", folder] + [e.format(ref=args.reference) for e in extra]
        _run(cmd, log)
        row.append(_score(folder))
    if args.synthetic:
        folder = os.path.join(out, "eval_synthetic")
        _run([sys.executable, "-m", "training.evaluate", "--model", model, "--device", args.device, "--no-progress",
              "--synthetic", str(args.synthetic), "--seed0", "800000", "--out", folder], log)
        row.append(_score(folder))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for one run folder per variant and the table")
    ap.add_argument("--variant", action="append", default=[],
                    help="a training spec (synthetic?..., painted:DIR), or several joined by ' + ' (a mix); repeatable")
    ap.add_argument("--model", default=None, help="also score these weights as they are (default: the bundled ones)")
    ap.add_argument("--no-start", action="store_true",
                    help="do not score the starting weights (already scored by an earlier sweep)")
    ap.add_argument("--seed", type=int, default=8, help="training seed (crops and cases); rerun with another to see the spread")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time per variant")
    ap.add_argument("--steps", type=int, default=0,
                    help="train each variant for this many steps instead (an equal budget on a busy machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--crop", default=None, help="crop shape for training (tests use a tiny one)")
    ap.add_argument("--synthetic", type=int, default=0, help="also score this many validation seeds (800000+)")
    ap.add_argument("--reference", default=".cache/reference_data")
    args = ap.parse_args(argv)

    from training.sources import split_mix_label, synthetic_options
    from VertebraeLabeling.VertebraeLabelingLib.model_io import default_model_path

    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "sweep.log")
    start = args.model or default_model_path()
    header = [name for name, _ in REAL_CASES] + (["synthetic val"] if args.synthetic else [])
    rows = [] if args.no_start else [("start weights", evaluate_model(start, os.path.join(args.out, "start"), args, log))]
    for i, spec in enumerate(args.variant):
        specs = split_mix_label(spec)
        for part in specs:
            if part.startswith("synthetic"):
                synthetic_options(part)  # an unknown option fails here, not after minutes of training
        run_dir = os.path.join(args.out, f"variant{i}")
        cmd = [sys.executable, "-m", "training.train", "--data", *specs, "--run-dir", run_dir, "--init", start,
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--ema-decay", "0.995",
               "--workers", str(args.workers), "--val-every", "100000", "--save-every", "100000",
               "--device", args.device, "--seed", str(args.seed)]
        cmd += ["--steps", str(args.steps)] if args.steps else ["--max-minutes", str(args.minutes)]
        if args.crop:
            cmd += ["--crop", args.crop]
        _run(cmd, log)
        exported = os.path.join(run_dir, "exported.pt")
        _run([sys.executable, "-m", "training.export", os.path.join(run_dir, "last.pt"), "--to", exported,
              "--description", f"variant sweep: {spec}, "
              + (f"{args.steps} steps" if args.steps else f"{args.minutes} min")], log)
        rows.append((spec, evaluate_model(exported, run_dir, args, log)))

    lines = ["| variant | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    lines += [f"| `{name}` | " + " | ".join(row) + " |" for name, row in rows]
    table = "\n".join(lines)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
