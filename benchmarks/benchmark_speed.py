"""Speed and memory of the labeling pipeline, CT sizes from 128³ to 512×512×1000.

For every case it labels the CT in a fresh Python process (so that the peak resident memory, the
kernel's high-water mark ``VmHWM``, belongs to that one run) and records the wall time of each stage:
read, preprocess (resampling to the canonical 2 mm grid + normalisation), spine search, network,
aggregate; the number of blocks; and the peak RSS. Right before, another fresh process only reads the
file (``read alone``): no labeler can be faster than that, so the report gives total / read alone. With
``--exhaustive`` every case is also run with the naive sliding window over the whole volume, side by side.

The CTs are made here, nothing is downloaded:

* ``real-sample``: the bundled real CT (TotalSegmentator example, abdomen/pelvis, 122×101×112 at 3 mm).
* ``full-spine-2mm``: a synthetic full-spine CT (C1 to below S2, ``training.synthetic.generate_case``)
  at 2 mm: about 300×190×150 voxels on the canonical grid, the "full-spine CT" of the 30 s target.
* ``128^3`` ... ``512x512x1000``: that synthetic full-spine CT resampled onto clinical grids (axial,
  LPS, int16): the field of view grows with the size up to the whole spine (600 mm), then only the
  resolution grows. ``512x512x1000`` is the "peak RAM ≤ 2 GB" case.

Usage (all in one go; takes a few minutes on 2 cores)::

    python benchmarks/benchmark_speed.py                   # prepare, run every case, write the report
    python benchmarks/benchmark_speed.py --exhaustive      # + the naive sliding window, side by side

or step by step (e.g. to run each case in a quiet window of a shared machine)::

    python benchmarks/benchmark_speed.py prepare
    python benchmarks/benchmark_speed.py run --case 256^3 [--exhaustive] [--device cpu]
    python benchmarks/benchmark_speed.py report

Run a case several times (``--repeat N``): the machine may be shared, so the report gives the median of
the runs of the latest code and settings. Before/after comparisons: ``--code DIR`` runs the labeling code
of another checkout (e.g. ``git worktree add /tmp/before <commit>``) and appends to ``baseline_runs.jsonl``;
alternate it with runs of the current code::

    python benchmarks/benchmark_speed.py run --case 512x512x1000 --repeat 5 --code /tmp/before --label <commit>

Results: ``benchmarks/results/runs.jsonl`` (one JSON line per run, appended), ``latest.md`` (table of
medians per case) and ``time_vs_size.png`` (time versus input voxels and versus blocks).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

RESULTS = os.path.join(HERE, "results")
DATA = os.path.join(HERE, "data")  # generated inputs (git-ignored, several hundred MB)
SAMPLE_CT = os.path.join(REPO, "Testing", "Data", "ts_example_ct.nii.gz")
PHANTOM_SEED = 7

#: name → (size (x, y, z), spacing (x, y, z) mm). The in-plane field of view is 400 mm for the larger
#: grids; the z extent grows up to the phantom's whole spine (~600 mm).
CASES = {
    "128^3": ((128, 128, 128), (3.0, 3.0, 3.0)),
    "256^3": ((256, 256, 256), (1.5, 1.5, 1.5)),
    "384x384x400": ((384, 384, 400), (1.0, 1.0, 1.25)),
    "512x512x300": ((512, 512, 300), (0.8, 0.8, 2.0)),
    "512x512x600": ((512, 512, 600), (0.8, 0.8, 1.0)),
    "512x512x1000": ((512, 512, 1000), (0.8, 0.8, 0.6)),
}
ORDER = ["real-sample", "128^3", "256^3", "full-spine-2mm", "384x384x400", "512x512x300", "512x512x600",
         "512x512x1000"]


def case_path(name: str) -> str:
    if name == "real-sample":
        return SAMPLE_CT
    return os.path.join(DATA, name.replace("^", "c") + ".nii")


def prepare(names=None) -> None:
    """Write the synthetic inputs (uncompressed NIfTI, so that "read" measures I/O, not gunzip)."""
    import numpy as np
    import SimpleITK as sitk

    from training.synthetic import generate_case

    os.makedirs(DATA, exist_ok=True)
    names = names or ORDER
    phantom_path = case_path("full-spine-2mm")
    if not os.path.exists(phantom_path):
        t = time.perf_counter()
        case = generate_case(PHANTOM_SEED, full_spine_prob=1.0, spacing=(2.0, 2.0, 2.0), max_voxels=3e7,
                             reorient_prob=0.0, metal_prob=0.0, random_appearance_prob=0.0, contrast_prob=0.0,
                             with_labels=False)
        sitk.WriteImage(case.image, phantom_path)
        print(f"full-spine phantom {case.image.GetSize()} in {time.perf_counter() - t:.0f} s", flush=True)
    phantom = sitk.ReadImage(phantom_path)
    centre = np.asarray(phantom.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in phantom.GetSize()]))
    z_extent = phantom.GetSize()[2] * phantom.GetSpacing()[2]
    for name in names:
        if name not in CASES or os.path.exists(case_path(name)):
            continue
        size, spacing = CASES[name]
        extent = np.asarray(size) * np.asarray(spacing)
        # Centred in-plane; along z centred on the phantom, or its upper part when the grid is shorter
        # (a thoraco-lumbar CT rather than a neck one).
        top = centre[2] + z_extent / 2 - max(0.0, (z_extent - extent[2]) * 0.6)
        origin = [centre[0] - extent[0] / 2, centre[1] - extent[1] / 2, top - extent[2]]
        t = time.perf_counter()
        image = sitk.Resample(phantom, [int(v) for v in size], sitk.Transform(), sitk.sitkLinear, origin,
                              [float(v) for v in spacing], (1, 0, 0, 0, 1, 0, 0, 0, 1), -1024.0, sitk.sitkInt16)
        sitk.WriteImage(image, case_path(name))
        print(f"{name}: {size} at {spacing} mm in {time.perf_counter() - t:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------------------------
# one run, in a child process
# ------------------------------------------------------------------------------------------------------------

_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
import torch
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
from VertebraeLabeling.VertebraeLabelingLib.inference import label_ct
from VertebraeLabeling.VertebraeLabelingLib.model_io import load_model

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0

if {threads}:
    torch.set_num_threads({threads})
model, manifest = load_model()
t_import = time.perf_counter() - t0
rss_ready = status("VmRSS:")
t1 = time.perf_counter()
image = read_image({path!r})
t_read = time.perf_counter() - t1
result = label_ct(image, model=model, device={device!r}, exhaustive={exhaustive})
from VertebraeLabeling.VertebraeLabelingLib.defaults import DEFAULT_MIRROR, DEFAULT_STRIDE
out = dict(timings=dict(read=t_read, **result.timings), blocks=result.num_blocks, labels=len(result.vertebrae),
           stride=DEFAULT_STRIDE, mirror=DEFAULT_MIRROR,
           input_size=list(image.GetSize()), input_spacing=list(image.GetSpacing()),
           input_mb=image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() / 2**20,
           rss_ready_mb=rss_ready, peak_rss_mb=status("VmHWM:"), import_s=t_import,
           threads=torch.get_num_threads(), torch=torch.__version__)
if {device!r}.startswith("cuda"):
    out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["gpu"] = torch.cuda.get_device_name()
print("RESULT " + json.dumps(out))
"""


