"""Cohort throughput: CTs per hour for one cohort run against one process per CT, on the same generated CTs.

Generates ``--cases`` CTs of mixed sizes (the synthetic generator's random spacing and fields of view,
seeds from ``--seed0``) as NIfTI files, then times, each from a clean output folder:

- ``per-CT process``: ``vertebrae-labeling CT -o OUT -q`` once per CT, one after the other (a shell loop):
  every process imports PyTorch and loads the model again;
- ``per-CT process, J at a time``: the same, J processes at once with ``--threads cores/J`` (``xargs -P J``);
- ``cohort --jobs 1``: one ``vertebrae-labeling FOLDER --out-dir OUT`` process;
- ``cohort --jobs J``: the same with J worker processes sharing the cores (``--jobs``, default 2).

Wall-clock seconds include process start-up, reading, labeling and writing. Run on an otherwise idle machine::

    PYTHONPATH=. python -m benchmarks.cohort_throughput --cases 20 --jobs 2 --device cpu
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk

from training.synthetic.generator import generate_case


def make_cohort(folder: str, cases: int, seed0: int) -> list[dict]:
    """Write ``cases`` generated CTs into ``folder``; returns their sizes."""
    os.makedirs(folder, exist_ok=True)
    sizes = []
    for n in range(cases):
        case = generate_case(seed0 + n, with_labels=False)
        path = os.path.join(folder, f"ct{n:03d}.nii.gz")
        sitk.WriteImage(case.image, path)
        sizes.append({"case": os.path.basename(path), "size": list(case.image.GetSize()),
                      "spacing": [round(s, 2) for s in case.image.GetSpacing()]})
    return sizes


def _run_many(commands: list[list[str]], at_once: int) -> float:
    """Run ``commands`` with at most ``at_once`` processes at a time; wall-clock seconds for all."""
    t0 = time.perf_counter()
    running: list[subprocess.Popen] = []
    for command in commands:
        while len(running) >= at_once:
            time.sleep(0.05)
            running = [p for p in running if p.poll() is None]
        running.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for process in running:
        process.wait()
    return time.perf_counter() - t0


def _timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {run.returncode}: {run.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed0", type=int, default=910000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", help="folder for the CTs and results (default: a temporary folder)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    work = args.work or tempfile.mkdtemp(prefix="cohort_throughput_")
    cts = os.path.join(work, "cts")
    sizes = make_cohort(cts, args.cases, args.seed0)
    voxels = [int(np.prod(s["size"])) for s in sizes]
    print(f"{args.cases} generated CTs in {cts}: {min(voxels) / 1e6:.1f}-{max(voxels) / 1e6:.1f} M voxels "
          f"(median {np.median(voxels) / 1e6:.1f} M)")
    tool = [sys.executable, "-m", "VertebraeLabeling.VertebraeLabelingLib.cli"]
    files = sorted(os.path.join(cts, f) for f in os.listdir(cts))
    rows = []

    load_before = os.getloadavg()[0]
    for at_once in sorted({1, args.jobs}):
        out = os.path.join(work, f"per_ct_{at_once}")
        os.makedirs(out, exist_ok=True)
        threads = [] if at_once == 1 else ["--threads", str(max(1, (os.cpu_count() or 1) // at_once))]
        commands = [tool + [path, "-o", os.path.join(out, os.path.basename(path) + ".mrk.json"), "-q", "--overwrite",
                            "--device", args.device] + threads for path in files]
        name = "per-CT process, one after the other" if at_once == 1 else f"per-CT process, {at_once} at a time"
        rows.append((name, _run_many(commands, at_once)))
    for jobs in sorted({1, args.jobs}):
        seconds = _timed(tool + [cts, "--out-dir", os.path.join(work, f"cohort_jobs{jobs}"), "-q",
                                 "--jobs", str(jobs), "--device", args.device])
        rows.append((f"cohort --jobs {jobs}", seconds))

    print(f"\nload average (1 min) before {load_before:.1f}, after {os.getloadavg()[0]:.1f} "
          "(other work on the machine slows every run)")
    print(f"\n| run ({os.cpu_count()} cores, device {args.device}) | seconds | CTs per hour |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.0f} | {3600 * args.cases / seconds:.0f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"cases": sizes, "cores": os.cpu_count(), "device": args.device, "load_before": load_before,
                       "runs": [{"run": n, "seconds": round(s, 1), "cts_per_hour": round(3600 * args.cases / s)}
                                for n, s in rows]}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