_READ_ALONE = r"""
import sys, time
sys.path.insert(0, {repo!r})
from VertebraeLabeling.VertebraeLabelingLib.image_io import read_image
t = time.perf_counter()
image = read_image({path!r})
print("READ", time.perf_counter() - t)
"""


def _child(code: str, name: str, marker: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return [ln for ln in proc.stdout.splitlines() if ln.startswith(marker + " ")][-1][len(marker) + 1:]


def _code_version(repo: str) -> str:
    """The last commit of the checkout ``repo`` that changed the labeling code (``VertebraeLabeling/``), with
    ``+changes`` when that code has uncommitted changes: commits elsewhere do not split the medians."""
    try:
        commit = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%h", "--", "VertebraeLabeling"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "VertebraeLabeling"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.path.basename(os.path.abspath(repo))
    return commit + ("+changes" if dirty else "")


def run_case(name: str, device: str = "cpu", exhaustive: bool = False, threads: int = 0, code_dir: str = REPO,
             label: str = "", results_file: str = "runs.jsonl") -> dict:
    """Label case ``name`` once in a fresh process (after timing a read-only process), append the record."""
    path = case_path(name)
    if not os.path.exists(path):
        prepare([name])
    read_alone = float(_child(_READ_ALONE.format(repo=code_dir, path=path), name, "READ"))
    code = _CHILD.format(repo=code_dir, path=path, device=device, exhaustive=exhaustive, threads=threads)
    t = time.perf_counter()
    record = json.loads(_child(code, name, "RESULT"))
    wall = time.perf_counter() - t
    record.update(case=name, device=device, mode="exhaustive" if exhaustive else "spine", process_wall_s=wall,
                  read_alone_s=read_alone, code=label or _code_version(code_dir),
                  when=time.strftime("%Y-%m-%d %H:%M:%S"), cpu=_cpu_name(), cores=os.cpu_count(),
                  load_before=_loadavg())
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, results_file), "a") as handle:
        handle.write(json.dumps(record) + "\n")
    t = record["timings"]
    print(f"{name:<15} {device:<5} {record['mode']:<10} {record['code']:<16} blocks {record['blocks']:>3}  "
          f"read alone {read_alone:5.2f}  read {t['read']:6.2f}  preprocess {t['preprocess']:6.2f}  "
          f"spine {t['spine_search']:5.2f}  network {t.get('network', 0):7.2f}  aggregate {t.get('aggregate', 0):5.2f}  "
          f"total {t['read'] + t['total']:7.2f} s  peak RSS {record['peak_rss_mb']:6.0f} MB", flush=True)
    return record


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return float("nan")


# ------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------


def _latest_runs(filename: str = "runs.jsonl") -> dict:
    """(case, device, mode) → the medians of the runs of the latest code and settings of that case.

    Runs recorded before the code version was (no ``code`` field) count one at a time: the latest alone.
    The returned record is the latest run with its timings, read alone and peak RSS replaced by the
    medians (``total_s``: the median of read + total) and ``runs``, how many runs they are from.
    """
    by_key: dict = {}
    path = os.path.join(RESULTS, filename)
    if not os.path.exists(path):
        return {}
    for line in open(path):
        if line.strip():
            rec = json.loads(line)
            by_key.setdefault((rec["case"], rec["device"], rec["mode"]), []).append(rec)
    latest = {}
    for key, recs in by_key.items():
        last = recs[-1]
        settings = (last.get("code"), last.get("stride"), last.get("mirror"))
        same = [r for r in recs if (r.get("code"), r.get("stride"), r.get("mirror")) == settings]
        if last.get("code") is None:
            same = [last]
        med = dict(last)
        med["timings"] = {k: _median([r["timings"].get(k, 0.0) for r in same]) for k in last["timings"]}
        med["total_s"] = _median([r["timings"]["read"] + r["timings"]["total"] for r in same])
        med["peak_rss_mb"] = _median([r["peak_rss_mb"] for r in same])
        alone = [r["read_alone_s"] for r in same if "read_alone_s" in r]
        med["read_alone_s"] = _median(alone) if alone else None
        med["runs"] = len(same)
        latest[key] = med
    return latest


def _median(values: list) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def report() -> str:
    latest = _latest_runs()
    if not latest:
        raise SystemExit("no runs yet: run `benchmark_speed.py run --case NAME` first")
    any_rec = next(iter(latest.values()))
    lines = [
        "# Labeling speed and memory",
        "",
        f"Machine: {any_rec['cpu']}, {any_rec['cores']} cores, torch {any_rec['torch']} "
        f"({any_rec['threads']} threads). Written by `benchmarks/benchmark_speed.py` on "
        f"{max(r['when'] for r in latest.values())[:10]} (each row's *date*: its latest run); every run is a fresh process, and each row gives the "
        "medians of *runs* runs of the same code (*code*: its commit) and settings, since the machine is shared. "
        "Times in seconds; *total* = read + preprocess + spine search + network + aggregate (the median of the "
        "totals, so not always the sum of the medians); *read alone* is a fresh process that only reads the file, "
        "the floor of any labeler; *peak RSS* is the process's resident-memory high-water mark (imports, model "
        "and input included). "
        f"Test-time settings of these runs: block stride {any_rec.get('stride', 52)}, mirrored second look "
        f"{'on' if any_rec.get('mirror', False) else 'off'} (*blocks* counts the planned blocks; with the mirror "
        "the network runs twice per block).",
        "",
        "Targets: full-spine CT (≈200×180×180 voxels after resampling) ≤ 30 s on 2 CPU cores; a 512×512×1000 "
        "input in ≤ 6 s on 2 cores and ≤ 2 GB peak RAM.",
        "",
        "| case | input voxels (x×y×z @ mm) | device | mode | date | code | runs | blocks | read alone | read | "
        "preprocess | spine | network | aggregate | total | total / read alone | peak RSS (MB) |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ORDER:
        for key in sorted((k for k in latest if k[0] == name), key=lambda k: (k[1], k[2] != "spine")):
            rec = latest[key]
            t = rec["timings"]
            size = "×".join(str(v) for v in rec["input_size"])
            spacing = "×".join(f"{v:g}" for v in (round(s, 2) for s in rec["input_spacing"]))
            alone = rec.get("read_alone_s")
            alone_text = "" if alone is None else f"{alone:.2f}"
            ratio = f"{rec['total_s'] / alone:.1f}×" if alone else ""
            lines.append(
                f"| {name} | {size} @ {spacing} | {rec['device']} | {rec['mode']} | {rec['when'][:10]} | "
                f"{rec.get('code') or '?'} | "
                f"{rec['runs']} | {rec['blocks']} | {alone_text} | {t['read']:.2f} | "
                f"{t['preprocess']:.2f} | {t['spine_search']:.2f} | {t.get('network', 0):.2f} | "
                f"{t.get('aggregate', 0):.2f} | **{rec['total_s']:.2f}** | "
                f"{ratio} | {rec['peak_rss_mb']:.0f} |")
    pairs = [(latest[k], latest.get((k[0], k[1], "exhaustive"))) for k in latest if k[2] == "spine"]
    # Same code only: a side-by-side of runs of different code (or days) would credit the blocks with it.
    pairs = [(s, e) for s, e in pairs if e is not None and s.get("code") == e.get("code")]
    if pairs:
        lines += ["", "## Spine-following blocks vs the naive sliding window", "",
                  "| case | device | blocks (spine / naive) | network s (spine / naive) | total s (spine / naive) | "
                  "speed-up |", "|---|---|---|---|---|---:|"]
        for s, e in sorted(pairs, key=lambda p: ORDER.index(p[0]["case"])):
            ts, te = s["timings"], e["timings"]
            tot_s, tot_e = s["total_s"], e["total_s"]
            lines.append(f"| {s['case']} | {s['device']} | {s['blocks']} / {e['blocks']} | "
                         f"{ts.get('network', 0):.1f} / {te.get('network', 0):.1f} | {tot_s:.1f} / {tot_e:.1f} | "
                         f"{tot_e / max(tot_s, 1e-9):.1f}× |")
    baseline = _latest_runs("baseline_runs.jsonl")
    # Only runs with the same test-time settings compare (older baseline runs predate the settings' record).
    common = [k for k in latest if k in baseline and all(
        baseline[k].get(f) == latest[k].get(f) for f in ("stride", "mirror", "blocks"))]
    if common:
        lines += ["", "## Before / after", "",
                  "`baseline_runs.jsonl`: the same cases run with older code (*before*: its commit; "
                  "`run --code DIR --label COMMIT`) on the same machine and day as the runs above (best alternating with "
                  "them); medians of *runs* runs each. Differences under ~0.3 s are within the machine's noise.",
                  "", "| case | mode | blocks | before (runs) | after (runs) | preprocess s (before → after) | "
                  "network s (before → after) | total s (before → after) | peak RSS MB (before → after) |",
                  "|---|---|---:|---|---|---|---|---|---|"]
        for key in sorted(common, key=lambda k: (k[2] != "spine", ORDER.index(k[0]), k[1])):
            b, a = baseline[key], latest[key]
            tb, ta = b["timings"], a["timings"]
            lines.append(
                f"| {key[0]} | {key[2]} | {a['blocks']} | {b.get('code') or '?'} ({b['runs']}) | "
                f"{a.get('code') or '?'} ({a['runs']}) | {tb['preprocess']:.2f} → {ta['preprocess']:.2f} | "
                f"{tb.get('network', 0):.2f} → {ta.get('network', 0):.2f} | "
                f"{b['total_s']:.2f} → **{a['total_s']:.2f}** | {b['peak_rss_mb']:.0f} → {a['peak_rss_mb']:.0f} |")
    lines += [
        "", "## Notes", "",
        "- Reference tool: none can run here. The pip-installable vertebra labelers/segmenters (TotalSegmentator, "
        "spine-segment, torso-mapper) all download their weights on first use, so the comparison is against our "
        "own naive sliding window over the whole volume (`label_ct(..., exhaustive=True)`), same network.",
        "- GPU: the script also runs `--device cuda` when PyTorch sees a GPU; the rows above are CPU only.",
        "- The synthetic inputs are one full-spine phantom (`training.synthetic.generate_case`, seed "
        f"{PHANTOM_SEED}) resampled onto each grid; the network's cost depends on the blocks (the spine's "
        "length), the preprocessing's on the input voxels.",
        "- *read alone* is the floor: SimpleITK reading the (uncompressed) file into memory, in a process that "
        "does nothing else. Within a labeling run the read can take longer (the model is loaded first; a shared "
        "machine).",
        "", "Reproduce: `python benchmarks/benchmark_speed.py --exhaustive` (see the script's docstring); "
        "one case several times: `python benchmarks/benchmark_speed.py run --case 512x512x1000 --repeat 5`; the "
        "*before* runs: `git worktree add /tmp/before COMMIT` and `run --case NAME --code /tmp/before --label "
        "COMMIT`, alternating with the runs of the current code.", ""]
    text = "\n".join(lines)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.md"), "w") as handle:
        handle.write(text)
    _plot(latest)
    print(text)
    return text


def _plot(latest: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional: the table is the result
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for (device, mode), style in ((("cpu", "spine"), "o-"), (("cpu", "exhaustive"), "s--"),
                                  (("cuda", "spine"), "^-"), (("cuda", "exhaustive"), "v--")):
        recs = [latest[k] for k in latest if k[1] == device and k[2] == mode]
        if not recs:
            continue
        recs.sort(key=lambda r: r["input_size"][0] * r["input_size"][1] * r["input_size"][2])
        vox = [r["input_size"][0] * r["input_size"][1] * r["input_size"][2] / 1e6 for r in recs]
        total = [r["timings"]["read"] + r["timings"]["total"] for r in recs]
        label = f"{device}, {'spine-following' if mode == 'spine' else 'naive sliding window'}"
        axes[0].plot(vox, total, style, label=label)
        for r, x, y in zip(recs, vox, total):
            if mode == "spine":
                axes[0].annotate(r["case"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axes[1].plot(vox, [r["peak_rss_mb"] for r in recs], style, label=label)
    axes[0].axhline(30, color="r", lw=0.8, ls=":", label="30 s target")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("input voxels (millions)")
    axes[0].set_ylabel("wall time, read to result (s)")
    axes[0].set_title("Time versus CT size")
    axes[0].legend(fontsize=8)
    axes[1].axhline(2048, color="r", lw=0.8, ls=":", label="2 GB target")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("input voxels (millions)")
    axes[1].set_ylabel("peak RSS (MB)")
    axes[1].set_title("Peak memory versus CT size")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "time_vs_size.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="all", choices=["all", "prepare", "run", "report"])
    parser.add_argument("--case", action="append", help=f"case(s) to run (default: all): {', '.join(ORDER)}")
    parser.add_argument("--device", action="append",
                        help="cpu and/or cuda (default: cpu, plus cuda when PyTorch sees a GPU)")
    parser.add_argument("--exhaustive", action="store_true", help="also run the naive sliding window")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--results", help=f"folder for runs.jsonl, latest.md and the plot (default {RESULTS})")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case (the report gives their median)")
    parser.add_argument("--code", help="run the labeling code of this checkout instead (a before/after baseline: "
                                       "its runs go to baseline_runs.jsonl)")
    parser.add_argument("--label", default="", help="the code version to record (default: the checkout's commit)")
    args = parser.parse_args(argv)
    if args.results:
        RESULTS = os.path.abspath(args.results)
    cases = args.case or ORDER
    unknown = [c for c in cases if c not in ORDER]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {ORDER}")
    if args.device:
        devices = args.device
    else:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.command in ("all", "prepare"):
        prepare(cases)
    if args.command in ("all", "run"):
        code_dir = os.path.abspath(args.code) if args.code else REPO
        results_file = "baseline_runs.jsonl" if args.code else "runs.jsonl"
        for _ in range(max(1, args.repeat)):
            for name in cases:
                for device in devices:
                    for exhaustive in ([False, True] if args.exhaustive else [False]):
                        run_case(name, device, exhaustive=exhaustive, threads=args.threads, code_dir=code_dir,
                                 label=args.label, results_file=results_file)
    if args.command in ("all", "report"):
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
